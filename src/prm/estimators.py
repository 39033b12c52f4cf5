"""scikit-learn-style re-rankers for notebooks: ``PRMReranker().fit(train, valid).predict(lists)``.

The same build-and-train path as ``prm train`` (:func:`prm.training.trainer.fit_reranker`
builds the model from its spec and fits it with early stopping on the validation lists), on
in-memory :class:`~prm.data.batch.ListDataset` objects, with checkpoints in a temporary
folder unless ``work_dir`` is given.
"""

from __future__ import annotations

import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prm.config import EvalConfig, TrainConfig, from_dict
from prm.data.batch import ListDataset
from prm.evaluation.evaluate import evaluate_scores, score_lists
from prm.evaluation.metrics import rank_order
from prm.registry import RERANKERS, ModelSpec
from prm.training.trainer import fit_reranker

TRAIN_KEYS = {f.name for f in fields(TrainConfig)}


class ListReranker:
    """Any registered re-ranker (``kind``: prm, dlcm, seq2slate, setrank, gsf, midnn,
    generator_evaluator) with scikit-learn's ``fit`` / ``predict`` / ``score``.

    Keyword parameters are the model's config keys (e.g. ``d_model``, ``use_pv``) and
    :class:`~prm.config.TrainConfig`'s (``epochs``, ``lr``, ``batch_size``, ...); unknown keys
    are rejected by name.
    """

    def __init__(
        self,
        kind: str = "prm",
        *,
        work_dir: str | Path | None = None,
        progress: bool = False,
        **params: Any,
    ) -> None:
        if kind not in RERANKERS:
            raise ValueError(f"unknown re-ranker kind {kind!r}; known: {sorted(RERANKERS)}")
        self.kind, self.work_dir, self.progress = kind, work_dir, progress
        self.params = params
        self.model_: torch.nn.Module | None = None

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"kind": self.kind, "work_dir": self.work_dir, "progress": self.progress} | dict(
            self.params
        )

    def set_params(self, **params: Any) -> ListReranker:
        for name in ("kind", "work_dir", "progress"):
            if name in params:
                setattr(self, name, params.pop(name))
        self.params.update(params)
        return self

    def fit(self, train: ListDataset, valid: ListDataset | None = None) -> ListReranker:
        """Train on ``train``; choose the epoch on ``valid`` (default: the last tenth of
        ``train``'s lists, held out)."""
        if valid is None:
            cut = max(1, len(train) // 10)
            train, valid = (
                train.subset(np.arange(len(train) - cut)),
                train.subset(np.arange(len(train) - cut, len(train))),
            )
        train_params = {k: v for k, v in self.params.items() if k in TRAIN_KEYS}
        model_params = {k: v for k, v in self.params.items() if k not in TRAIN_KEYS}
        if self.kind == "prm":
            model_params.setdefault("use_pv", train.d_pv > 0)
        spec = ModelSpec(self.kind, model_params, train.d_feature, train.d_pv)
        train_config = from_dict(TrainConfig, train_params, "train.")
        if self.work_dir is not None:
            self.model_ = self._fit(spec, train_config, train, valid, Path(self.work_dir))
        else:
            with tempfile.TemporaryDirectory(prefix="prm-") as folder:
                self.model_ = self._fit(spec, train_config, train, valid, Path(folder))
        return self

    def _fit(self, spec, train_config, train, valid, run_dir: Path) -> torch.nn.Module:
        model, _ = fit_reranker(spec, train_config, train, valid, run_dir, progress=self.progress)
        return model

    def _fitted(self) -> torch.nn.Module:
        if self.model_ is None:
            raise RuntimeError("call fit(train, valid) before predict")
        return self.model_

    def predict(self, lists: ListDataset) -> np.ndarray:
        """(N, L) scores of every item (higher is shown first; padded slots -inf or anything)."""
        return score_lists(self._fitted(), lists)

    def rank(self, lists: ListDataset) -> np.ndarray:
        """(N, L) slot indices of each list from the top to the bottom; padding last."""
        return rank_order(self.predict(lists), lists.mask, lists.positions)

    def score(self, lists: ListDataset, k: int = 10) -> float:
        """NDCG@k against ``lists``' labels, averaged over the lists with a positive label."""
        return evaluate_scores(self.predict(lists), lists, EvalConfig(ks=(k,)))[f"ndcg@{k}"]


class PRMReranker(ListReranker):
    """PRM (PRM-BASE when the lists carry no PV, or with ``use_pv=False``)."""

    def __init__(
        self, *, work_dir: str | Path | None = None, progress: bool = False, **params: Any
    ) -> None:
        super().__init__("prm", work_dir=work_dir, progress=progress, **params)
