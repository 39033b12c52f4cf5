"""Seq2Slate of Bello et al., "Seq2Slate: Re-ranking and Slate Optimization with RNNs"
(arXiv:1810.02019, 2018): a pointer network that builds the re-ranked list one item at a time.

    Encoder   e_1..e_n, (h, c) = LSTM(x_1, ..., x_n): the list in its initial order
    Decoder   d_j = LSTMCell(x_pi(j-1), d_(j-1)), d_0 = (h, c), x_pi(0) = a learned "go" vector
    Pointer   u_j(i) = v^T tanh(W_e e_i + W_d d_j),   p_j = softmax of u_j over the items
              not yet placed (never a padded slot, never an item twice)
    Ranking   pi(j) = argmax_i p_j(i): greedy decoding

Training objective, ``Seq2Slate.loss``: the paper's supervised per-step cross-entropy, with
these choices. The decoder is fed its own greedy picks, as at inference (no teacher order is
needed, and clicks rarely define one). At every step j the pointer distribution is pulled
towards the clicked items not yet placed, their labels normalised to sum to 1 as in PRM's loss,
and all steps weigh the same:

    L = sum_j -sum_{i not yet placed} y^(j)_i log p_j(i),   y^(j) = y over the remaining items,
                                                             normalised; steps without a
                                                             remaining click add nothing

averaged over the lists with at least one click. ``click_logits`` are the first step's pointer
logits u_1: the shared softmax cross-entropy of them is this sum's first term, the model's
click likelihood for the top slot, comparable with every other re-ranker's validation loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prm.data.batch import ListBatch, ListInputs
from prm.models.base import Loss, Reranker
from prm.models.layers import masked_log_softmax, masked_mean
from prm.rankers.common import (
    input_size,
    item_inputs,
    mask_padding,
    run_in_initial_order,
    scan_steps,
)

# The decoder's state between steps: LSTM (h, c), the (B, L) items not yet placed, next input.
DecoderCarry = tuple[Tensor, Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class Seq2SlateConfig:
    d_hidden: int = 64  # item embedding, LSTM states and pointer attention
    use_pv: bool = True


class Pointer(nn.Module):
    """u_j(i) = v^T tanh(W_e e_i + W_d d_j): how strongly decoder state d_j points at item i."""

    def __init__(self, d_hidden: int) -> None:
        super().__init__()
        self.keys = nn.Linear(d_hidden, d_hidden, bias=False)  # W_e
        self.query = nn.Linear(d_hidden, d_hidden)  # W_d
        self.v = nn.Linear(d_hidden, 1, bias=False)

    def forward(self, keys: Tensor, decoder_state: Tensor) -> Tensor:
        """(B, L, d) keys W_e e_i, (B, d) decoder state d_j -> (B, L) logits u_j."""
        hidden = torch.tanh(keys + self.query(decoder_state)[:, None, :])  # (B, L, d)
        return self.v(hidden).squeeze(-1)  # (B, L)


class Seq2Slate(Reranker):
    """Pointer network over the items of each list; scores are minus the greedy decoding step."""

    def __init__(self, config: Seq2SlateConfig, d_feature: int, d_pv: int) -> None:
        super().__init__()
        self.config = config
        d = config.d_hidden
        self.embed = nn.Linear(input_size(d_feature, d_pv, config.use_pv), d)
        self.encoder = nn.LSTM(d, d, batch_first=True)
        self.decoder = nn.LSTMCell(d, d)
        self.go = nn.Parameter(torch.randn(d) * 0.1)  # decoder input before any item is placed
        self.pointer = Pointer(d)

    def forward(self, inputs: ListInputs) -> Tensor:
        """(B, L) scores -j for the item placed at step j (0 first), -inf at padded slots.

        The decoding runs through :func:`~prm.rankers.common.scan_steps`, so it exports as one
        loop over the list, whatever its length.
        """
        x, keys, start = self._start(inputs)

        def step(carry: DecoderCarry, _: Tensor) -> tuple[DecoderCarry, Tensor]:
            carry, _, available, pick = self._decode(x, keys, carry)
            return carry, available & (slots == pick[:, None])  # (B, L): the item placed

        slots = torch.arange(x.shape[1], device=x.device)  # (L,)
        _, placed = scan_steps(step, start, slots)  # (L, B, L): step, list, slot
        steps = slots.to(x.dtype)[:, None, None]  # (L, 1, 1)
        scores = -(placed.to(x.dtype) * steps).sum(dim=0)  # (B, L)
        return mask_padding(scores, inputs.mask)

    def click_logits(self, inputs: ListInputs) -> Tensor:
        """(B, L) pointer logits u_1 of the first step, -inf at padded slots."""
        logits, _, _ = next(self._greedy_steps(inputs))
        return mask_padding(logits, inputs.mask)

    def loss(self, batch: ListBatch, loss_fn: Loss | None = None) -> Tensor:
        """The per-step cross-entropy of the module docstring, a scalar (0 if nothing clicked).

        Seq2Slate's objective is its own at every decoding step, so ``loss_fn`` (the list loss
        of the other re-rankers) is not used.
        """
        labels = torch.where(batch.mask, batch.labels, 0.0)  # (B, L)
        per_list = torch.zeros(labels.shape[0], device=labels.device)  # (B,)
        for logits, available, _ in self._greedy_steps(batch):
            remaining = torch.where(available, labels, 0.0)  # (B, L)
            if not (remaining > 0).any():
                break
            targets = remaining / remaining.sum(dim=-1, keepdim=True).clamp(min=1e-12)  # (B, L)
            log_p = masked_log_softmax(logits.float(), available)  # fp32 for bf16 models
            per_list = per_list - (targets * log_p).sum(dim=-1)
        return masked_mean(per_list, (labels > 0).any(dim=-1))

    def _greedy_steps(self, inputs: ListInputs) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Greedy decoding, one step per slot: yields the (B, L) pointer logits, the (B, L) mask of
        items still available to point at, and the (B,) slot picked (meaningless once a list has
        no item left)."""
        x, keys, carry = self._start(inputs)
        for _ in range(x.shape[1]):
            carry, logits, available, pick = self._decode(x, keys, carry)
            yield logits, available, pick

    def _start(self, inputs: ListInputs) -> tuple[Tensor, Tensor, DecoderCarry]:
        """The (B, L, d) embedded items, their (B, L, d) pointer keys W_e e_i, and the decoder's
        first carry: the encoder's final state, every real item available, the "go" input."""
        x = self.embed(item_inputs(inputs, self.config.use_pv))  # (B, L, d)
        encoded, (h, c) = run_in_initial_order(self.encoder, x, inputs)  # (B, L, d)
        keys = self.pointer.keys(encoded)  # (B, L, d)
        step_input = self.go.expand(x.shape[0], -1).contiguous()  # (B, d)
        return x, keys, (h[-1], c[-1], inputs.mask, step_input)

    def _decode(
        self, x: Tensor, keys: Tensor, carry: DecoderCarry
    ) -> tuple[DecoderCarry, Tensor, Tensor, Tensor]:
        """One greedy step: the next carry, the (B, L) pointer logits, the (B, L) items that were
        available to them and the (B,) slot picked."""
        h, c, available, step_input = carry
        h, c = self.decoder(step_input, (h, c))  # 2 x (B, d)
        logits = self.pointer(keys, h)  # (B, L)
        pick = logits.detach().masked_fill(~available, float("-inf")).argmax(dim=-1)  # (B,)
        slots = torch.arange(x.shape[1], device=x.device)  # (L,)
        index = pick[:, None, None].expand(-1, 1, x.shape[-1])  # (B, 1, d)
        next_input = x.gather(1, index).squeeze(1)  # (B, d): the item just placed
        return (h, c, available & (slots != pick[:, None]), next_input), logits, available, pick
