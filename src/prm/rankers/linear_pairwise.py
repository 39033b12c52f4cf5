"""A linear pairwise ranker in the manner of SVMRank (Joachims 2002).

Within each query, every pair of documents with different labels is an example: the score
``w . x`` of the more relevant one should exceed the other's by a margin. With ``loss="hinge"``
this is a linear Ranking SVM (L2 penalty through ``l2``); ``"logistic"`` is linear RankNet.
"""

from __future__ import annotations

from typing import Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prm.rankers.base import TorchRanker, check_groups


def preference_pairs(y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(better, worse)`` of every within-query pair with ``y[better] > y[worse]``."""
    better, worse = [], []
    for start, size in zip(np.cumsum(groups) - groups, groups, strict=True):
        labels = y[start : start + size]
        i, j = np.nonzero(labels[:, None] > labels[None, :])  # (size, size) preference matrix
        better.append(start + i)
        worse.append(start + j)
    if not better:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(better), np.concatenate(worse)


class LinearPairwise(TorchRanker):
    def __init__(
        self,
        *,
        loss: Literal["hinge", "logistic"] = "hinge",
        l2: float = 1e-4,  # weight decay on w, the SVM's 1 / C up to scale
        epochs: int = 20,
        batch_size: int = 1024,  # pairs per step
        lr: float = 0.01,
        seed: int = 0,
        n_jobs: int = 1,  # torch threads; more only slow down this small model
    ) -> None:
        if loss not in ("hinge", "logistic"):
            raise ValueError(f"loss must be 'hinge' or 'logistic', got {loss!r}")
        super().__init__(
            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=l2, seed=seed, n_jobs=n_jobs
        )
        self.loss = loss

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Self:
        better, worse = preference_pairs(np.asarray(y), check_groups(X, y, groups))
        better, worse = torch.from_numpy(better), torch.from_numpy(worse)

        def batch_loss(inputs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            pairs = inputs[better[index]] - inputs[worse[index]]  # (batch, d)
            margin = self.network(pairs).squeeze(-1)  # (batch,) w . (x_better - x_worse)
            if self.loss == "hinge":
                return F.relu(1.0 - margin).mean()
            return F.softplus(-margin).mean()

        self._train(X, lambda d: nn.Linear(d, 1, bias=False), len(better), batch_loss)
        return self
