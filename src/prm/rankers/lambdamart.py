"""LambdaMART (Burges 2010): gradient-boosted trees with LightGBM's ``lambdarank`` objective.

The strongest of the initial rankers, as the ranker that produced the logged lists of the
paper's LETOR experiment. Defaults follow LightGBM's lambdarank example (``train.conf``).
"""

from __future__ import annotations

from typing import Self

import lightgbm as lgb
import numpy as np

from prm.rankers.base import Ranker, check_groups

MAX_LABEL = 30  # LightGBM's default label_gain covers the integer labels 0..30


class LambdaMART(Ranker):
    def __init__(
        self,
        *,
        n_estimators: int = 100,
        learning_rate: float = 0.1,
        num_leaves: int = 31,
        min_child_samples: int = 50,
        subsample: float = 0.9,  # bagging fraction, redrawn every iteration
        seed: int = 0,
        n_jobs: int = 1,  # one thread: deterministic, and LETOR sets are small
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.seed = seed
        self.n_jobs = n_jobs
        self.booster: lgb.Booster | None = None

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Self:
        groups = check_groups(X, y, groups)
        labels = np.asarray(y)
        if (labels != np.round(labels)).any() or labels.min() < 0 or labels.max() > MAX_LABEL:
            raise ValueError(f"lambdarank needs integer labels in 0..{MAX_LABEL}")
        params = {
            "objective": "lambdarank",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "bagging_fraction": self.subsample,
            "bagging_freq": 1,
            "seed": self.seed,
            "num_threads": self.n_jobs,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        data = lgb.Dataset(X, labels.astype(np.int32), group=groups, params={"verbosity": -1})
        self.booster = lgb.train(params, data, num_boost_round=self.n_estimators)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("LambdaMART.predict before fit")
        return self.booster.predict(X, num_threads=self.n_jobs)
