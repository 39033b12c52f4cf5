"""What every initial ranker shares: the ``fit(X, y, groups)`` / ``predict(X)`` / ``score`` API.

``X`` is (n_docs, d) float, ``y`` (n_docs,) graded relevance and ``groups`` (Q,) the number of
consecutive documents of each query (LightGBM's ``group``), so a ranker reads a
:class:`~prm.data.letor.RankingQueries` as ``(features, labels, groups)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Self

import numpy as np
import torch
from torch import nn

from prm.data.batch import pad_lists
from prm.evaluation.metrics import lists_with_click, ndcg_at_k, summarize


def check_groups(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``groups`` as int64 after checking that it tiles the rows of ``X`` and ``y``."""
    groups = np.asarray(groups, dtype=np.int64)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
    if (groups < 1).any() or groups.sum() != len(y):
        raise ValueError(f"groups must be >= 1 and sum to {len(y)} rows, got sum {groups.sum()}")
    return groups


def pad_by_group(
    values: np.ndarray, groups: np.ndarray, length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(n_docs,) values -> (Q, length) zero-padded array and its mask (True at real documents).

    ``length`` defaults to the largest group.
    """
    values = np.asarray(values)
    rows = np.split(values, np.cumsum(groups)[:-1]) if len(groups) else []
    return pad_lists(rows, length, dtype=values.dtype)


class Ranker(ABC):
    """A scikit-learn-like ranker: hyperparameters are keyword arguments of ``__init__``."""

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Self: ...

    @abstractmethod
    def predict(self, X: np.ndarray) -> np.ndarray:
        """(n_docs,) scores; higher ranks first."""

    def score(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, k: int = 10) -> float:
        """Mean NDCG@k over the queries with a relevant document."""
        groups = check_groups(X, y, groups)
        scores, mask = pad_by_group(self.predict(X), groups)
        labels, _ = pad_by_group(y, groups)
        per_query = {"ndcg": ndcg_at_k(scores, labels, mask=mask, k=k)}
        return summarize(per_query, lists_with_click(labels, mask))["ndcg"]


class Standardizer:
    """Per-feature z-scores with training statistics; constant features map to 0."""

    def __init__(self, X: np.ndarray) -> None:
        self.mean = X.mean(axis=0)
        std = X.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)

    def __call__(self, X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((X - self.mean) / self.std, dtype=torch.float32)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads, then restore the previous count.

    Small networks are slower with threads than without, badly so on a busy machine.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class TorchRanker(Ranker):
    """A torch scoring network on z-scored features, trained by Adam on minibatches.

    Subclasses build the network and say which examples (documents, pairs) a minibatch holds
    and what their loss is; prediction is shared.
    """

    def __init__(
        self,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        weight_decay: float,
        seed: int,
        n_jobs: int,
    ) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed
        self.n_jobs = n_jobs
        self.standardize: Standardizer | None = None
        self.network: nn.Module | None = None

    def _train(
        self,
        X: np.ndarray,
        build: Callable[[int], nn.Module],
        n_examples: int,
        batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> None:
        """Fit the network ``build(d)`` by Adam on shuffled minibatches of example indices.

        ``batch_loss(inputs, index)`` gets the z-scored (n_docs, d) inputs and a minibatch of
        example indices and returns its scalar loss.
        """
        self.standardize = Standardizer(X)
        inputs = self.standardize(X)  # (n_docs, d)
        generator = torch.Generator().manual_seed(self.seed)
        with torch_threads(self.n_jobs), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the network's initial weights, then dropout
            self.network = build(X.shape[1])
            optimizer = torch.optim.Adam(
                self.network.parameters(), lr=self.lr, weight_decay=self.weight_decay
            )
            self.network.train()
            for _ in range(self.epochs):
                order = torch.randperm(n_examples, generator=generator)
                for start in range(0, n_examples, self.batch_size):
                    optimizer.zero_grad()
                    batch_loss(inputs, order[start : start + self.batch_size]).backward()
                    optimizer.step()
        self.network.eval()

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.network is None or self.standardize is None:
            raise RuntimeError(f"{type(self).__name__}.predict before fit")
        with torch_threads(self.n_jobs), torch.no_grad():
            return self.network(self.standardize(X)).squeeze(-1).numpy()  # (n_docs, 1) -> (n,)
