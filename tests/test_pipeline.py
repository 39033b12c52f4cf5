"""The demo's pipeline learns and selects from the logs alone; only grading reads truth/."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from prm.config import ExperimentConfig
from prm.experiments.demo import fit_demo, grade_demo
from prm.pipeline import EVALUATOR


def test_demo_fits_without_truth_and_grades_with_it(
    tiny_config: ExperimentConfig, tiny_data_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    hidden = tmp_path / "hidden_truth"
    shutil.move(data / "truth", hidden)  # nothing that learns or selects may find it
    config = replace(
        tiny_config,
        train=replace(tiny_config.train, selection_metric="estimated_clicks"),
        model=replace(tiny_config.model, position_bias="evaluator"),
    )
    scores, report = fit_demo(config, data, tmp_path / "out", progress=False)
    assert not (data / "truth").exists()
    assert set(scores) == {"initial", "ctr_sort", EVALUATOR, "prm_base", "prm"}
    for name in ("prm_base", "prm"):
        assert len(scores[name]) == len(config.seeds)
        for selected in report["selected"][name]:
            assert selected["selection_metric"] == "estimated_clicks"
            assert 1 <= selected["best_epoch"] <= config.train.epochs
    history = json.loads((tmp_path / "out/runs/prm_seed0/metrics.json").read_text())["history"]
    assert all("valid_estimated_clicks" in row for row in history)

    with pytest.raises(FileNotFoundError, match="truth"):
        grade_demo(config, scores, data)
    shutil.move(hidden, data / "truth")
    results = grade_demo(config, scores, data)
    assert list(results["models"]) == [
        "initial",
        "ctr_sort",
        "prm_base",
        "prm",
        EVALUATOR,
        "oracle",
    ]
    assert results["models"]["oracle"]["oracle_gain_pct"] == pytest.approx(100)
    assert {(t["a"], t["b"]) for t in results["tests"]} >= {("prm", "prm_base"), (EVALUATOR, "prm")}
