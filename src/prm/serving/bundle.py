"""The model bundle that `prm export` writes and every serving path reads.

One folder holds everything a request needs, so serving needs neither the training run nor the
dataset:

    manifest.json   version, sizes, limits and where the models came from
    reranker.onnx   (features, pv, positions, mask) -> scores      ONNX Runtime backend
    pv.onnx         (profile, history, history_mask, item_ids, item_features) -> pv
    catalog.npz     known users (profile, history) and items (features), by id
    reranker.pt     re-ranker spec and weights                      PyTorch backend
    ctr_model.pt    the CTR model (``prm.pretrain.ctr.save_ctr``)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prm.data.loaders import DataError

MANIFEST = "manifest.json"
RERANKER_ONNX = "reranker.onnx"
PV_ONNX = "pv.onnx"
CATALOG = "catalog.npz"
RERANKER_TORCH = "reranker.pt"
CTR_TORCH = "ctr_model.pt"
FORMAT = 1  # bumped when the layout above changes


class BundleError(DataError):
    """A model bundle that is missing, malformed or at odds with its models (the CLI's exit 2)."""


@dataclass(frozen=True)
class Catalog:
    """Known users and items: the CTR model's tables, so a request may name them by id."""

    profile: np.ndarray  # (n_users, d_profile) float32
    history: np.ndarray  # (n_users, H) int64: past clicks, any valid item id at padding
    history_mask: np.ndarray  # (n_users, H) bool: True at real past clicks
    item_features: np.ndarray  # (n_items, d_feature) float32: item features X

    @property
    def n_users(self) -> int:
        return self.profile.shape[0]

    @property
    def n_items(self) -> int:
        return self.item_features.shape[0]

    @property
    def d_profile(self) -> int:
        return self.profile.shape[1]

    @property
    def d_feature(self) -> int:
        return self.item_features.shape[1]

    def save(self, path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(
                handle,
                profile=self.profile,
                history=self.history,
                history_mask=self.history_mask,
                item_features=self.item_features,
            )

    @classmethod
    def load(cls, path: Path) -> Catalog:
        with np.load(path) as arrays:
            return cls(
                profile=arrays["profile"].astype(np.float32),
                history=arrays["history"].astype(np.int64),
                history_mask=arrays["history_mask"].astype(bool),
                item_features=arrays["item_features"].astype(np.float32),
            )


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """The bundle's manifest, or a BundleError when ``bundle`` is no bundle this code reads."""
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: not a model bundle (no {MANIFEST}); see `prm export`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"{path}: bundle format {manifest.get('format')!r}, this prm reads {FORMAT}; "
            "export the model again"
        )
    return manifest
