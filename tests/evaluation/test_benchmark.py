"""`prm benchmark`: suite configs, the quick run of every suite (each model and loader on real
data), and the RESULTS.md section bookkeeping."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from prm.benchmark import (
    AblationConfig,
    BenchmarkConfig,
    load_benchmark_config,
    plan_runs,
    plan_tables,
    run_benchmark,
    update_results_markdown,
)
from prm.config import ConfigError, TrainConfig
from prm.data.files import default_data_dir

ROOT = Path(__file__).resolve().parents[2]
SUITES = {"mq2008": "mq2008", "ml100k": "ml-100k", "lgbm_rank": "lgbm_rank"}


def suite_path(suite: str) -> Path:
    return ROOT / "configs" / f"bench_{suite}.yaml"


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_suite_configs_load_full_and_quick(suite: str) -> None:
    full = load_benchmark_config(suite_path(suite))
    quick = load_benchmark_config(suite_path(suite), quick=True)
    assert len(full.seeds) >= 3 and quick.seeds == (0,)
    assert quick.train.epochs == 1 and quick.max_lists is not None
    assert quick.model == full.model  # quick overrides merge, they do not reset other keys


def test_mq2008_plan_covers_the_paper_tables() -> None:
    config = load_benchmark_config(suite_path("mq2008"))
    tables = plan_tables(config)
    main = [t for t in tables if not t.ablation]
    assert [t.ranker for t in main] == ["lambdamart", "linear_pairwise", "pointwise_dnn"]
    names = [row.name for row in main[0].rows]
    assert names == ["initial", "dlcm", "seq2slate", "setrank", "gsf", "midnn", "prm_base"]
    losses = len(config.losses)
    assert losses == 3
    # Every row but Seq2Slate is trained once per candidate loss. The ablations' default row is
    # the main table's PRM-BASE and the loss table's rows are its candidates: trained once.
    per_fold_seed = 3 * (5 * losses + 1) + 5 * losses
    assert len(plan_runs(config, tables)) == per_fold_seed * 5 * len(config.seeds)


def test_losses_need_a_comparable_selection_metric(tmp_path: Path) -> None:
    base = {"name": "x", "dataset": "mq2008", "folds": (1,), "initial_rankers": ("lambdamart",)}
    with pytest.raises(ConfigError, match="two or more"):
        BenchmarkConfig(**base, losses=("list_mle",))
    with pytest.raises(ConfigError, match="do not compare"):
        BenchmarkConfig(
            **base,
            losses=("list_mle", "softmax_ce"),
            train=TrainConfig(selection_metric="loss"),
        )


def test_unknown_and_inconsistent_keys_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text("name: x\ndataset: mq2008\nfolds: [1]\ninitial_rankers: [lambdamart]\n")
    assert load_benchmark_config(path).folds == (1,)
    for text in [
        "name: x\ndataset: mq2008\nfolds: [1]\ninitial_rankers: [lambdamart]\nepochs: 3\n",
        "name: x\ndataset: mq2008\nfolds: [1]\ninitial_rankers: [lambdamart]\nquick: {typo: 1}\n",
        "name: x\ndataset: mq2008\nfolds: [6]\ninitial_rankers: [lambdamart]\n",
        "name: x\ndataset: ml-100k\ninitial_rankers: [lambdamart]\n",
        "name: x\ndataset: lgbm_rank\nfolds: [1]\ninitial_rankers: [lambdamart]\n",
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError):
            load_benchmark_config(path, quick=True)


def test_prm_ablation_needs_users() -> None:
    with pytest.raises(ConfigError, match="PRM needs users"):
        BenchmarkConfig(
            name="x",
            dataset="mq2008",
            folds=(1,),
            initial_rankers=("lambdamart",),
            ablations=(AblationConfig(title="t", base="prm"),),
        )


def test_results_markdown_replaces_only_its_own_section(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    update_results_markdown(path, "a", "## a\nfirst\n")
    update_results_markdown(path, "b", "## b\nonly\n")
    update_results_markdown(path, "a", "## a\nsecond\n")
    text = path.read_text()
    assert "second" in text and "first" not in text and text.count("## b\nonly") == 1
    assert text.index("## a") < text.index("## b")


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_quick_suite_runs_every_model(suite: str, tmp_path: Path) -> None:
    if not (default_data_dir() / SUITES[suite]).is_dir():
        pytest.skip(f"real data not found at {default_data_dir() / SUITES[suite]} ($PRM_DATA_DIR)")
    config = load_benchmark_config(suite_path(suite), quick=True)
    results = run_benchmark(
        config,
        out_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        command=f"prm benchmark {suite} --quick",
        quick=True,
        progress=False,
    )
    main = results["tables"][0]
    expected = {"initial", *config.baselines, "prm_base"} | ({"prm"} if config.has_pv else set())
    assert set(main["rows"]) == expected
    for table in results["tables"]:
        for row in table["rows"].values():
            assert all(math.isfinite(row[m]) for m in ("p@5", "map@10", "ndcg@10"))
    assert 0 < main["lists_with_relevant"] <= main["lists"]
    if config.losses:  # each row's loss is its candidate of best mean validation value
        for name, row in main["rows"].items():
            valid = {}
            for record in results["run_records"].values():
                if record["row"] == name and record["ranker"] == main["ranker"]:
                    valid.setdefault(record["loss"], []).append(record["best_valid"])
            if len(valid) > 1:
                assert row["loss"] == max(valid, key=lambda loss: sum(valid[loss]))
    written = json.loads((tmp_path / "out" / "results" / f"{suite}.json").read_text())
    assert written["tables"][0]["rows"].keys() == main["rows"].keys()
    assert (tmp_path / "out" / "figures" / f"{suite}.png").stat().st_size > 0
    section = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "MAP convention 'prm'" in section and "excluded" in section
