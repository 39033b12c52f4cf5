"""One trained tiny PRM, its CTR model and their exported bundle, shared by the serving tests."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from prm.cli.main import main
from prm.config import ExperimentConfig
from prm.data.loaders import load_list_data
from prm.pipeline import train_reranker
from prm.pretrain.training import CTR_MODEL, attach_pv, pretrain
from prm.serving.predictor import Predictor, load_predictor


@dataclass(frozen=True)
class Served:
    data: Path  # the tiny simulated dataset
    pretrain: Path  # ctr_model.pt and the PV caches
    run: Path  # the PRM run folder
    bundle: Path  # what `prm export` wrote


@pytest.fixture(scope="session")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_config: ExperimentConfig, tiny_data_dir: Path
) -> Served:
    root = tmp_path_factory.mktemp("served")
    config = replace(tiny_config, train=replace(tiny_config.train, epochs=1))
    data = load_list_data(tiny_data_dir)
    pretrain(config, data, root / "pretrain", progress=False)
    train_reranker(config, attach_pv(data, root / "pretrain"), root / "run", progress=False)
    ctr = root / "pretrain" / CTR_MODEL
    args = ["--run", str(root / "run"), "--ctr", str(ctr), "--out", str(root / "bundle")]
    assert main(["export", *args, "--version", "test-v1"]) == 0  # the CLI, tested once here
    return Served(
        data=tiny_data_dir, pretrain=root / "pretrain", run=root / "run", bundle=root / "bundle"
    )


@pytest.fixture(scope="session")
def onnx_predictor(served: Served) -> Predictor:
    return load_predictor(served.bundle, "onnx")


@pytest.fixture(scope="session")
def torch_predictor(served: Served) -> Predictor:
    return load_predictor(served.bundle, "torch")
