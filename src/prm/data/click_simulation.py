"""Position-biased clicks simulated on expert-labelled lists: the semi-synthetic setup of
unbiased learning-to-rank papers (Ai et al., SIGIR 2018; ULTRA, Tran et al., CIKM 2021).

Each list is shown ``sessions`` times in its initial order. In every session the document at
rank k (1-based) is examined with probability e_k = (1 / k)^eta and, once examined, clicked
with probability p(y) = epsilon + (1 - epsilon) (2^y - 1) / (2^y_max - 1) of its relevance
grade y (the position-based model). The logged label of a document is its click count over
the sessions. Since e_k is known here, clicks / e_k (inverse propensity scoring, IPS) has
expectation ``sessions`` * p(y): an unbiased, order-preserving view of the hidden grade.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from prm.config import ConfigError
from prm.data.batch import ListDataset
from prm.data.examination import MIN_EXAMINATION

# What a re-ranker is trained on: raw clicks, clicks weighted by the true or by an estimated
# inverse examination, or the expert labels (the reference). Two diagnostics read the labels:
# p(y) itself, the limit of IPS with unlimited sessions, and the labels with their ties broken
# at random (click-based targets have no ties between documents of one grade).
ClickTarget = Literal[
    "naive", "ips_known", "ips_estimated", "labels", "click_probability", "labels_random_ties"
]


@dataclass(frozen=True)
class ClickSimulation:
    """The click model of the semi-synthetic check and what is trained on its clicks."""

    eta: float = 1.0  # examination (1 / rank)^eta
    epsilon: float = 0.1  # click probability of a non-relevant examined document
    max_grade: int = 2  # y_max of p(y): MQ2008 grades 0-2
    sessions: int = 100  # simulated impressions of each list
    seed: int = 0  # clicks depend on this, the fold and the split only
    targets: tuple[ClickTarget, ...] = ("naive", "ips_known", "ips_estimated", "labels")

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise ConfigError(f"clicks.eta must be >= 0, got {self.eta}")
        if not 0 <= self.epsilon <= 1:
            raise ConfigError(f"clicks.epsilon must lie in [0, 1], got {self.epsilon}")
        if self.max_grade < 1:
            raise ConfigError(f"clicks.max_grade must be >= 1, got {self.max_grade}")
        if self.sessions < 1:
            raise ConfigError(f"clicks.sessions must be >= 1, got {self.sessions}")
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"clicks.targets: give each target once, got {list(self.targets)}")


def examination_by_rank(length: int, eta: float) -> np.ndarray:
    """(length,) e_k = (1 / k)^eta for ranks k = 1..length."""
    return np.arange(1, length + 1, dtype=np.float64) ** -eta


def click_probability(labels: np.ndarray, *, epsilon: float, max_grade: int) -> np.ndarray:
    """p(y) = epsilon + (1 - epsilon) (2^y - 1) / (2^max_grade - 1), elementwise."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.size and (labels.min() < 0 or labels.max() > max_grade):
        raise ValueError(
            f"relevance grades must lie in [0, {max_grade}] (clicks.max_grade); "
            f"got [{labels.min():g}, {labels.max():g}]"
        )
    return epsilon + (1 - epsilon) * (2.0**labels - 1) / (2.0**max_grade - 1)


def simulate_clicks(
    lists: ListDataset, simulation: ClickSimulation, rng: np.random.Generator
) -> np.ndarray:
    """(N, L) float32 click counts over ``simulation.sessions`` showings of each list in its
    initial order, 0 at padding. Clicks of different documents and sessions are independent
    under the position-based model, so a document's count is Binomial(sessions, e_k p(y))."""
    examination = examination_by_rank(lists.list_length, simulation.eta)[lists.positions]
    relevance = click_probability(
        np.where(lists.mask, lists.labels, 0.0),
        epsilon=simulation.epsilon,
        max_grade=simulation.max_grade,
    )
    clicks = rng.binomial(simulation.sessions, examination * relevance)  # (N, L)
    return np.where(lists.mask, clicks, 0).astype(np.float32)


def ips_labels(clicks: np.ndarray, lists: ListDataset, examination: np.ndarray) -> np.ndarray:
    """(N, L) float32 clicks / e at each document's initial rank (``examination``: (L,) per
    rank, 1-based rank 1 first), floored at ``MIN_EXAMINATION`` so an estimate near 0 cannot
    blow a weight up; 0 at padding."""
    examination = np.maximum(np.asarray(examination, dtype=np.float64), MIN_EXAMINATION)
    weighted = clicks / examination[lists.positions]
    return np.where(lists.mask, weighted, 0.0).astype(np.float32)
