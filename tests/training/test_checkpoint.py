"""Checkpoints load without unpickling code, and RNG states survive the round trip."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from prm.data.tables import DataError
from prm.training.checkpoint import (
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)


class Payload:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_runs_nothing_and_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"weights": {}, "evil": Payload(marker)}, path)
    with pytest.raises(DataError, match="not a prm checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_rng_states_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    shuffle = torch.Generator().manual_seed(3)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's legacy state
    save_checkpoint(tmp_path / "c.pt", {"rng": [rng_state(shuffle)]})
    expected = (
        torch.rand(3),
        np.random.standard_normal(3),
        random.random(),
        torch.rand(2, generator=shuffle),
    )
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"][0], shuffle)
    again = (
        torch.rand(3),
        np.random.standard_normal(3),
        random.random(),
        torch.rand(2, generator=shuffle),
    )
    torch.testing.assert_close(again[0], expected[0])
    np.testing.assert_array_equal(again[1], expected[1])
    assert again[2] == expected[2]
    torch.testing.assert_close(again[3], expected[3])
