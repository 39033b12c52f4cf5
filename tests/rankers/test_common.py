"""The masked recurrence of the RNN re-rankers against ``pack_padded_sequence``, and the sort
that replaces the stable one."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from prm.data.batch import ListInputs, slots_by_rank
from prm.rankers.common import run_in_initial_order, slots_in_order


def packed_reference(
    rnn: nn.RNNBase, x: Tensor, inputs: ListInputs, *, bottom_up: bool
) -> tuple[Tensor, Any]:
    """The former ``run_in_initial_order``: real items packed in reading order."""
    length = x.shape[1]
    reading_rank = -inputs.positions if bottom_up else inputs.positions
    order = slots_by_rank(reading_rank, inputs.mask)  # (B, L)
    ordered = x.gather(1, order[..., None].expand_as(x))  # (B, L, d_in)
    lengths = inputs.mask.sum(dim=-1).clamp(min=1).cpu()
    packed = pack_padded_sequence(ordered, lengths, batch_first=True, enforce_sorted=False)
    packed_outputs, state = rnn(packed)
    outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=length)
    slots = order[..., None].expand_as(outputs)
    return torch.zeros_like(outputs).scatter(1, slots, outputs), state


def ragged_inputs(seed: int, batch_size: int, length: int, d_in: int) -> tuple[Tensor, ListInputs]:
    """Lists of random lengths (0 included), real items at random slots, shuffled positions
    with some ties, garbage at padded slots."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, length + 1, (batch_size,), generator=g)
    mask = torch.stack([torch.randperm(length, generator=g) < n for n in lengths])  # (B, L)
    positions = torch.randint(0, length, (batch_size, length), generator=g)  # ties happen
    x = torch.randn(batch_size, length, d_in, generator=g)
    features = torch.zeros(batch_size, length, 1)
    return x, ListInputs(features, features[..., :0], positions, mask)


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
@pytest.mark.parametrize("bottom_up", [False, True])
def test_masked_recurrence_equals_pack_padded_sequence(cell: type, bottom_up: bool) -> None:
    torch.manual_seed(0)
    rnn = cell(5, 7, batch_first=True)
    for seed in range(8):
        x, inputs = ragged_inputs(seed, batch_size=1 + seed, length=1 + 2 * seed, d_in=5)
        x.requires_grad_(True)
        got, got_state = run_in_initial_order(rnn, x, inputs, bottom_up=bottom_up)
        want, want_state = packed_reference(rnn, x, inputs, bottom_up=bottom_up)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        for g, w in zip(
            got_state if cell is nn.LSTM else (got_state,),
            want_state if cell is nn.LSTM else (want_state,),
            strict=True,
        ):
            assert g.shape == w.shape
            torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
        # Same gradients too, so training is unchanged.
        grad_got = torch.autograd.grad(got.sum() + got_state[0].sum(), x)[0]
        grad_want = torch.autograd.grad(want.sum() + want_state[0].sum(), x)[0]
        torch.testing.assert_close(grad_got, grad_want, atol=1e-5, rtol=0)


def test_slots_in_order_equals_the_stable_sort() -> None:
    for seed in range(10):
        _, inputs = ragged_inputs(seed, batch_size=4, length=1 + 3 * seed, d_in=1)
        for ranks in (inputs.positions, -inputs.positions):
            assert torch.equal(
                slots_in_order(ranks, inputs.mask), slots_by_rank(ranks, inputs.mask)
            )
