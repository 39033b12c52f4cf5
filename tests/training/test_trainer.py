from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from prm.data.loaders import load_list_data
from prm.pipeline import load_reranker, train_reranker
from prm.registry import ModelSpec
from prm.training.trainer import Trainer


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


def test_resume_reaches_the_same_weights_and_metrics(tiny_data_dir: Path, tiny_config, tmp_path):
    config = replace(tiny_config, train=replace(tiny_config.train, epochs=3, patience=10))
    data = load_list_data(tiny_data_dir)
    base = replace(config.model, use_pv=False)

    straight = train_reranker(
        config, data, tmp_path / "straight", model_config=base, progress=False
    )
    # An "interrupted" run: two epochs, then a fresh process resumes to three.
    interrupted = replace(config, train=replace(config.train, epochs=2))
    train_reranker(interrupted, data, tmp_path / "resumed", model_config=base, progress=False)
    torch.manual_seed(12345)  # the resumed run must not depend on the caller's RNG state
    resumed = train_reranker(
        config, data, tmp_path / "resumed", model_config=base, resume=True, progress=False
    )

    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    history = [json.loads((tmp_path / run / "metrics.json").read_text())["history"]
               for run in ("straight", "resumed")]  # fmt: skip
    assert len(history[0]) == len(history[1]) == 3
    for row_a, row_b in zip(*history, strict=True):
        assert {k: v for k, v in row_a.items() if k != "seconds"} == {
            k: v for k, v in row_b.items() if k != "seconds"
        }


def test_artifacts_are_complete_and_no_temporary_files_remain(
    tiny_data_dir: Path, tiny_config, tmp_path: Path
) -> None:
    data = load_list_data(tiny_data_dir)
    run = tmp_path / "run"
    model = train_reranker(
        tiny_config, data, run, model_config=replace(tiny_config.model, use_pv=False),
        progress=False,
    )  # fmt: skip
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt", "metrics.json", "training_curve.png",
    ]  # fmt: skip
    assert (run / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] >= 1
    reloaded = load_reranker(run)
    batch = data.splits["test"].batch(np.arange(8))
    model.eval()
    torch.testing.assert_close(reloaded(batch), model(batch))


def test_estimated_clicks_select_the_epoch_and_are_required(
    tiny_data_dir: Path, tiny_config, tmp_path: Path
) -> None:
    """An estimator that prefers the first epoch's scores makes it the best epoch, though the
    later epochs fit the clicks better; without an estimator the setting is refused."""
    config = replace(
        tiny_config,
        train=replace(
            tiny_config.train, epochs=3, patience=10, selection_metric="estimated_clicks"
        ),
    )
    data = load_list_data(tiny_data_dir)
    base = replace(config.model, use_pv=False)
    calls: list[float] = []

    def first_is_best(scores: np.ndarray, dataset) -> float:
        assert scores.shape == dataset.mask.shape
        calls.append(1.0 / (len(calls) + 1))
        return calls[-1]

    train_reranker(
        config, data, tmp_path / "run", model_config=base, progress=False, estimator=first_is_best
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and len(calls) == 3
    assert [row["valid_estimated_clicks"] for row in metrics["history"]] == calls
    with pytest.raises(ValueError, match="evaluator"):
        train_reranker(config, data, tmp_path / "none", model_config=base, progress=False)


def test_linear_schedule_falls_to_zero_over_the_epochs(
    tiny_data_dir: Path, tiny_config, tmp_path: Path
) -> None:
    config = replace(tiny_config, train=replace(tiny_config.train, epochs=2, lr_schedule="linear"))
    data = load_list_data(tiny_data_dir)
    train = data.splits["train"]
    spec = ModelSpec.of("prm", replace(config.model, use_pv=False), train.d_feature, 0)
    trainer = Trainer(spec, config.train, tmp_path, progress=False)
    trainer._set_learning_rate(0.0)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(config.train.lr)
    trainer._set_learning_rate(1.5)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(config.train.lr / 4)


def test_resume_after_a_kill_before_the_reports_completes_them_and_clears_temporaries(
    tiny_data_dir: Path, tiny_config, tmp_path: Path
) -> None:
    """A kill after the last checkpoint but before its reports, with a write cut short: the
    resumed run trains nothing, writes the full reports and removes the stale temporary."""
    data = load_list_data(tiny_data_dir)
    base = replace(tiny_config.model, use_pv=False)
    run = tmp_path / "run"
    train_reranker(tiny_config, data, run, model_config=base, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    epochs = len(metrics["history"])
    metrics["history"] = metrics["history"][:-1]  # the reports of one epoch fewer
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    train_reranker(tiny_config, data, run, model_config=base, resume=True, progress=False)
    assert len(json.loads((run / "metrics.json").read_text())["history"]) == epochs
    assert not list(run.glob(".*.tmp"))
