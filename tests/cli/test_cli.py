"""The `prm` commands end to end on the tiny config, and their errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from prm.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")


def test_simulate_pretrain_train_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, pv, run = tmp_path / "data", tmp_path / "pv", tmp_path / "run"
    assert main(["simulate", "--config", TINY, "--out", str(data), "--quiet"]) == 0
    assert (
        main(["pretrain", "--config", TINY, "--data", str(data), "--out", str(pv), "--quiet"]) == 0
    )
    assert {p.name for p in pv.iterdir()} >= {"ctr_model.pt", "pv_train.npy", "pv_test.npy"}
    args = ["--config", TINY, "--data", str(data), "--pv", str(pv), "--quiet"]
    evaluator = tmp_path / "evaluator"
    assert main(["train", *args, "--model", "generator_evaluator", "--out", str(evaluator)]) == 0
    # The demo's way: epochs chosen by the evaluator's estimate, the tower at its examination.
    as_demo = yaml.safe_load(Path(TINY).read_text())
    as_demo["train"]["selection_metric"] = "estimated_clicks"
    as_demo["model"]["position_bias"] = "evaluator"
    demo_config = tmp_path / "as_demo.yaml"
    demo_config.write_text(yaml.safe_dump(as_demo))
    args = ["--config", str(demo_config), *args[2:]]
    assert main(["train", *args, "--out", str(run)]) == 2  # it needs the evaluator
    assert main(["train", *args, "--evaluator", str(evaluator), "--out", str(run)]) == 0
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert all("valid_estimated_clicks" in row for row in history)
    assert main(["evaluate", *args, "--run", str(run)]) == 0
    metrics = json.loads((run / "eval_test.json").read_text())
    assert {"ndcg@10", "map@10", "p@5", "expected_clicks"} <= metrics.keys()
    assert "ndcg@10" in capsys.readouterr().out

    # Off-policy estimates from the exploration bucket, graded by the truth beside them.
    offpolicy = ["evaluate", *args, "--run", str(run), "--offpolicy", "--bootstrap", "50"]
    assert main([*offpolicy, "--evaluator", str(evaluator)]) == 0
    report = json.loads((run / "offpolicy.json").read_text())
    assert report["lists"] == 200 and report["uniform_bucket"]
    for name in ("dm_evaluator", "dm_pbm", "ips", "snips", "pi", "snpi", "rank_ips", "dr"):
        estimate = report["estimates"][name]
        assert estimate["low"] <= estimate["value"] <= estimate["high"], name
    assert "truth (simulator)" in capsys.readouterr().out

    # Without a bucket: a clear error, and nothing written.
    no_bucket = tmp_path / "no_bucket"
    shutil.copytree(data, no_bucket)
    (no_bucket / "lists_explore.parquet").unlink()
    (run / "offpolicy.json").unlink()
    (run / "eval_test.json").unlink()
    offpolicy[offpolicy.index("--data") + 1] = str(no_bucket)
    assert main(offpolicy) == 2
    assert "no exploration bucket" in capsys.readouterr().err
    assert not (run / "offpolicy.json").exists() and not (run / "eval_test.json").exists()


def test_demo_writes_the_results_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The demo is the simulator's suite: `prm benchmark CONFIG` runs it as `prm demo` does,
    and reports the figures its config expects beside the measured ones."""
    config = yaml.safe_load(Path(TINY).read_text())
    config["expect"] = {"oracle": {"oracle_gain_pct": [99, 101]}, "prm": {"ndcg@10": [2, 3]}}
    config_path = tmp_path / "tiny_expecting.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["benchmark", str(config_path), "--out", str(tmp_path), "--quiet"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [check["ok"] for check in results["expected"]] == [True, False]
    assert list(results["models"]) == [
        "initial",
        "ctr_sort",
        "prm_base",
        "prm",
        "generator_evaluator",
        "oracle",
    ]
    for row in results["models"].values():
        assert {"expected_clicks", "oracle_gain_pct", "ndcg@10", "map@10"} <= row.keys()
    assert results["models"]["oracle"]["oracle_gain_pct"] == pytest.approx(100)
    assert results["models"]["initial"]["oracle_gain_pct"] == pytest.approx(0)
    out = capsys.readouterr().out
    assert "| PRM |" in out and "| PRM-BASE |" in out and "greedy oracle" in out
    assert "expected figures: 1 of 2 within range" in out and "<- OUTSIDE" in out


def test_a_config_with_a_malformed_expectation_is_refused(tmp_path: Path, capsys) -> None:
    config = yaml.safe_load(Path(TINY).read_text())
    config["expect"] = {"prm": {"ndcg@10": [0.9, 0.1]}}
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["demo", "--config", str(config_path), "--out", str(tmp_path / "out")]) == 2
    assert "expect.prm.ndcg@10" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_model_takes_every_registered_kind() -> None:
    from prm.cli.main import TRAINABLE_MODELS
    from prm.registry import RERANKERS

    assert set(TRAINABLE_MODELS) == set(RERANKERS) | {"prm_base"}


@pytest.mark.parametrize("kind", ["dlcm", "seq2slate", "setrank", "gsf", "midnn"])
def test_train_a_baseline_then_evaluate_it(
    kind: str, tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`prm train --model KIND` builds the kind from the config's rerankers section (its
    defaults otherwise) and checkpoints a spec that `prm evaluate` rebuilds."""
    config = yaml.safe_load(Path(TINY).read_text())
    config["rerankers"] = {kind: {"dropout": 0.0}} if kind in ("setrank", "midnn") else {}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    args = ["--config", str(config_path), "--data", str(tiny_data_dir), "--quiet"]
    assert main(["train", *args, "--model", kind, "--out", str(run)]) == 0
    spec = torch.load(run / "checkpoint.pt", weights_only=True)["model_spec"]
    assert spec["kind"] == kind and spec["d_pv"] == 0 and not spec["config"]["use_pv"]
    if kind in ("setrank", "midnn"):
        assert spec["config"]["dropout"] == 0.0
    assert main(["evaluate", *args, "--run", str(run)]) == 0
    assert json.loads((run / "eval_test.json").read_text())["ndcg@10"] > 0


def test_train_a_baseline_with_an_unknown_key_names_it(
    tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = yaml.safe_load(Path(TINY).read_text())
    config["rerankers"] = {"dlcm": {"bogus": 1}}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    args = ["--config", str(config_path), "--data", str(tiny_data_dir), "--quiet"]
    assert main(["train", *args, "--model", "dlcm", "--out", str(tmp_path / "run")]) == 2
    assert "bogus" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_without_pv_asks_for_it(tiny_data_dir: Path, tmp_path: Path, capsys) -> None:
    code = main(
        ["train", "--config", TINY, "--data", str(tiny_data_dir), "--out", str(tmp_path / "r")]
    )
    assert code == 2
    assert "--pv" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bad_data_names_the_file_and_leaves_no_output(
    tiny_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    (data / "lists_valid.parquet").write_bytes(b"PAR1 not really")
    out = tmp_path / "pv"
    assert main(["pretrain", "--config", TINY, "--data", str(data), "--out", str(out)]) == 2
    assert "lists_valid.parquet: not a readable Parquet file" in capsys.readouterr().err
    assert not out.exists()


def test_bad_config_is_rejected_by_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  n_head: 4\n")
    assert main(["simulate", "--config", str(config), "--out", str(tmp_path / "d")]) == 2
    assert "model.n_head" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_version_and_plain_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("prm ")
    for args in (["--help"], ["benchmark", "--help"], ["train", "--help"]):
        with pytest.raises(SystemExit):
            main(args)
        text = capsys.readouterr().out
        assert "``" not in text and ":mod:" not in text and "issue " not in text, args
