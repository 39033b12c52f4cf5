"""Checkpoints that let a run resume exactly: weights, optimizer, epoch, best state, RNG states."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prm.data.tables import DataError
from prm.io import atomic_path


def rng_state(shuffle_generator: torch.Generator) -> dict[str, Any]:
    """Every RNG the training draws from, as tensors, numbers and strings only, so that a
    checkpoint loads with ``weights_only=True`` (no unpickling of arbitrary objects)."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gauss": float(cached_gauss),
        },
        "python": {"version": version, "state": list(python_state), "gauss": python_gauss},
        "shuffle": shuffle_generator.get_state(),
    }


def restore_rng_state(state: dict[str, Any], shuffle_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gauss"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    shuffle_generator.set_state(state["shuffle"])


# What every checkpoint of Trainer holds (and what evaluate, export and --resume read).
CHECKPOINT_KEYS = ("model_spec", "train_config", "weights", "optimizer", "state", "rng")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` with torch.save to a temporary file and rename it into place."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The mapping saved at ``path``, holding the keys ``required`` (a DataError if not)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    # weights_only: tensors and plain containers only. A crafted file cannot run code on
    # load; one that needs more than that is refused as not a checkpoint of ours.
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise DataError(
            f"{path}: not a prm checkpoint: it holds objects other than tensors and plain "
            "values, which are not unpickled (a file from elsewhere, or one written before "
            "stop 11, when RNG states became tensors: train it again)"
        ) from error
    except Exception as error:  # truncated, empty, garbage: the unpickler fails in many ways
        raise DataError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {error}"
        ) from error
    if not isinstance(checkpoint, dict):
        raise DataError(f"{path}: not a prm checkpoint: a {type(checkpoint).__name__}")
    missing = [key for key in required if key not in checkpoint]
    if missing:
        raise DataError(f"{path}: not a prm checkpoint: no {', '.join(missing)}")
    return checkpoint
