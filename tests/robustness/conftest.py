"""Fixtures of the robustness corpus: the tiny artifacts the bad inputs are made from, each
built by the CLI once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from bad_input import TINY, Built, Case, check_refused

from prm.cli.main import main


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> Built:
    root = tmp_path_factory.mktemp("robust_built")
    settings = yaml.safe_load(TINY.read_text())
    settings["train"]["epochs"] = 1
    config = root / "tiny1.yaml"
    config.write_text(yaml.safe_dump(settings))
    common = ["--config", str(config), "--data", str(tiny_data_dir), "--quiet"]
    assert main(["pretrain", *common, "--out", str(root / "pv")]) == 0
    assert main(["train", *common, "--base", "--out", str(root / "base")]) == 0
    assert main(["train", *common, "--pv", str(root / "pv"), "--out", str(root / "prm")]) == 0
    return Built(tiny_data_dir, root / "pv", root / "base", root / "prm", config)


@pytest.fixture(scope="session")
def bundle(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("robust_bundle") / "bundle"
    ctr = built.pv / "ctr_model.pt"
    assert main(["export", "--run", str(built.prm_run), "--ctr", str(ctr), "--out", str(out)]) == 0
    return out


@pytest.fixture
def refused(capsys: pytest.CaptureFixture) -> Callable[[Case], None]:
    return lambda case: check_refused(case, capsys)
