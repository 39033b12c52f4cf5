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
from pathlib import Path
from typing import Any

from prm.data.tables import DataError

MANIFEST = "manifest.json"
RERANKER_ONNX = "reranker.onnx"
PV_ONNX = "pv.onnx"
CATALOG = "catalog.npz"
RERANKER_TORCH = "reranker.pt"
CTR_TORCH = "ctr_model.pt"
FORMAT = 1  # bumped when the layout above changes


class BundleError(DataError):
    """A model bundle that is missing, malformed or at odds with its models (the CLI's exit 2)."""


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
