"""`prm export`: a trained re-ranker and the CTR model that makes its PV, as a model bundle.

Both graphs are exported to ONNX with dynamic batch size, list length and history length, so
one export serves any request and serving needs no PyTorch. Every export is checked against
PyTorch on a padded batch before it is moved into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from prm.data.tables import Catalog
from prm.pipeline import load_reranker
from prm.pretrain.ctr import CTRModel, load_ctr
from prm.registry import ModelSpec
from prm.serving.bundle import (
    CATALOG,
    CTR_TORCH,
    FORMAT,
    MANIFEST,
    PV_ONNX,
    RERANKER_ONNX,
    RERANKER_TORCH,
    BundleError,
)
from prm.serving.graphs import PV_INPUTS, SCORE_INPUTS, PVGraph, ScoreGraph
from prm.serving.predictor import load_predictor
from prm.training.checkpoint import load_checkpoint
from prm.training.trainer import CHECKPOINT

PARITY_TOLERANCE = 1e-4  # max |ONNX Runtime - PyTorch| score at a real slot
DEFAULT_MAX_LIST_LENGTH = 1024  # for re-rankers without a position table
# Re-rankers that `prm export` refuses by name, before anything is written: kind -> reason.
# Every registered kind exports today: the recurrences (DLCM, Seq2Slate, the evaluator-generator's
# beam search) run as ONNX Scan loops over the list, so the graphs keep a dynamic list length.
NOT_EXPORTABLE: dict[str, str] = {}


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    names: tuple[str, ...],
    dims: list[dict[int, Any]],
    output: str,
) -> None:
    """torch.onnx.export (dynamo) into one self-contained file, without its progress chatter."""
    # torch.export logs harmless errors while it traces a scan; the ONNX exporter chats.
    noisy = {name: logging.getLogger(name) for name in ("torch.onnx", "torch.export")}
    levels = {name: logger.level for name, logger in noisy.items()}
    noisy["torch.onnx"].setLevel(logging.ERROR)
    noisy["torch.export"].setLevel(logging.CRITICAL)
    try:
        # no_grad: a graph that only infers, and the recurrences' scan (a PyTorch prototype)
        # exports only without autograd.
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                args,
                path,
                dynamo=True,
                external_data=False,
                input_names=list(names),
                output_names=[output],
                dynamic_shapes=dict(zip(names, dims, strict=True)),
            )
    finally:
        for name, logger in noisy.items():
            logger.setLevel(levels[name])


def export_score_graph(
    reranker: nn.Module, path: Path, d_feature: int, d_pv: int, max_list_length: int
) -> None:
    """``reranker.onnx``: (features, pv, positions, mask) -> (B, L) scores, -inf at padding."""
    batch = torch.export.Dim("batch")
    length = torch.export.Dim("list_length", max=max_list_length)
    example_length = min(3, max_list_length)  # > 1, so the exporter keeps the axis dynamic
    args = (
        torch.zeros(2, example_length, d_feature),
        torch.zeros(2, example_length, d_pv),
        torch.arange(example_length).repeat(2, 1),
        torch.ones(2, example_length, dtype=torch.bool),
    )
    dims = [{0: batch, 1: length}] * 4
    _export(ScoreGraph(reranker), args, path, SCORE_INPUTS, dims, "scores")


def export_pv_graph(ctr: CTRModel, path: Path) -> None:
    """``pv.onnx``: (profile, history, history_mask, item_ids, item_features) -> (B, L, d_pv)."""
    shapes = ctr.tables.shapes()
    batch, length = torch.export.Dim("batch"), torch.export.Dim("list_length")
    history = torch.export.Dim("history_length")
    args = (
        torch.zeros(2, shapes["d_profile"]),
        torch.zeros(2, 3, dtype=torch.int64),
        torch.ones(2, 3, dtype=torch.bool),
        torch.zeros(2, 3, dtype=torch.int64),
        torch.zeros(2, 3, shapes["d_item"]),
    )
    dims = [{0: batch}, {0: batch, 1: history}, {0: batch, 1: history}]
    dims += [{0: batch, 1: length}, {0: batch, 1: length}]
    _export(PVGraph(ctr), args, path, PV_INPUTS, dims, "pv")


def parity(bundle: Path, seed: int = 0) -> float:
    """Max |ONNX Runtime - PyTorch| score at the real slots of three lists of catalog users:
    one full, one half padded, one of a single item."""
    onnx_predictor = load_predictor(bundle, "onnx")
    torch_predictor = load_predictor(bundle, "torch")
    catalog = onnx_predictor.catalog
    rng = np.random.default_rng(seed)
    length = min(12, onnx_predictor.max_list_length, catalog.n_items)
    mask = np.arange(length) < np.array([[length], [max(1, length // 2)], [1]])  # (3, L)
    item_ids = np.stack([rng.permutation(catalog.n_items)[:length] for _ in mask])  # (3, L)
    user_ids = rng.integers(catalog.n_users, size=len(mask))  # (3,)
    inputs = onnx_predictor.known_user_lists(user_ids, item_ids, mask)
    got, want = onnx_predictor.score(inputs), torch_predictor.score(inputs)
    if not np.array_equal(np.isneginf(got), ~inputs.mask):
        raise BundleError(f"{bundle}: the ONNX graph does not give -inf exactly at padding")
    return float(np.abs(got[inputs.mask] - want[inputs.mask]).max())


@contextlib.contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` that replaces it only when the block succeeds."""
    empty_dir = out_dir.is_dir() and not any(out_dir.iterdir())
    if out_dir.exists() and not empty_dir and not (out_dir / MANIFEST).is_file():
        raise BundleError(f"{out_dir}: exists and is not a model bundle; refusing to overwrite")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp's 0o700 would hide the bundle from a service running as another user
    try:
        yield tmp
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            out_dir.rename(old / "bundle")
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_bundle(
    run_dir: str | Path,
    ctr_path: str | Path,
    out_dir: str | Path,
    *,
    version: str | None = None,
) -> dict[str, Any]:
    """Write the bundle of the re-ranker in ``run_dir`` and the CTR model at ``ctr_path``.

    The CTR model's tables become the catalog of known users and items. Returns the manifest;
    ``version`` defaults to the run folder's name and a hash of the two graphs.
    """
    run_dir, ctr_path, out_dir = Path(run_dir), Path(ctr_path), Path(out_dir)
    spec = ModelSpec.from_dict(load_checkpoint(run_dir / CHECKPOINT)["model_spec"])
    if spec.kind in NOT_EXPORTABLE:
        raise BundleError(
            f"{run_dir}: a {spec.kind} re-ranker does not export to ONNX "
            f"({NOT_EXPORTABLE[spec.kind]}); rank with it from Python (prm.pipeline."
            "load_reranker)"
        )
    reranker = load_reranker(run_dir)
    if not ctr_path.is_file():
        raise FileNotFoundError(f"{ctr_path}: CTR model not found; run `prm pretrain` first")
    ctr = load_ctr(ctr_path).eval()
    tables = ctr.tables
    catalog = Catalog(
        profile=tables.profile.numpy(),
        history=tables.history.numpy(),
        history_mask=tables.history_mask.numpy(),
        item_features=tables.item_features.numpy(),
    )
    uses_pv = spec.uses_pv
    if catalog.d_feature != spec.d_feature:
        raise BundleError(
            f"{ctr_path}: items have {catalog.d_feature} features, the re-ranker in {run_dir} "
            f"expects {spec.d_feature}; were they trained on the same dataset?"
        )
    if uses_pv and ctr.d_pv != spec.d_pv:
        raise BundleError(
            f"{ctr_path}: PV has {ctr.d_pv} dimensions, the re-ranker in {run_dir} expects "
            f"{spec.d_pv}; pass the CTR model it was trained with"
        )
    max_list_length = spec.config.get("max_positions", DEFAULT_MAX_LIST_LENGTH)

    with _staging(out_dir) as tmp:
        export_score_graph(
            reranker, tmp / RERANKER_ONNX, spec.d_feature, spec.d_pv, max_list_length
        )
        export_pv_graph(ctr, tmp / PV_ONNX)
        catalog.save(tmp / CATALOG)
        torch.save(
            {"model_spec": spec.to_dict(), "state_dict": reranker.state_dict()},
            tmp / RERANKER_TORCH,
        )
        shutil.copyfile(ctr_path, tmp / CTR_TORCH)
        digest = hashlib.sha256()
        for name in (RERANKER_ONNX, PV_ONNX):
            digest.update((tmp / name).read_bytes())
        manifest = {
            "format": FORMAT,
            "version": version or f"{run_dir.name}-{digest.hexdigest()[:12]}",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "sources": {"run": str(run_dir.resolve()), "ctr": str(ctr_path.resolve())},
            "reranker": {
                "kind": spec.kind,
                "d_feature": spec.d_feature,
                "d_pv": spec.d_pv,
                "uses_pv": uses_pv,
                "max_list_length": max_list_length,
            },
            "catalog": {
                "n_users": catalog.n_users,
                "n_items": catalog.n_items,
                "d_profile": catalog.d_profile,
                "history_length": int(catalog.history.shape[1]),
            },
            "ctr": {"d_pv": ctr.d_pv},
            "onnx": {"opset": onnx.load(tmp / RERANKER_ONNX).opset_import[0].version},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        diff = parity(tmp)
        if not diff <= PARITY_TOLERANCE:
            raise BundleError(
                f"ONNX and PyTorch scores differ by {diff:.2e} > {PARITY_TOLERANCE:g}; not written"
            )
        manifest["onnx"]["parity_max_abs_diff"] = diff
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
