"""Parts shared by the baseline re-rankers: their inputs, their MLPs, their RNN reading order.

Every baseline reads the item features X, and with ``use_pv`` the personalized vectors PV
concatenated to them, exactly as PRM's input layer does (PV of width 0 adds nothing).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from prm.data.batch import ListInputs
from prm.models.layers import scan_steps


def input_size(d_feature: int, d_pv: int, use_pv: bool) -> int:
    """Width of :func:`item_inputs`."""
    return d_feature + (d_pv if use_pv else 0)


def item_inputs(inputs: ListInputs, use_pv: bool) -> Tensor:
    """(B, L, d_in): [X; PV] (or X alone), zero at padded slots.

    Zeroing matters: attention multiplies padded values by a weight of 0, and 0 * NaN is NaN,
    so whatever a caller left in padded slots must not reach the arithmetic at all.
    """
    x = torch.cat([inputs.features, inputs.pv], dim=-1) if use_pv else inputs.features
    return torch.where(inputs.mask[..., None], x, 0.0)  # (B, L, d_in)


def mask_padding(scores: Tensor, mask: Tensor) -> Tensor:
    """(B, L) scores with -inf at padded slots, so sorting and softmax skip them."""
    return scores.masked_fill(~mask, float("-inf"))


def slots_in_order(ranks: Tensor, mask: Tensor) -> Tensor:
    """(B, L) slot indices sorted by ``ranks`` ((B, L) int, lowest first), padded slots last;
    equal ranks keep slot order.

    The same order as :func:`prm.data.batch.slots_by_rank`, without its stable sort, which ONNX
    has no operator for: ties are broken by the slot index inside the key, so the keys are
    distinct and any sort gives this one order.
    """
    length = mask.shape[-1]
    slots = torch.arange(length, device=mask.device)  # (L,)
    lowest = ranks.amin(dim=-1, keepdim=True)  # (B, 1)
    highest = ranks.amax(dim=-1, keepdim=True)  # (B, 1)
    keys = torch.where(mask, ranks - lowest, highest - lowest + 1)  # (B, L), >= 0, padding last
    return (keys * length + slots).argsort(dim=-1)  # (B, L)


def run_in_initial_order(
    rnn: nn.GRU | nn.LSTM, x: Tensor, inputs: ListInputs, *, bottom_up: bool = False
) -> tuple[Tensor, Any]:
    """Run a one-layer, batch-first GRU or LSTM over each list's real items in initial-rank
    order.

    ``bottom_up`` reads each list from its last item to its first. Real items are gathered to
    the front in reading order and the cell runs one step per slot; after a list's last real
    item its state is held (``h = where(real, h_new, h)``), so padded slots (wherever they
    were) never change it. Returns the (B, L, h) outputs back at their slots (0 at padding)
    and the final state (``h_n``, or ``(h_n, c_n)`` for an LSTM, each (1, B, h)) after each
    list's last real item. A list with no real item reads its first slot's input once, which
    keeps every shape and gradient finite.

    This is what ``pack_padded_sequence`` computes, step for step, without its data-dependent
    shapes, so the recurrence exports (see :func:`scan_steps`).
    """
    if rnn.num_layers != 1 or rnn.bidirectional or not rnn.batch_first:
        raise ValueError(f"run_in_initial_order needs a one-layer batch-first RNN, got {rnn}")
    batch_size, length, _ = x.shape
    mask = inputs.mask
    reading_rank = -inputs.positions if bottom_up else inputs.positions  # (B, L)
    order = slots_in_order(reading_rank, mask)  # (B, L): slots in reading order, padding last
    ordered = x.gather(1, order[..., None].expand_as(x))  # (B, L, d_in)
    n_read = mask.sum(dim=-1).clamp(min=1)  # (B,): an empty list reads one input
    reads = torch.arange(length, device=x.device) < n_read[:, None]  # (B, L): front-aligned
    weights = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
    h0 = x.new_zeros(batch_size, rnn.hidden_size)  # (B, h)
    steps = (ordered.transpose(0, 1), reads.transpose(0, 1)[..., None])  # (L, B, d_in), (L, B, 1)
    if isinstance(rnn, nn.LSTM):

        def lstm_step(state: tuple[Tensor, Tensor], step: tuple[Tensor, Tensor]) -> Any:
            x_t, read = step
            h_new, c_new = torch.lstm_cell(x_t, state, *weights)
            h, c = torch.where(read, h_new, state[0]), torch.where(read, c_new, state[1])
            return (h, c), torch.where(read, h_new, 0.0)

        (h, c), outputs = scan_steps(lstm_step, (h0, h0.clone()), steps)
        state: Any = (h[None], c[None])
    else:

        def gru_step(h: Tensor, step: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            x_t, read = step
            h_new = torch.gru_cell(x_t, h, *weights)
            return torch.where(read, h_new, h), torch.where(read, h_new, 0.0)

        h, outputs = scan_steps(gru_step, h0, steps)
        state = h[None]
    outputs = outputs.transpose(0, 1)  # (B, L, h), in reading order
    slots = order[..., None].expand_as(outputs)  # (B, L, h)
    return torch.zeros_like(outputs).scatter(1, slots, outputs), state  # (B, L, h)
