"""Checkpoints that let a run resume exactly: weights, optimizer, epoch, best state, RNG states."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prm.io import atomic_path


def rng_state(shuffle_generator: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "shuffle": shuffle_generator.get_state(),
    }


def restore_rng_state(state: dict[str, Any], shuffle_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    shuffle_generator.set_state(state["shuffle"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` with torch.save to a temporary file and rename it into place."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    # weights_only=False: the checkpoint holds NumPy and Python RNG states we wrote ourselves.
    return torch.load(path, map_location="cpu", weights_only=False)
