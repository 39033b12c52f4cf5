"""From per-list records to a table: mean ± std over seeds, paired tests on per-list values
averaged over seeds, choices (loss, best baseline) made on validation values only."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from prm.config import EvalConfig, ExperimentConfig
from prm.data.batch import ListDataset
from prm.data.click_simulation import examination_by_rank
from prm.evaluation.evaluate import expected_clicks, per_list_metrics
from prm.evaluation.metrics import lists_with_click, rank_order, ranking_metrics, summarize
from prm.evaluation.significance import mean_std, paired_test
from prm.experiments.config import ESTIMATED_RANKS, HEADLINE, OWN_LOSS, BenchmarkConfig
from prm.experiments.plan import Row, Run, Table, candidate_seeds
from prm.rankers.initial_lists import FoldLists


def metric_names(evaluate: EvalConfig, letor: bool = False) -> list[str]:
    """The metrics of a table: on the cut lists, and with ``letor`` NDCG over the full query."""
    names = [f"{m}@{k}" for m in ("p", "map", "ndcg") for k in evaluate.ks]
    return names + ([f"full_ndcg@{k}" for k in evaluate.ks] if letor else [])


def test_metrics(
    scores: np.ndarray, lists: FoldLists, evaluate: EvalConfig, split: str = "test"
) -> dict[str, np.ndarray]:
    """Per-list metrics of ``scores`` on ``split``'s lists; where the lists were cut from
    ranking queries, also ``full_ndcg@k``: NDCG over the whole query (the documents below the
    list follow it), as trec_eval's ``ndcg_cut_k`` scores the list as a run."""
    data = lists.splits[split]
    out = per_list_metrics(scores, data, evaluate)
    query_labels = lists.query_labels(split)
    if query_labels is not None:
        full = ranking_metrics(
            scores,
            data.labels,
            mask=data.mask,
            positions=data.positions,
            ks=evaluate.ks,
            ideal_labels=query_labels,
        )
        out |= {f"full_ndcg@{k}": full[f"ndcg@{k}"] for k in evaluate.ks}
    return out


def top_documents(scores: np.ndarray, lists: FoldLists, evaluate: EvalConfig) -> np.ndarray:
    """(N, max k) the test documents (rows of the test queries) at the top ranks of each list
    in the order of ``scores``; -1 below a list's end. What a run file holds."""
    data = lists.splits["test"]
    order = rank_order(scores, data.mask, data.positions)[:, : max(evaluate.ks)]
    docs = np.take_along_axis(data.item_ids, order, axis=1)
    return np.where(np.take_along_axis(data.mask, order, axis=1), docs, -1)


def row_top_documents(
    config: BenchmarkConfig,
    table: Table,
    row: Row,
    lists: dict[str, FoldLists],
    records: dict[str, dict[str, Any]],
) -> list[np.ndarray]:
    """Per fold, :func:`top_documents` of ``row`` (its first seed); the full-data ranker's are
    the top of the whole query, which it ranks itself."""
    out = []
    for fold in config.fold_names():
        unit = lists[f"{table.ranker}/{fold}"]
        test = unit.splits["test"]
        if row.kind is not None:
            key = Run(table.ranker, fold, config.seeds[0], row).key(config)
            out.append(np.asarray(records[key]["test_top"]))
        elif row.name == "full_data":
            query = unit.reference_over_queries("test")
            order = rank_order(query["scores"], query["mask"])[:, : max(config.evaluate.ks)]
            top = np.take_along_axis(query["docs"], order, axis=1)
            out.append(np.where(np.take_along_axis(query["mask"], order, axis=1), top, -1))
        else:
            out.append(top_documents(-test.positions.astype(np.float32), unit, config.evaluate))
    return out


def reference_metrics(lists: FoldLists, evaluate: EvalConfig, split: str) -> dict[str, np.ndarray]:
    """The full-data reference ranker's metrics: on the cut lists it orders their items; over
    the full query it ranks every document of the query itself."""
    out = test_metrics(lists.reference_list_scores(split), lists, evaluate, split)
    query = lists.reference_over_queries(split)
    full = ranking_metrics(
        query["scores"], query["labels"], mask=query["mask"], positions=None, ks=evaluate.ks
    )
    return out | {f"full_ndcg@{k}": full[f"ndcg@{k}"] for k in evaluate.ks}


FULL = f"full_{HEADLINE}"  # the headline metric over the full query


def fixed_metrics(
    row: Row, lists: FoldLists, evaluate: EvalConfig, split: str
) -> dict[str, np.ndarray]:
    """Per-list metrics of an untrained row: the initial ranking, or the full-data ranker."""
    if row.name == "full_data":
        return reference_metrics(lists, evaluate, split)
    data = lists.splits[split]
    return test_metrics(-data.positions.astype(np.float32), lists, evaluate, split)  # rank 0 first


def _row_runs(
    config: BenchmarkConfig,
    table: Table,
    row: Row,
    lists: dict[str, FoldLists],
    records: dict[str, dict[str, Any]],
) -> list[dict[str, np.ndarray]]:
    """Per seed: per-list test metrics of the lists with a relevant item, all folds joined."""
    units = [lists[f"{table.ranker}/{fold}"] for fold in config.fold_names()]
    if row.kind is None:  # the same for every seed
        return [_join([fixed_metrics(row, unit, config.evaluate, "test") for unit in units], units)]
    out = []
    for seed in config.seeds:
        per_fold = [
            {
                k: np.asarray(v)
                for k, v in records[Run(table.ranker, fold, seed, row).key(config)]["test"].items()
            }
            for fold in config.fold_names()
        ]
        out.append(_join(per_fold, units))
    return out


def _join(per_fold: list[dict[str, np.ndarray]], units: list[FoldLists]) -> dict[str, np.ndarray]:
    """Concatenate folds, keeping the lists with a relevant item (for full-query metrics, the
    lists whose query has one)."""
    keep = []  # per fold: (lists with a relevant item, lists whose query has one)
    for unit in units:
        test, query_labels = unit.splits["test"], unit.query_labels("test")
        in_list = lists_with_click(test.labels, test.mask)
        in_query = None if query_labels is None else query_labels.max(axis=1, initial=0) > 0
        keep.append((in_list, in_query))
    return {
        name: np.concatenate(
            [
                np.asarray(run[name])[in_query if name.startswith("full_") else in_list]
                for run, (in_list, in_query) in zip(per_fold, keep, strict=True)
            ]
        )
        for name in per_fold[0]
    }


def _valid_value(
    config: BenchmarkConfig,
    table: Table,
    row: Row,
    lists: dict[str, FoldLists],
    records: dict[str, dict[str, Any]],
    seeds: tuple[int, ...],
) -> float | None:
    """The validation selection value (at the selected epoch) averaged over folds and
    ``seeds``; for an untrained row its value on the validation lists (None when selecting on
    loss, and in a click table, where each row selects on its own kind of validation clicks)."""
    metric = config.train.selection_metric
    if row.kind is not None:
        return float(
            np.mean(
                [
                    records[Run(table.ranker, fold, seed, row).key(config)]["best_valid"]
                    for fold in config.fold_names()
                    for seed in seeds
                ]
            )
        )
    if metric == "loss" or table.clicks:
        return None
    values = []
    for fold in config.fold_names():
        unit = lists[f"{table.ranker}/{fold}"]
        valid = unit.splits["valid"]
        per_list = fixed_metrics(row, unit, config.evaluate, "valid")
        values.append(summarize(per_list, lists_with_click(valid.labels, valid.mask))[metric])
    return float(np.mean(values))


def choose(
    config: BenchmarkConfig,
    table: Table,
    lists: dict[str, FoldLists],
    records: dict[str, dict[str, Any]],
) -> Table:
    """``table`` with each row that has candidates replaced by the candidate of best mean
    validation value over folds and candidate seeds, so the choice never sees the test lists."""
    seeds = candidate_seeds(config)

    def best(row: Row) -> Row:
        if not row.candidates:
            return row
        values = [_valid_value(config, table, c, lists, records, seeds) for c in row.candidates]
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
    """Mean ± std over seeds of each row and metric, and the paired t-tests of the table
    (``table`` as chosen: one configuration per row)."""
    per_row = {row.name: _row_runs(config, table, row, lists, records) for row in table.rows}
    row_spec = {row.name: row for row in table.rows}
    rows: dict[str, dict[str, Any]] = {}
    for name, runs in per_row.items():
        row: dict[str, Any] = {"seeds": len(runs)}
        for metric in metric_names(config.evaluate, config.letor):
            row[metric], row[f"{metric}_std"] = mean_std(np.array([r[metric].mean() for r in runs]))
        row["valid"] = _valid_value(config, table, row_spec[name], lists, records, config.seeds)
        row["loss"] = _loss_label(row_spec[name])
        row["chosen"] = row_spec[name].choice
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
        for reference in ("full_data", "prm_base"):  # is anything significantly above them?
            if reference in names:
                references[reference] = reference
    tests_out = []
    for label, reference in references.items():
        pairs = [(name, reference) for name in names if name != reference]
        for metric in config.tested:
            for test in pairwise_tests(per_row, pairs, key=metric):
                rows[test["a"]][f"p_{metric}_vs_{label}"] = test["t_pvalue"]
                tests_out.append({**test, "reference": label})
    first = next(iter(per_row.values()))[0]
    n_relevant = len(first[HEADLINE])
    n_lists = sum(len(lists[f"{table.ranker}/{f}"].splits["test"]) for f in config.fold_names())
    summary = {
        "title": table.title,
        "ranker": table.ranker,
        "ablation": table.ablation,
        "clicks": table.clicks,
        "references": references,
        "lists": n_lists,
        "lists_with_relevant": n_relevant,
        **({"queries_with_relevant": len(first[FULL])} if FULL in first else {}),
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
            for fold in config.fold_names()
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
