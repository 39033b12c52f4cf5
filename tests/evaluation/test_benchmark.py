"""`prm benchmark`: suite configs, the quick run of every suite (each model and loader on real
data), and the RESULTS.md section bookkeeping."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from prm.config import ConfigError, PRMConfig, TrainConfig, from_dict
from prm.data.batch import ListDataset
from prm.data.click_simulation import ClickSimulation, examination_by_rank
from prm.data.files import default_data_dir
from prm.experiments.config import (
    AblationConfig,
    BenchmarkConfig,
    ExaminationEstimator,
    RankingFolder,
    load_benchmark_config,
)
from prm.experiments.plan import plan_ablations, plan_runs, plan_tables
from prm.experiments.report import update_results_markdown
from prm.experiments.run import ClickLogs, run_benchmark
from prm.experiments.summarize import choose, label_gain_shares

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
    assert names[:2] == ["initial", "full_data"]
    assert names[2:] == ["dlcm", "seq2slate", "setrank", "gsf", "midnn", "prm_base"]
    budget = config.tuning.budget
    assert budget == 8 and all(len(row.candidates) == budget for row in main[0].rows[2:])
    # Every re-ranker's 8 candidates on 3 initial rankers x 5 folds, on the tuning seed only.
    candidates = plan_runs(config, tables, config.tuning.seeds)
    assert len(candidates) == 3 * 6 * budget * 5 * len(config.tuning.seeds)
    assert {run.seed for run in candidates.values()} == set(config.tuning.seeds)
    chosen = [replace(t, rows=tuple(row.trained()[-1] for row in t.rows)) for t in tables]
    (ablation,) = plan_ablations(config, chosen)
    base = next(row for row in chosen[0].rows if row.name == "prm_base")
    assert ablation.rows[0].model == base.model and ablation.rows[0].train == base.train
    assert ablation.rows[1].model == {**base.model, "use_pe": False}


def tuned(**grids) -> dict:
    base = {
        "name": "x",
        "dataset": {"path": "mq2008", "folds": [1]},
        "initial_rankers": ["lambdamart"],
        "baselines": ["midnn", "seq2slate"],
    }
    return {**base, "tuning": {"grids": grids}}


def test_tuning_grids_are_equal_in_size_and_checked_when_loaded() -> None:
    midnn = {"dropout": [0.1, 0.3], "loss": ["softmax_ce", "list_mle"]}
    seq2slate = {"d_hidden": [16, 32], "lr": [0.001, 0.003]}
    prm = {"dropout": [0.1, 0.2], "use_pe": [True, False]}
    config = from_dict(BenchmarkConfig, tuned(midnn=midnn, seq2slate=seq2slate, prm=prm))
    assert config.tuning.budget == 4
    (table,) = plan_tables(config)
    row = next(r for r in table.rows if r.name == "prm_base")
    assert [c.choice for c in row.candidates][1] == {"dropout": 0.1, "use_pe": False}
    assert row.candidates[2].model["dropout"] == 0.2 and row.candidates[2].train.lr == 0.001
    refused = {
        "same number": tuned(midnn=midnn, seq2slate={"d_hidden": [16, 32]}, prm=prm),
        "one grid per re-ranker": tuned(midnn=midnn, prm=prm),
        "unknown field": tuned(midnn=midnn, seq2slate=seq2slate, prm={"width": [1, 2, 3, 4]}),
        "has its own loss": tuned(
            midnn=midnn, seq2slate={"loss": ["softmax_ce", "list_mle"], "lr": [1, 2]}, prm=prm
        ),
        "tuning.grids.prm.dropout": tuned(
            midnn=midnn, seq2slate=seq2slate, prm={"dropout": [0.1, 2.0], "lr": [1e-3, 1e-2]}
        ),
        "tuning.grids.midnn.lr": tuned(
            midnn={"lr": ["fast", 1e-3], "loss": ["list_mle", "softmax_ce"]},
            seq2slate=seq2slate,
            prm=prm,
        ),
    }
    for message, data in refused.items():
        with pytest.raises(ConfigError, match=message):
            from_dict(BenchmarkConfig, data)


def test_choice_reads_validation_only() -> None:
    """The chosen candidate has the best mean validation value over folds and tuning seeds,
    whatever its test values."""
    data = tuned(
        midnn={"dropout": [0.1, 0.3]}, seq2slate={"d_hidden": [16, 32]}, prm={"lr": [1e-3, 3e-3]}
    )
    config = from_dict(BenchmarkConfig, {**data, "dataset": {"path": "mq2008", "folds": [1, 2]}})
    (table,) = plan_tables(config)
    records = {}
    for key, run in plan_runs(config, [table], config.tuning.seeds).items():
        second = run.row.choice in ({"dropout": 0.3}, {"d_hidden": 32}, {"lr": 3e-3})
        valid = 0.7 if second == (run.fold == "Fold1") else 0.6  # second wins on Fold1 only
        valid += 0.05 * second  # ... and on the mean over folds
        records[key] = {"best_valid": valid, "test": {"ndcg@10": [1.0 - valid]}}
    chosen = choose(config, table, {}, records)
    for row in chosen.rows[2:]:
        assert row.choice in ({"dropout": 0.3}, {"d_hidden": 32}, {"lr": 3e-3}), row.choice


MQ2008_FOLD1 = RankingFolder("mq2008", folds=(1,))


def test_losses_need_a_comparable_selection_metric(tmp_path: Path) -> None:
    base = {"name": "x", "dataset": MQ2008_FOLD1, "initial_rankers": ("lambdamart",)}
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
    head = "name: x\ndataset: {path: mq2008, folds: [1]}\ninitial_rankers: [lambdamart]\n"
    path.write_text(head)
    assert load_benchmark_config(path).dataset.folds == (1,)
    for text in [
        head + "epochs: 3\n",
        head + "quick: {typo: 1}\n",
        head.replace("[1]", "[1, 1]"),
        head.replace("[1]", "[0]"),
        head + "losses: [list_mle, softmax_ce]\ntuning: {}\n",
        "name: x\ndataset: ml-100k\ninitial_rankers: [lambdamart]\n",
        "name: x\ndataset: mq2008\ninitial_rankers: [lambdamart]\n",
        head.replace("folds: [1]", "query: x"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError):
            load_benchmark_config(path, quick=True)


def test_prm_ablation_needs_users() -> None:
    with pytest.raises(ConfigError, match="PRM needs users"):
        BenchmarkConfig(
            name="x",
            dataset=MQ2008_FOLD1,
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
    assert set(main["rows"]) == expected | ({"full_data"} if config.letor else set())
    for table in results["tables"]:
        for row in table["rows"].values():
            assert all(math.isfinite(row[m]) for m in ("p@5", "map@10", "ndcg@10"))
    assert 0 < main["lists_with_relevant"] <= main["lists"]
    for name, row in main["rows"].items():  # the candidate of best mean validation value
        valid = {}
        for record in results["run_records"].values():
            if record["row"] == name and record["ranker"] == main["ranker"]:
                valid.setdefault(json.dumps(record["choice"]), []).append(record["best_valid"])
        if len(valid) > 1:
            best = max(valid, key=lambda choice: np.mean(valid[choice]))
            assert row["chosen"] == json.loads(best)
    if config.letor:
        assert_full_query_ndcg_is_trec_eval(main, Path(results["trec_files"]) / main["ranker"])
    written = json.loads((tmp_path / "out" / "results" / f"{suite}.json").read_text())
    assert written["tables"][0]["rows"].keys() == main["rows"].keys()
    assert (tmp_path / "out" / "figures" / f"{suite}.png").stat().st_size > 0
    section = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "MAP convention 'prm'" in section and "excluded" in section


def assert_full_query_ndcg_is_trec_eval(table: dict, folder: Path) -> None:
    """trec_eval's ndcg_cut_10 of each row's run file over the qrels, averaged over the queries
    with a relevant document, is the table's full-query NDCG@10 (one seed: the run's own)."""
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels").read_text().splitlines():
        qid, _, doc, label = line.split()
        qrels.setdefault(qid, {})[doc] = int(float(label))
    relevant = [qid for qid, labels in qrels.items() if max(labels.values()) > 0]
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10"})
    for name, row in table["rows"].items():
        run: dict[str, dict[str, float]] = {}
        for line in (folder / f"{name}.run").read_text().splitlines():
            qid, _, doc, _, score, _ = line.split()
            run.setdefault(qid, {})[doc] = float(score)
        per_query = evaluator.evaluate(run)
        trec = np.mean([per_query[q]["ndcg_cut_10"] if q in per_query else 0.0 for q in relevant])
        assert trec == pytest.approx(row["full_ndcg@10"], abs=1e-9), name


# ----------------------------------------------------------------------------- clicks (ULTR)


def tiny_click_config(**fields) -> BenchmarkConfig:
    estimator = ExaminationEstimator(
        train=TrainConfig(epochs=20, batch_size=16, lr=0.03, patience=20, selection_metric="loss")
    )
    settings = {
        "name": "ultr",
        "dataset": MQ2008_FOLD1,
        "initial_rankers": ("lambdamart",),
        "list_length": 6,
        "baselines": (),
        "model": PRMConfig(d_model=8, n_heads=1, n_blocks=1, d_ff=16, dropout=0.0),
        "clicks": ClickSimulation(sessions=50),
        "estimator": estimator,
    }
    return BenchmarkConfig(**{**settings, **fields})


def ranked_splits(n: int = 80, length: int = 6) -> dict[str, ListDataset]:
    """Lists whose grade (0-2) follows the first feature and whose initial order follows a
    noisy copy of it, as a ranker's lists do: rank and relevance are correlated."""
    rng = np.random.default_rng(0)
    splits = {}
    for split in ("train", "valid", "test"):
        features = rng.normal(size=(n, length, 3)).astype(np.float32)
        order = np.argsort(-(features[..., 0] + rng.normal(size=(n, length))), axis=1)
        features = np.take_along_axis(features, order[..., None], axis=1)
        grades = np.digitize(features[..., 0], [0.3, 1.2]).astype(np.float32)
        splits[split] = ListDataset(
            features=features,
            pv=np.zeros((n, length, 0), np.float32),
            mask=np.ones((n, length), bool),
            labels=grades,
            positions=np.broadcast_to(np.arange(length), (n, length)).copy(),
            user_ids=np.zeros(n, np.int64),
            list_ids=np.arange(n),
            item_ids=np.zeros((n, length), np.int64),
        )
    return splits


def test_click_suite_config_and_plan() -> None:
    config = load_benchmark_config(suite_path("ultr_mq2008"))
    quick = load_benchmark_config(suite_path("ultr_mq2008"), quick=True)
    assert len(config.seeds) >= 3 and config.dataset.folds == (1, 2, 3, 4, 5)
    assert config.clicks == quick.clicks and quick.max_lists is not None
    assert {"naive", "ips_known", "ips_estimated", "labels"} <= set(config.clicks.targets)
    (table,) = plan_tables(config)
    assert table.clicks and [row.name for row in table.rows] == ["initial", *config.clicks.targets]
    assert [row.trained()[0].target for row in table.rows[1:]] == list(config.clicks.targets)
    runs = plan_runs(config, [table], config.seeds)
    assert len(runs) == len(config.clicks.targets) * len(config.losses) * 5 * len(config.seeds)
    with pytest.raises(ConfigError, match="baselines"):
        tiny_click_config(baselines=("dlcm",))


def test_click_rows_train_and_select_on_clicks_only(tmp_path: Path) -> None:
    """Train and valid labels of a click row are the simulated click rates (raw or IPS);
    test keeps the expert labels. The PAL tower's estimate decays with the rank."""
    splits = ranked_splits()
    config = tiny_click_config()
    logs = ClickLogs(config, "lambdamart", "Fold1", splits, tmp_path)
    known = examination_by_rank(6, config.clicks.eta)
    estimate = np.array(logs.estimate(seed=0)["examination"])  # (L,), rank 1 first
    assert estimate[0] == 1.0 and estimate[1] < 0.85 and estimate[5] < estimate[1]
    for split in ("train", "valid"):
        rates, positions = logs.rates[split], splits[split].positions
        assert rates.max() <= 1 and (rates > 0).any()
        naive = logs.training_splits("naive", seed=0)[split].labels
        np.testing.assert_array_equal(naive, rates)
        ips = logs.training_splits("ips_known", seed=0)[split].labels
        np.testing.assert_allclose(ips, rates / known[positions], rtol=1e-6)
        ips = logs.training_splits("ips_estimated", seed=0)[split].labels
        np.testing.assert_allclose(ips, rates / estimate[positions], rtol=1e-5)
        assert logs.training_splits("labels", seed=0)[split] is splits[split]
    for target in ("naive", "ips_known", "ips_estimated"):
        assert logs.training_splits(target, seed=0)["test"] is splits["test"]
    # The diagnostics: p(y) itself, and the grades with their ties broken at random.
    grades = splits["train"].labels
    probability = logs.training_splits("click_probability", seed=0)["train"].labels
    np.testing.assert_allclose(probability, 0.1 + 0.9 * (2**grades - 1) / 3, rtol=1e-6)
    untied = logs.training_splits("labels_random_ties", seed=0)["train"].labels
    assert (np.floor(untied) == grades).all()
    assert all(len(np.unique(row)) == len(row) for row in untied)  # no ties within a list


def test_label_gain_shares() -> None:
    def runs(*means: float) -> list[dict[str, np.ndarray]]:
        return [{"ndcg@10": np.array([m - 0.1, m + 0.1])} for m in means]

    shares = label_gain_shares(
        {"initial": runs(0.5), "naive": runs(0.5, 0.52), "labels": runs(0.58, 0.62)}
    )
    assert shares["labels"][0] == pytest.approx(1.0) and shares["initial"] == (0.0, 0.0)
    assert shares["naive"][0] == pytest.approx(0.1)
    assert label_gain_shares({"initial": runs(0.5), "labels": runs(0.4)}) == {}


def test_quick_click_suite(tmp_path: Path) -> None:
    if not (default_data_dir() / "mq2008").is_dir():
        pytest.skip(f"real data not found at {default_data_dir() / 'mq2008'} ($PRM_DATA_DIR)")
    config = load_benchmark_config(suite_path("ultr_mq2008"), quick=True)
    config = replace(config, max_lists=20, losses=())  # a few seconds
    results = run_benchmark(
        config,
        out_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        command="prm benchmark ultr_mq2008 --quick",
        quick=True,
        progress=False,
    )
    (table,) = results["tables"]
    assert list(table["rows"]) == ["initial", *config.clicks.targets]
    assert all(math.isfinite(row["ndcg@10"]) for row in table["rows"].values())
    assert {t["reference"] for t in table["tests"]} == {"initial", "naive"}
    assert len(table["examination"]["estimated"]) == len(table["examination"]["ranks"])
    estimated = [r for r in results["run_records"].values() if "examination_estimate" in r]
    assert {r["row"] for r in estimated} == {"ips_estimated"}
    section = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "Clicks: each training and validation list is shown" in section
    assert "Examination estimated by the PAL tower" in section


def test_a_new_letor_folder_needs_only_a_config(tmp_path: Path) -> None:
    """An svmlight folder of any feature count, outside the data folder, with qid lines and no
    validation file: `prm benchmark <config>` runs the whole suite from the config alone."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "my_set"
    folder.mkdir()
    for name, n_queries in (("train.txt", 60), ("test.txt", 12)):
        lines = []
        for q in range(n_queries):
            for _ in range(int(rng.integers(4, 15))):
                x = rng.random(7)
                label = int(x[0] + 0.3 * rng.random() > 0.9) + int(x[0] > 0.95)
                values = " ".join(f"{i + 1}:{v:.3f}" for i, v in enumerate(x))
                lines.append(f"{label} qid:{q if name == 'train.txt' else 1000 + q} {values}")
        (folder / name).write_text("\n".join(lines) + "\n")
    config = tmp_path / "my_set.yaml"
    config.write_text(
        f"name: my_set\ndataset: {{path: {folder}, valid: null}}\n"
        "initial_rankers: [linear_pairwise]\nlist_length: 8\nseeds: [0, 1]\n"
        "baselines: [midnn]\nmodel: {d_model: 8, n_heads: 1, n_blocks: 1, d_ff: 16}\n"
        "train: {epochs: 2, batch_size: 8}\n"
        "tuning:\n  grids:\n    prm: {lr: [0.001, 0.01]}\n    midnn: {dropout: [0.0, 0.2]}\n"
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prm.cli.main",
            "benchmark",
            str(config),
            "--quiet",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (table,) = json.loads((out / "results" / "my_set.json").read_text())["tables"]
    assert list(table["rows"]) == ["initial", "full_data", "midnn", "prm_base"]
    assert table["rows"]["midnn"]["chosen"]["dropout"] in (0.0, 0.2)
    assert table["rows"]["prm_base"]["seeds"] == 2
    assert "configuration chosen on valid" in done.stdout
