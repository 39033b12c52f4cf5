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


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests use small tensors: one thread avoids oversubscription and keeps timings steady."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
