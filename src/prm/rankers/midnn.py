"""miDNN of Zhuang, Ou and Wang, "Globally Optimized Mutual Influence Aware Ranking in
E-Commerce Search" (IJCAI 2018), Section 4: an MLP over each item's features extended with
global features of its list.

    Global features   per input column, over the real items of the list: mean, std, min, max
    Extension         x~_i = [x_i; mean; std; min; max; (x_i - min)/(max - min); (x_i - mean)/std]
    Score             s_i = MLP(x~_i)

The paper's extension is the min-max normalisation (x_i - min)/(max - min); the standardised
difference is its analogue for mean and std. Plain differences x_i - mean would add nothing,
being linear in columns the first layer already sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prm.data.batch import ListInputs
from prm.models.base import Reranker
from prm.models.layers import mlp
from prm.rankers.common import input_size, item_inputs, mask_padding

EPS = 1e-6  # keeps std and max - min away from 0 on lists of one item (or of equal items)


@dataclass(frozen=True)
class MiDNNConfig:
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    use_pv: bool = True


def global_feature_extension(x: Tensor, mask: Tensor) -> Tensor:
    """(B, L, d) item inputs, (B, L) mask -> (B, L, 7d): each item with its list's statistics.

    Statistics run over real items only; a list without one gets zeros, never NaN.
    """
    real = mask[..., None]  # (B, L, 1)
    has_items = real.any(dim=1, keepdim=True)  # (B, 1, 1)
    n = real.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1, 1)
    mean = torch.where(real, x, 0.0).sum(dim=1, keepdim=True) / n  # (B, 1, d)
    var = torch.where(real, (x - mean) ** 2, 0.0).sum(dim=1, keepdim=True) / n  # (B, 1, d)
    std = (var + EPS).sqrt()  # (B, 1, d)
    low = torch.where(real, x, float("inf")).amin(dim=1, keepdim=True)  # (B, 1, d)
    high = torch.where(real, x, float("-inf")).amax(dim=1, keepdim=True)  # (B, 1, d)
    low, high = torch.where(has_items, low, 0.0), torch.where(has_items, high, 0.0)
    stats = torch.cat([mean, std, low, high], dim=-1).expand(-1, x.shape[1], -1)  # (B, L, 4d)
    min_max = (x - low) / (high - low).clamp(min=EPS)  # (B, L, d)
    standard = (x - mean) / std  # (B, L, d)
    return torch.cat([x, stats, min_max, standard], dim=-1)  # (B, L, 7d)


class MiDNN(Reranker):
    """Global feature extension, then an MLP scoring each item on its own."""

    def __init__(self, config: MiDNNConfig, d_feature: int, d_pv: int) -> None:
        super().__init__()
        self.config = config
        d_in = input_size(d_feature, d_pv, config.use_pv)
        self.scorer = mlp(7 * d_in, config.hidden, 1, config.dropout)

    def forward(self, inputs: ListInputs) -> Tensor:
        """(B, L) scores, -inf at padded slots."""
        x = global_feature_extension(item_inputs(inputs, self.config.use_pv), inputs.mask)
        return mask_padding(self.scorer(x).squeeze(-1), inputs.mask)  # (B, L)
