"""From per-list records to a table: mean ± std over seeds, paired tests on per-list values
averaged over seeds, choices (loss, best baseline) made on validation values only."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from prm.config import EvalConfig, ExperimentConfig
from prm.data.batch import ListDataset
from prm.data.click_simulation import examination_by_rank
from prm.evaluation.evaluate import evaluate_scores, expected_clicks, per_list_metrics
from prm.evaluation.metrics import lists_with_click
from prm.evaluation.significance import mean_std, paired_test
from prm.experiments.config import ESTIMATED_RANKS, HEADLINE, OWN_LOSS, TESTED, BenchmarkConfig
from prm.experiments.plan import Row, Run, Table, folds


def metric_names(evaluate: EvalConfig) -> list[str]:
    return [f"{m}@{k}" for m in ("p", "map", "ndcg") for k in evaluate.ks]


def _row_runs(
    config: BenchmarkConfig,
    table: Table,
    row: Row,
    lists: dict[str, dict[str, ListDataset]],
    records: dict[str, dict[str, Any]],
) -> list[dict[str, np.ndarray]]:
    """Per seed: per-list test metrics of the lists with a relevant item, all folds joined."""
    if row.kind is None:  # the initial ranking: the same for every seed
        per_fold = []
        for fold in folds(config):
            test = lists[f"{table.ranker}/{fold}"]["test"]
            scores = -test.positions.astype(np.float32)  # rank 0 first
            per_fold.append(per_list_metrics(scores, test, config.evaluate))
        return [_join(config, table, per_fold, lists)]
    out = []
    for seed in config.seeds:
        per_fold = [
            {
                k: np.asarray(v)
                for k, v in records[Run(table.ranker, fold, seed, row).key(config)]["test"].items()
            }
            for fold in folds(config)
        ]
        out.append(_join(config, table, per_fold, lists))
    return out


def _join(
    config: BenchmarkConfig,
    table: Table,
    per_fold: list[dict[str, np.ndarray]],
    lists: dict[str, dict[str, ListDataset]],
) -> dict[str, np.ndarray]:
    """Concatenate folds, keeping the lists with a relevant item."""
    keep = [
        lists_with_click(
            lists[f"{table.ranker}/{f}"]["test"].labels, lists[f"{table.ranker}/{f}"]["test"].mask
        )
        for f in folds(config)
    ]
    return {
        name: np.concatenate([run[name][k] for run, k in zip(per_fold, keep, strict=True)])
        for name in per_fold[0]
    }


def _valid_value(
    config: BenchmarkConfig,
    table: Table,
    row: Row,
    lists: dict[str, dict[str, ListDataset]],
    records: dict[str, dict[str, Any]],
) -> float | None:
    """The validation selection value (at the selected epoch) averaged over folds and seeds;
    for the initial ranking its value on the validation lists (None when selecting on loss, and
    in a click table, where each row selects on its own kind of validation clicks)."""
    metric = config.train.selection_metric
    if row.kind is not None:
        return float(
            np.mean(
                [
                    records[Run(table.ranker, fold, seed, row).key(config)]["best_valid"]
                    for fold in folds(config)
                    for seed in config.seeds
                ]
            )
        )
    if metric == "loss" or table.clicks:
        return None
    values = []
    for fold in folds(config):
        valid = lists[f"{table.ranker}/{fold}"]["valid"]
        scores = -valid.positions.astype(np.float32)  # rank 0 first
        values.append(evaluate_scores(scores, valid, config.evaluate)[metric])
    return float(np.mean(values))


def select_losses(
    config: BenchmarkConfig,
    table: Table,
    lists: dict[str, dict[str, ListDataset]],
    records: dict[str, dict[str, Any]],
) -> Table:
    """``table`` with each row that has loss candidates replaced by the candidate of best mean
    validation value, so the choice never sees the test lists."""

    def best(row: Row) -> Row:
        if not row.candidates:
            return row
        values = [_valid_value(config, table, c, lists, records) for c in row.candidates]
        return row.candidates[int(np.argmax(values))]

    return replace(table, rows=tuple(best(row) for row in table.rows))


def _loss_label(row: Row) -> str | None:
    if row.train is None:
        return None
    return "own (step-wise)" if row.kind in OWN_LOSS else row.train.loss


def summarize_table(
    config: BenchmarkConfig,
    table: Table,
    lists: dict[str, dict[str, ListDataset]],
    records: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Mean ± std over seeds of each row and metric, and the paired t-tests of the table."""
    table = select_losses(config, table, lists, records)
    per_row = {row.name: _row_runs(config, table, row, lists, records) for row in table.rows}
    row_spec = {row.name: row for row in table.rows}
    rows: dict[str, dict[str, Any]] = {}
    for name, runs in per_row.items():
        row: dict[str, Any] = {"seeds": len(runs)}
        for metric in metric_names(config.evaluate):
            row[metric], row[f"{metric}_std"] = mean_std(np.array([r[metric].mean() for r in runs]))
        row["valid"] = _valid_value(config, table, row_spec[name], lists, records)
        row["loss"] = _loss_label(row_spec[name])
        rows[name] = row
    names = list(per_row)
    if table.ablation:
        references = {"first": names[0]}
    elif table.clicks:
        references = {"initial": "initial"} | ({"naive": "naive"} if "naive" in names else {})
    else:
        baselines = [n for n in names if n in config.baselines]
        sign = -1.0 if config.train.selection_metric == "loss" else 1.0  # loss: lower is better
        best = max(baselines, key=lambda n: sign * rows[n]["valid"]) if baselines else None
        references = {"initial": "initial"} | ({"best_baseline": best} if best else {})
    tests_out = []
    for label, reference in references.items():
        pairs = [(name, reference) for name in names if name != reference]
        for metric in TESTED:
            for test in pairwise_tests(per_row, pairs, key=metric):
                rows[test["a"]][f"p_{metric}_vs_{label}"] = test["t_pvalue"]
                tests_out.append({**test, "reference": label})
    n_relevant = len(next(iter(per_row.values()))[0][HEADLINE])
    n_lists = sum(len(lists[f"{table.ranker}/{f}"]["test"]) for f in folds(config))
    summary = {
        "title": table.title,
        "ranker": table.ranker,
        "ablation": table.ablation,
        "clicks": table.clicks,
        "references": references,
        "lists": n_lists,
        "lists_with_relevant": n_relevant,
        "rows": rows,
        "tests": tests_out,
    }
    if table.clicks:
        for name, (share, std) in label_gain_shares(per_row).items():
            rows[name]["label_gain_share"], rows[name]["label_gain_share_std"] = share, std
        if "ips_estimated" in row_spec:
            summary["examination"] = _estimated_examination(
                config, table, row_spec["ips_estimated"], records
            )
    return summary


def label_gain_shares(
    per_row: dict[str, list[dict[str, np.ndarray]]],
) -> dict[str, tuple[float, float]]:
    """Per row, its NDCG@10 gain over the initial ranking as a share of the ``labels`` row's
    mean gain: mean and std over seeds (``per_row``: per seed, per-list test metrics). Empty
    without an ``initial`` and a ``labels`` row, or when the label-trained gain is not positive."""
    if "initial" not in per_row or "labels" not in per_row:
        return {}
    initial = per_row["initial"][0][HEADLINE].mean()
    label_gain = np.mean([run[HEADLINE].mean() for run in per_row["labels"]]) - initial
    if label_gain <= 0:
        return {}
    return {
        name: mean_std(np.array([(run[HEADLINE].mean() - initial) / label_gain for run in runs]))
        for name, runs in per_row.items()
    }


def _estimated_examination(
    config: BenchmarkConfig, table: Table, row: Row, records: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The examination the PAL tower estimated at ``ESTIMATED_RANKS`` (mean and std over folds
    and seeds) beside the true (1 / k)^eta."""
    ranks = [k for k in ESTIMATED_RANKS if k <= config.list_length]
    estimates = np.array(
        [
            records[Run(table.ranker, fold, seed, row).key(config)]["examination_estimate"][
                "examination"
            ]
            for fold in folds(config)
            for seed in config.seeds
        ]
    )[:, np.array(ranks) - 1]
    true = examination_by_rank(config.list_length, config.clicks.eta)[np.array(ranks) - 1]
    return {
        "ranks": ranks,
        "estimated": estimates.mean(axis=0).tolist(),
        "estimated_std": estimates.std(axis=0).tolist(),
        "true": true.tolist(),
    }


def measure(
    scores: dict[str, np.ndarray], dataset: ListDataset, config: ExperimentConfig, click_model
) -> dict[str, dict[str, np.ndarray]]:
    """Per-list expected clicks and ranking metrics of every scored ordering."""
    out = {}
    for name, model_scores in scores.items():
        per_list = per_list_metrics(model_scores, dataset, config.evaluate)
        if click_model is not None:
            per_list["expected_clicks"] = expected_clicks(click_model, dataset, model_scores)
        out[name] = per_list
    return out


def compare(per_model_seeds: dict[str, list[dict[str, np.ndarray]]], dataset: ListDataset) -> dict:
    """Mean ± std over seeds, share of the oracle's gain, paired tests across test lists.

    Ranking metrics are averaged over lists with a click; expected clicks over all lists.
    Paired tests use each list's value averaged over seeds.
    """
    clicked = lists_with_click(dataset.labels, dataset.mask)
    per_list_mean = {
        name: {k: np.mean([run[k] for run in runs], axis=0) for k in runs[0]}
        for name, runs in per_model_seeds.items()
    }

    def list_mean(run: dict[str, np.ndarray], key: str) -> float:
        values = run[key]
        return float(values.mean() if key == "expected_clicks" else values[clicked].mean())

    initial_clicks = list_mean(per_list_mean["initial"], "expected_clicks")
    oracle_gain = list_mean(per_list_mean["oracle"], "expected_clicks") - initial_clicks
    models: dict[str, dict[str, float]] = {}
    for name, runs in per_model_seeds.items():
        row: dict[str, float] = {"seeds": len(runs)}
        for key in runs[0]:
            mean, std = mean_std(np.array([list_mean(run, key) for run in runs]))
            row[key], row[f"{key}_std"] = mean, std
        gains = [
            100 * (list_mean(run, "expected_clicks") - initial_clicks) / oracle_gain for run in runs
        ]
        row["oracle_gain_pct"], row["oracle_gain_pct_std"] = mean_std(np.array(gains))
        row["oracle_gain_pct_per_seed"] = [round(g, 2) for g in gains]
        if name != "initial":
            test = paired_test(
                per_list_mean[name]["expected_clicks"], per_list_mean["initial"]["expected_clicks"]
            )
            row["p_value_vs_initial"] = test["t_pvalue"]
        models[name] = row
    return {"models": models, "lists": int(len(clicked)), "lists_with_click": int(clicked.sum())}


def expected_figures(
    measured: dict[str, dict[str, Any]], expect: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each figure a config expects (row -> metric -> [low, high]) beside the measured value;
    ``ok`` when it lies within the range (a row or metric not measured is not ok)."""
    checks = []
    for row, metrics in expect.items():
        for metric, (low, high) in metrics.items():
            value = measured.get(row, {}).get(metric)
            ok = value is not None and low <= value <= high
            checks.append(
                {"row": row, "metric": metric, "low": low, "high": high, "value": value, "ok": ok}
            )
    return checks


def pairwise_tests(
    per_model_seeds: dict[str, list[dict[str, np.ndarray]]],
    pairs: list[tuple[str, str]],
    key: str = "expected_clicks",
) -> list[dict[str, Any]]:
    """Paired t-tests across test lists (values averaged over seeds) for the claims we make."""
    out = []
    for better, worse in pairs:
        a = np.mean([run[key] for run in per_model_seeds[better]], axis=0)
        b = np.mean([run[key] for run in per_model_seeds[worse]], axis=0)
        test = paired_test(a, b)
        out.append({"a": better, "b": worse, "metric": key, **test})
    return out
