"""Shared fixtures: one tiny simulated dataset per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from prm.config import ExperimentConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_config() -> ExperimentConfig:
    return load_config(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_config: ExperimentConfig) -> Path:
    from prm.data.simulator import simulate

    out = tmp_path_factory.mktemp("tiny_data")
    simulate(tiny_config.simulator, out, progress=False)
    return out
