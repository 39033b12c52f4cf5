"""Data-parallel training on two gloo processes (CPU) against one process."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from prm.cli.main import main
from prm.config import ExperimentConfig
from prm.data.loaders import load_list_data
from prm.models.prm import list_softmax
from prm.registry import ModelSpec
from prm.training import distributed
from prm.training.checkpoint import load_checkpoint
from prm.training.trainer import Trainer

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
# Two processes sum the same per-list gradients in another order than one process does, so
# metrics and the models' click probabilities agree to float rounding. (Weights need not:
# parameters the list softmax ignores, like the key bias, get gradients of pure rounding noise,
# which Adam scales up to steps of lr.)
TOLERANCE = 1e-5


def _fit(config: ExperimentConfig, data_dir: Path, run_dir: Path, resume: bool = False) -> dict:
    """PRM-BASE trained as `prm train --base` would: the history (less timings), the final
    weights, and the click probabilities the final model gives the validation lists."""
    data = load_list_data(data_dir, splits=("train", "valid"))
    model_config = replace(config.model, use_pv=False)
    spec = ModelSpec.of("prm", model_config, data.splits["train"].d_feature, 0)
    trainer = Trainer(spec, config.train, run_dir, progress=False)
    state = trainer.fit(data.splits["train"], data.splits["valid"], resume=resume)
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in state.history]
    valid = data.splits["valid"]
    batch = valid.batch(np.arange(len(valid)))
    with torch.no_grad():
        probabilities = list_softmax(trainer.model.eval()(batch), batch.mask)
    return {"history": history, "weights": trainer.model.state_dict(), "p": probabilities}


def _two_process_runs(config: ExperimentConfig, data_dir: Path, sharded: Path, out: Path) -> None:
    """In each process: a straight run without dropout; with dropout, a straight run and one
    stopped after an epoch, then resumed (RNG perturbed first, as a fresh process would be);
    `prm train --stream` on the sharded copy. One spawn for all: each costs seconds."""
    rank = distributed.rank()
    no_dropout = replace(config, model=replace(config.model, dropout=0.0))
    results = {"no_dropout": _fit(no_dropout, data_dir, out / "no_dropout")}
    results["straight"] = _fit(config, data_dir, out / "straight")
    one_epoch = replace(config, train=replace(config.train, epochs=1))
    _fit(one_epoch, data_dir, out / "resumed")
    torch.manual_seed(1234 + rank)
    results["resumed"] = _fit(config, data_dir, out / "resumed", resume=True)
    torch.save(results, out / f"rank{rank}.pt")
    train = ["train", "--config", TINY, "--data", str(sharded), "--out", str(out / "stream")]
    with open(out / f"stdout{rank}.txt", "w") as stdout, contextlib.redirect_stdout(stdout):
        assert main([*train, "--base", "--stream", "--quiet"]) == 0


@pytest.fixture(scope="module")
def config(tiny_config: ExperimentConfig) -> ExperimentConfig:
    return replace(tiny_config, train=replace(tiny_config.train, epochs=2, patience=10))


@pytest.fixture(scope="module")
def two_processes(config: ExperimentConfig, tiny_data_dir: Path, tmp_path_factory) -> Path:
    """The output folder of :func:`_two_process_runs` on two gloo processes, as `--nproc 2`."""
    out = tmp_path_factory.mktemp("ddp")
    sharded = out / "sharded"
    simulate = ["simulate", "--config", TINY, "--out", str(sharded), "--shard-lists", "200"]
    assert main([*simulate, "--quiet"]) == 0
    args = (config, tiny_data_dir, sharded, out)
    distributed.launch(2, _two_process_runs, *args, backend="gloo")
    return out


def test_two_processes_match_one_on_the_same_global_batch(
    two_processes: Path, config: ExperimentConfig, tiny_data_dir: Path, tmp_path: Path
) -> None:
    ranks = [torch.load(two_processes / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["no_dropout"]["history"] == ranks[1]["no_dropout"]["history"]
    assert ranks[0]["straight"]["history"] == ranks[1]["straight"]["history"]
    no_dropout = replace(config, model=replace(config.model, dropout=0.0))
    single = _fit(no_dropout, tiny_data_dir, tmp_path / "single")
    for one, two in zip(single["history"], ranks[0]["no_dropout"]["history"], strict=True):
        assert one.keys() == two.keys()
        for key in one:
            assert two[key] == pytest.approx(one[key], rel=TOLERANCE), key
    p = ranks[0]["no_dropout"]["p"]
    torch.testing.assert_close(p, single["p"], rtol=0, atol=TOLERANCE)


def test_resume_on_two_processes_is_exact(
    two_processes: Path, config: ExperimentConfig, tiny_data_dir: Path
) -> None:
    for rank in (0, 1):
        runs = torch.load(two_processes / f"rank{rank}.pt")
        assert runs["resumed"]["history"] == runs["straight"]["history"]
        for name, weight in runs["straight"]["weights"].items():
            torch.testing.assert_close(runs["resumed"]["weights"][name], weight, rtol=0, atol=0)
    run = two_processes / "resumed"
    # Rank 0 alone wrote there, and left no temporary file.
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt",
        "metrics.json",
        "training_curve.png",
    ]
    assert len(load_checkpoint(run / "checkpoint.pt")["rng"]) == 2
    with pytest.raises(ValueError, match="RNG states of 2 process"):
        _fit(config, tiny_data_dir, run, resume=True)


def test_train_streams_shards_on_two_processes(two_processes: Path) -> None:
    assert len(list((two_processes / "sharded" / "lists_train").glob("part-*.parquet"))) == 3
    metrics = json.loads((two_processes / "stream" / "metrics.json").read_text())
    assert len(metrics["history"]) == 2
    assert "wrote checkpoint" in (two_processes / "stdout0.txt").read_text()
    assert (two_processes / "stdout1.txt").read_text() == ""  # rank 0 alone reports


def test_nproc_under_a_process_group_is_refused(
    tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["train", "--config", TINY, "--data", str(tiny_data_dir), "--out", str(tmp_path)]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RANK", "0")  # as torchrun sets them
        env.setenv("WORLD_SIZE", "1")
        assert main([*args, "--base", "--nproc", "2"]) == 2
    assert "already in a process group" in capsys.readouterr().err


def test_gpu_path_pieces_run_on_cpu(
    config: ExperimentConfig, tiny_data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """What of `--device cuda --precision bf16` a CPU can check: the backend and device each
    process picks, and bf16 training (a bf16 copy, fp32 master weights) through validation."""
    assert distributed.backend_for("cuda") == "nccl"
    assert distributed.backend_for("cpu") == "gloo"
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    assert distributed.device("cuda") == torch.device("cuda", 3)
    assert distributed.device("cpu") == torch.device("cpu")
    monkeypatch.undo()
    bf16 = replace(config, train=replace(config.train, epochs=1, precision="bf16"))
    history = _fit(bf16, tiny_data_dir, tmp_path)["history"]
    assert all(np.isfinite(value) for value in history[0].values())
