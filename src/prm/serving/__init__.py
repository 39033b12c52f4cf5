"""Serving PRM: ONNX export, a predictor, the HTTP service, batch re-ranking, explanations.

Names are imported on first use, so a uvicorn worker does not pay for matplotlib and the CLI
does not pay for FastAPI when it only exports.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "export_bundle": "prm.serving.export",
    "Catalog": "prm.data.tables",
    "read_manifest": "prm.serving.bundle",
    "CandidateLists": "prm.serving.predictor",
    "Predictor": "prm.serving.predictor",
    "load_predictor": "prm.serving.predictor",
    "Service": "prm.serving.app",
    "create_app": "prm.serving.app",
    "serve": "prm.serving.app",
    "rerank_parquet": "prm.serving.batch",
    "explain_list": "prm.serving.explain",
    "plot_attention": "prm.serving.explain",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'prm.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
