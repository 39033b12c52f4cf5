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
from prm.rankers.common import input_size, item_inputs, mask_padding, run_in_initial_order
from prm.training.losses import masked_log_softmax, masked_mean


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
        """(B, L) scores -j for the item placed at step j (0 first), -inf at padded slots."""
        slots = torch.arange(inputs.mask.shape[-1], device=inputs.mask.device)  # (L,)
        scores = torch.zeros(inputs.mask.shape, device=inputs.mask.device)  # (B, L)
        for step, (_, available, pick) in enumerate(self._greedy_steps(inputs)):
            placed = available & (slots == pick[:, None])  # (B, L)
            scores = scores.masked_fill(placed, -float(step))
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
            per_list = per_list - (targets * masked_log_softmax(logits, available)).sum(dim=-1)
        return masked_mean(per_list, (labels > 0).any(dim=-1))

    def _greedy_steps(self, inputs: ListInputs) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Greedy decoding, one step per slot: yields the (B, L) pointer logits, the (B, L) mask of
        items still available to point at, and the (B,) slot picked (meaningless once a list has
        no item left)."""
        x = self.embed(item_inputs(inputs, self.config.use_pv))  # (B, L, d)
        encoded, (h, c) = run_in_initial_order(self.encoder, x, inputs)  # (B, L, d)
        keys = self.pointer.keys(encoded)  # (B, L, d)
        rows = torch.arange(x.shape[0], device=x.device)  # (B,)
        slots = torch.arange(x.shape[1], device=x.device)  # (L,)
        state = (h[-1], c[-1])  # 2 x (B, d)
        available = inputs.mask
        step_input = self.go.expand(x.shape[0], -1)  # (B, d)
        for _ in range(x.shape[1]):
            state = self.decoder(step_input, state)
            logits = self.pointer(keys, state[0])  # (B, L)
            pick = logits.detach().masked_fill(~available, float("-inf")).argmax(dim=-1)  # (B,)
            yield logits, available, pick
            available = available & (slots != pick[:, None])  # (B, L)
            step_input = x[rows, pick]  # (B, d)
