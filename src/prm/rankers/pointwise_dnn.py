"""A point-wise neural ranker: an MLP regressing each document's graded label on its features.

The weakest kind of initial ranker, blind to the other documents of the query, like the
point-wise DNN rankers of industrial pipelines.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import torch
import torch.nn.functional as F

from prm.models.layers import mlp
from prm.rankers.base import TorchRanker, check_groups


class PointwiseDNN(TorchRanker):
    def __init__(
        self,
        *,
        hidden_dims: tuple[int, ...] = (64, 32),
        dropout: float = 0.1,
        epochs: int = 20,
        batch_size: int = 256,  # documents per step
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        n_jobs: int = 1,  # torch threads; more only slow down this small model
    ) -> None:
        super().__init__(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            n_jobs=n_jobs,
        )
        self.hidden_dims = tuple(hidden_dims)
        self.dropout = dropout

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Self:
        check_groups(X, y, groups)  # queries play no part in a point-wise loss
        targets = torch.as_tensor(y, dtype=torch.float32)

        def batch_loss(inputs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(self.network(inputs[index]).squeeze(-1), targets[index])

        self._train(X, lambda d: mlp(d, self.hidden_dims, 1, self.dropout), len(y), batch_loss)
        return self
