"""Checks the commands run on their inputs before any work, so that a bad input is an exit 2
naming the file, row or flag, never a traceback or a silent wrong result (and a failed
command leaves no folder behind)."""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from prm.config import ConfigError, ExperimentConfig
from prm.data.tables import DataError

if TYPE_CHECKING:
    import torch

    from prm.data.loaders import ListData
    from prm.registry import ModelSpec

# Commands whose --out names a file; every other --out (and --work) names a folder.
FILE_OUTPUTS = ("rerank", "explain")


def new_outputs(args: argparse.Namespace) -> list[Path]:
    """The paths the command may create that do not exist yet (the first missing folder of
    each output). An output folder that is a file, or an output file that is a folder, is
    refused here, before any work."""
    created = []
    for flag in ("out", "work"):
        value = getattr(args, flag, None)
        if value is None:
            continue
        path = Path(value)
        if args.command in FILE_OUTPUTS:
            if path.is_dir():
                raise ConfigError(f"--{flag} {path}: is a folder, expected a file to write")
        elif path.exists() and not path.is_dir():
            raise ConfigError(f"--{flag} {path}: exists and is not a folder")
        missing = path
        while not missing.parent.exists() and missing.parent != missing:
            missing = missing.parent
        if not missing.exists():
            created.append(missing)
    return created


def remove_empty(paths: list[Path]) -> None:
    """After a failed command: remove the folders it created when no file is left in them."""
    for path in paths:
        if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
            shutil.rmtree(path)


def check_lists(
    config: ExperimentConfig,
    data: ListData,
    data_dir: str,
    sections: tuple[str, ...],
    clicked: tuple[str, ...] = (),
) -> None:
    """Lists that fit the position tables of the config's ``sections``, and a click in each
    ``clicked`` split (a softmax loss and the ranking metrics need one)."""
    from prm.data.batch import ListDataset
    from prm.data.shards import lists_source

    in_memory = {k: v for k, v in data.splits.items() if isinstance(v, ListDataset)}
    longest = max(dataset.mask.shape[1] for dataset in in_memory.values())
    config.check_list_length(longest, data_dir, sections)
    for split in clicked:
        if split in in_memory and not in_memory[split].has_click().any():
            raise DataError(
                f"{lists_source(data_dir, split)}: no list has a click: nothing to train on "
                "or to measure a ranking by"
            )


def attach_checked_pv(data: ListData, pv_dir: str, d_pv: int | None = None) -> ListData:
    """``data`` with the PV of ``pv_dir`` (``prm.pretrain.training.attach_pv``), each cache
    checked first: a NumPy array (never unpickled) of shape (lists, L, d_pv), then finite."""
    import numpy as np

    from prm.data.tables import MAX_MAGNITUDE
    from prm.pretrain.training import attach_pv

    d_pv_from = "the run's model"
    for split, dataset in data.splits.items():
        path = Path(pv_dir) / f"pv_{split}.npy"
        if not path.is_file():
            continue  # computed from the CTR model by attach_pv
        try:
            pv = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise DataError(f"{path}: not a PV cache written by `prm pretrain` ({error})") from None
        n, length = dataset.mask.shape
        if (
            pv.ndim != 3
            or pv.shape[:2] != (n, length)
            or pv.dtype.kind != "f"
            or (d_pv is not None and pv.shape[2] != d_pv)
        ):
            expected = f"({n}, {length}, {'d_pv' if d_pv is None else d_pv}) floats"
            source = "" if d_pv is None else f"; d_pv {d_pv} is that of {d_pv_from}"
            raise DataError(
                f"{path}: PV of shape {pv.shape} ({pv.dtype}), expected {expected} for the "
                f"{split} lists of this data{source}; run `prm pretrain` on this data"
            )
        if d_pv is None:  # the first cache's, for the others
            d_pv, d_pv_from = pv.shape[2], path.name
    data = attach_pv(data, pv_dir)
    for split, dataset in data.splits.items():
        bad = ~(np.abs(dataset.pv) <= MAX_MAGNITUDE)  # NaN too
        if bad.any():
            row, position, k = (int(i) for i in np.argwhere(bad)[0])
            raise DataError(
                f"{Path(pv_dir) / f'pv_{split}.npy'}: list {row}, position {position}: "
                f"PV[{k}] = {dataset.pv[row, position, k]} is not a finite value within "
                f"±{MAX_MAGNITUDE:.1e}"
            )
    return data


def check_pretrained(report: dict, out: Path, splits: list[str]) -> None:
    """A CTR model whose loss went NaN or infinite is not kept: its PV would be garbage."""
    losses = [v for row in report["history"] for k, v in row.items() if "loss" in k]
    if all(math.isfinite(loss) for loss in losses):
        return
    for name in ("ctr_model.pt", "pretrain_metrics.json", *(f"pv_{s}.npy" for s in splits)):
        (out / name).unlink(missing_ok=True)
    raise DataError(
        f"pre-training diverged (losses {losses}): an input holds extreme values or "
        "pretrain.lr is too high; nothing was kept"
    )


def load_run(run: str) -> tuple[torch.nn.Module, ModelSpec]:
    """The trained re-ranker of a run folder and its spec; a clear error for a folder or a
    checkpoint that is not one."""
    from prm.pipeline import load_reranker
    from prm.registry import ModelSpec
    from prm.training.checkpoint import CHECKPOINT_KEYS, load_checkpoint
    from prm.training.trainer import CHECKPOINT

    path = Path(run)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--run {path}: not a folder (a run folder written by `prm train`)")
    checkpoint = load_checkpoint(path / CHECKPOINT, CHECKPOINT_KEYS)
    try:
        spec = ModelSpec.from_dict(checkpoint["model_spec"])
        return load_reranker(path), spec
    except (ConfigError, DataError):
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise DataError(
            f"{path / CHECKPOINT}: not a checkpoint this prm can load "
            f"({type(error).__name__}: {error})"
        ) from None


def check_ctr(path: str) -> None:
    """A CTR model file `prm export` can read."""
    from prm.pretrain.ctr import load_ctr

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: CTR model not found (ctr_model.pt of `prm pretrain`)")
    try:
        load_ctr(path)
    except Exception as error:  # garbage, or code refused by weights_only: many ways to fail
        raise DataError(
            f"{path}: not a CTR model written by `prm pretrain` ({type(error).__name__}: {error})"
        ) from None
