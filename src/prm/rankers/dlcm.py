"""DLCM, the Deep Listwise Context Model of Ai, Bi, Guo and Croft, "Learning a Deep Listwise
Context Model for Ranking Refinement" (SIGIR 2018), Section 3.

    Input abstraction   x'_i = elu(W^(0) elu(W^(1) x_i + b^(1)) + b^(0))
    Encoding            o_i, s_n = GRU(x'_n, ..., x'_1): the list read from its bottom to its
                        top, so the final state s_n is shaped most by the top-ranked items
    Re-ranking          phi(o_i, s_n) = V_phi . (o_i . tanh(W_phi . s_n + b_phi))

with W_phi in R^(alpha x k x alpha), b_phi in R^(alpha x k), V_phi in R^k, alpha the GRU width.
The paper's attention-based list loss is replaced by the shared training loss, as for every
baseline here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prm.data.batch import ListInputs
from prm.models.base import Reranker
from prm.rankers.common import input_size, item_inputs, mask_padding, run_in_initial_order


@dataclass(frozen=True)
class DLCMConfig:
    d_hidden: int = 64  # alpha: width of the input abstraction and of the GRU state
    d_local: int = 16  # k: number of context-weighted views of o_i in phi
    use_pv: bool = True


class LocalRankingFunction(nn.Module):
    """phi(o_i, s_n) = V_phi . (o_i . tanh(W_phi . s_n + b_phi)): each item's GRU output read
    through k directions chosen by the list's final state."""

    def __init__(self, d_hidden: int, d_local: int) -> None:
        super().__init__()
        self.d_local = d_local
        self.context = nn.Linear(d_hidden, d_hidden * d_local)  # W_phi, b_phi
        self.out = nn.Linear(d_local, 1, bias=False)  # V_phi

    def forward(self, outputs: Tensor, final: Tensor) -> Tensor:
        """(B, L, alpha) outputs o_i, (B, alpha) final state s_n -> (B, L) scores."""
        batch_size, d_hidden = final.shape
        directions = torch.tanh(self.context(final))  # (B, alpha * k)
        directions = directions.view(batch_size, d_hidden, self.d_local)  # (B, alpha, k)
        views = outputs @ directions  # (B, L, k)
        return self.out(views).squeeze(-1)  # (B, L)


class DLCM(Reranker):
    """Input abstraction, a GRU over the list from bottom to top, a local ranking function."""

    def __init__(self, config: DLCMConfig, d_feature: int, d_pv: int) -> None:
        super().__init__()
        self.config = config
        d = config.d_hidden
        self.abstraction = nn.Sequential(
            nn.Linear(input_size(d_feature, d_pv, config.use_pv), d),  # W^(1), b^(1)
            nn.ELU(),
            nn.Linear(d, d),  # W^(0), b^(0)
            nn.ELU(),
        )
        self.gru = nn.GRU(d, d, batch_first=True)
        self.rank = LocalRankingFunction(d, config.d_local)

    def forward(self, inputs: ListInputs) -> Tensor:
        """(B, L) scores, -inf at padded slots."""
        x = self.abstraction(item_inputs(inputs, self.config.use_pv))  # (B, L, alpha)
        outputs, final = run_in_initial_order(self.gru, x, inputs, bottom_up=True)
        scores = self.rank(outputs, final[-1])  # (B, L)
        return mask_padding(scores, inputs.mask)
