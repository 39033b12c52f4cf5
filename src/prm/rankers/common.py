"""Parts shared by the baseline re-rankers: their inputs, their MLPs, their RNN reading order.

Every baseline reads the item features X, and with ``use_pv`` the personalized vectors PV
concatenated to them, exactly as PRM's input layer does (PV of width 0 adds nothing).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from prm.data.batch import ListInputs, slots_by_rank


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


def mlp(d_in: int, hidden: tuple[int, ...], d_out: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear -> ReLU -> Dropout for each hidden width, then a linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(d_in, width), nn.ReLU(), nn.Dropout(dropout)]
        d_in = width
    layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


def run_in_initial_order(
    rnn: nn.RNNBase, x: Tensor, inputs: ListInputs, *, bottom_up: bool = False
) -> tuple[Tensor, Any]:
    """Run a batch-first ``rnn`` over each list's real items in initial-rank order.

    ``bottom_up`` reads each list from its last item to its first. Real items are gathered to
    the front in reading order and packed, so padded slots (wherever they are) never enter the
    recurrence. Returns the (B, L, h) outputs back at their slots (0 at padding) and the final
    state (``h_n``, or ``(h_n, c_n)`` for an LSTM) after each list's last real item. A list
    with no real item reads one zero input instead, which keeps every shape and gradient finite.
    """
    length = x.shape[1]
    mask = inputs.mask
    reading_rank = -inputs.positions if bottom_up else inputs.positions  # (B, L)
    order = slots_by_rank(reading_rank, mask)  # (B, L): slots in reading order, padding last
    ordered = x.gather(1, order[..., None].expand_as(x))  # (B, L, d_in)
    lengths = mask.sum(dim=-1).clamp(min=1).cpu()  # (B,)
    packed = pack_padded_sequence(ordered, lengths, batch_first=True, enforce_sorted=False)
    packed_outputs, state = rnn(packed)
    outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=length)
    slots = order[..., None].expand_as(outputs)  # (B, L, h)
    return torch.zeros_like(outputs).scatter(1, slots, outputs), state  # (B, L, h)
