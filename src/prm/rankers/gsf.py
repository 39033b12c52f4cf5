"""GSF, the Groupwise Scoring Functions of Ai, Wang, Bruch, Golbandi, Bendersky and Najork,
"Learning Groupwise Multivariate Scoring Functions Using Deep Neural Networks" (ICTIR 2019).

    Group scores   h(x_g1, ..., x_gm) in R^m: one MLP on the concatenated features of an
                   ordered group of m items, scoring each member in the light of the others
    Item score     s_i = mean of h(g)_k over the groups g with g_k = i

Scoring all n!/(n-m)! ordered groups is too costly, so, as in TF-Ranking's GSF (by the same
authors), the groups are cyclic windows of m consecutive items over an ordering of each list's
real items: every item then sits once at each of the m places of a group. Training draws
``n_shuffles`` random orderings per list at every step (from torch's global RNG, which the
trainer seeds); evaluation uses the initial ranking alone, so its scores are deterministic
and do not depend on padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prm.data.batch import ListInputs
from prm.models.base import Reranker
from prm.models.layers import mlp
from prm.rankers.common import input_size, item_inputs, mask_padding, slots_in_order


@dataclass(frozen=True)
class GSFConfig:
    group_size: int = 2  # m
    hidden: tuple[int, ...] = (64, 32)  # widths of the group MLP h
    dropout: float = 0.0
    n_shuffles: int = 4  # random orderings per list and training step
    use_pv: bool = True


class GSF(Reranker):
    """One MLP scores every ordered group of ``group_size`` items; each item averages its scores."""

    def __init__(self, config: GSFConfig, d_feature: int, d_pv: int) -> None:
        super().__init__()
        if config.group_size < 1 or config.n_shuffles < 1:
            raise ValueError(f"GSF needs group_size >= 1 and n_shuffles >= 1, got {config}")
        self.config = config
        d_in = input_size(d_feature, d_pv, config.use_pv)
        m = config.group_size
        self.group_scorer = mlp(m * d_in, config.hidden, m, config.dropout)  # h

    def forward(self, inputs: ListInputs) -> Tensor:
        """(B, L) scores, -inf at padded slots."""
        x = item_inputs(inputs, self.config.use_pv)  # (B, L, d_in)
        batch_size, length, d_in = x.shape
        groups, valid = self._groups(inputs)  # (B, G, m) slots, (B, G) bool
        member_slots = groups.flatten(1)  # (B, G*m)
        members = x.gather(1, member_slots[..., None].expand(-1, -1, d_in))  # (B, G*m, d_in)
        members = members.view(batch_size, groups.shape[1], -1)  # (B, G, m * d_in)
        group_scores = self.group_scorer(members).flatten(1)  # (B, G*m)
        weight = valid[..., None].expand_as(groups).flatten(1).to(x.dtype)  # (B, G*m)
        totals = x.new_zeros(batch_size, length).scatter_add(1, member_slots, group_scores * weight)
        counts = x.new_zeros(batch_size, length).scatter_add(1, member_slots, weight)  # (B, L)
        return mask_padding(totals / counts.clamp(min=1), inputs.mask)  # (B, L)

    def _groups(self, inputs: ListInputs) -> tuple[Tensor, Tensor]:
        """(B, G, m) slots of each group's members and (B, G) True at groups of real items,
        G = L windows for each of the P orderings.

        For each ordering, window k holds the items at ranks k, k+1, ..., k+m-1 (mod n) of
        the ordering; only windows starting at a real rank k < n are valid.
        """
        mask = inputs.mask
        batch_size, length = mask.shape
        m = self.config.group_size
        if self.training:
            keys = torch.rand(batch_size, self.config.n_shuffles, length, device=mask.device)
            keys = keys.masked_fill(~mask[:, None, :], float("inf"))  # (B, P, L)
            order = keys.argsort(dim=-1)  # (B, P, L): real items first, in random order
        else:  # the initial ranking, ties to the first slot (no stable sort: ONNX has none)
            order = slots_in_order(inputs.positions, mask)[:, None, :]  # (B, 1, L)
        n_orderings = order.shape[1]
        n_real = mask.sum(dim=-1)  # (B,)
        ranks = torch.arange(length, device=mask.device)  # (L,)
        period = n_real.clamp(min=1)[:, None, None]  # (B, 1, 1); 1 for a list with no real item
        windows = (ranks[:, None] + torch.arange(m, device=mask.device)) % period  # (B, L, m)
        windows = windows[:, None].expand(-1, n_orderings, -1, -1)  # (B, P, L, m)
        groups = order.gather(2, windows.flatten(2)).view(batch_size, -1, m)  # (B, P*L, m)
        valid = (ranks < n_real[:, None])[:, None, :].expand(-1, n_orderings, -1)  # (B, P, L)
        return groups, valid.reshape(batch_size, -1)  # (B, P*L, m), (B, P*L)
