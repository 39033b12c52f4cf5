"""Running a suite's plan: each run's lists, its training through the one
:func:`~prm.training.trainer.fit_reranker`, its test scores, recorded so a suite resumes."""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from prm.config import EvalConfig, ExperimentConfig, PretrainConfig, TrainConfig, to_dict
from prm.data.batch import ListDataset
from prm.data.click_simulation import (
    ClickTarget,
    click_probability,
    examination_by_rank,
    ips_labels,
    simulate_clicks,
)
from prm.data.loaders import ListData, load_list_data
from prm.data.movielens import MovieLensProtocol, convert_movielens
from prm.evaluation.evaluate import score_lists
from prm.experiments.config import CLICK_SPLITS, TIE_NOISE, BenchmarkConfig
from prm.experiments.plan import (
    Run,
    Table,
    candidate_seeds,
    plan_ablations,
    plan_runs,
    plan_tables,
)
from prm.experiments.report import (
    machine,
    plot_suite,
    render_section,
    update_results_markdown,
    write_trec_files,
)
from prm.experiments.summarize import (
    choose,
    expected_figures,
    summarize_table,
    test_metrics,
    top_documents,
)
from prm.io import write_json
from prm.pretrain.training import REPORT, attach_pv, pretrain
from prm.rankers.initial_lists import FoldLists, RankingFiles, reranking_lists
from prm.registry import ModelSpec
from prm.training.trainer import TrainState, fit_reranker


def load_fold(
    config: BenchmarkConfig, ranker: str, fold: str, work_dir: Path
) -> tuple[FoldLists, ListData | None]:
    """The lists one initial ranker gives on one fold; for ml-100k also its ``ListData``
    (users and items, for pre-training)."""
    if config.letor:
        files = RankingFiles.in_folder(
            config.dataset.folder(fold),
            config.dataset.train,
            config.dataset.valid,
            config.dataset.test,
        )
        lists = reranking_lists(
            files, ranker, config.list_length, config.data_seed, work_dir / "cache"
        )
        return lists.head(config.max_lists), None
    folder = work_dir / "ml-100k"
    convert_movielens(folder, protocol=MovieLensProtocol(list_length=config.list_length))
    data = load_list_data(folder)
    lists = FoldLists(data.splits, {}, {}).head(config.max_lists)
    return lists, replace(data, splits=lists.splits)


def with_pv(
    data: ListData, pretrain_config: PretrainConfig, work_dir: Path, resume: bool
) -> dict[str, ListDataset]:
    """The splits with the PV of ``pretrain_config``'s CTR model, pre-trained (or, with
    ``resume``, reused from the work folder) on the training lists."""
    digest = hashlib.sha256(
        json.dumps([to_dict(pretrain_config), [len(d) for d in data.splits.values()]]).encode()
    ).hexdigest()[:12]
    folder = work_dir / "pretrain" / f"{pretrain_config.model}-seed{pretrain_config.seed}-{digest}"
    if not (resume and (folder / REPORT).is_file()):
        pretrain(ExperimentConfig(pretrain=pretrain_config), data, folder, progress=False)
    return attach_pv(data, folder).splits


def fit_quietly(
    spec: ModelSpec,
    train_config: TrainConfig,
    splits: dict[str, ListDataset],
    run_dir: Path,
    evaluate: EvalConfig,
) -> tuple[nn.Module, TrainState]:
    """:func:`fit_reranker` on ``splits``' train and valid lists, without progress bars or a
    per-epoch curve PNG: drawing it took about 0.13 s, more than most MQ2008 epochs
    (0.03-0.35 s); the epoch history goes into the run's record.json instead."""
    return fit_reranker(
        spec,
        train_config,
        splits["train"],
        splits["valid"],
        run_dir,
        eval_config=evaluate,
        progress=False,
        reports=False,
    )


def train_and_test(
    run: Run,
    splits: dict[str, ListDataset],
    lists: FoldLists,
    run_dir: Path,
    evaluate: EvalConfig,
) -> dict[str, Any]:
    """Fit on ``train``, keep the best epoch on ``valid``, and return per-list test metrics
    (of ``lists``' test lists, which ``splits`` may hold with PV or relabelled)."""
    train_config = replace(run.row.train, seed=run.seed)
    started = time.perf_counter()
    train = splits["train"]
    spec = ModelSpec(run.row.kind, run.row.model, train.d_feature, train.d_pv)
    model, state = fit_quietly(spec, train_config, splits, run_dir, evaluate)
    scores = score_lists(model, splits["test"], device=train_config.device)
    per_list = test_metrics(scores, lists, evaluate)
    return {
        "test_top": top_documents(scores, lists, evaluate).tolist(),
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "best_valid": state.best_metric,
        "seconds": round(time.perf_counter() - started, 2),
        "history": state.history,
        "test": {name: values.tolist() for name, values in per_list.items()},
    }


def estimate_examination(
    config: BenchmarkConfig, click_splits: dict[str, ListDataset], seed: int, run_dir: Path
) -> dict[str, Any]:
    """The examination per rank (1 at rank 1) that PRM-BASE's learned PAL tower takes when it
    is fitted to the raw click rates of ``click_splits`` (train; epoch chosen on valid), and
    how that fit went. No expert label is read."""
    estimator = config.estimator
    model = replace(
        config.model,
        use_pv=False,
        use_pe=estimator.use_pe,
        position_bias_tower=True,
        position_bias="learned",
    )
    started = time.perf_counter()
    train_config = replace(estimator.train, seed=seed)
    train = click_splits["train"]
    spec = ModelSpec.of("prm", model, train.d_feature, train.d_pv)
    fitted, state = fit_quietly(spec, train_config, click_splits, run_dir, config.evaluate)
    length = click_splits["train"].list_length
    offsets = fitted.position_bias.offset.weight[:length, 0].detach().double().numpy()
    return {
        "examination": np.exp(offsets - offsets[0]).tolist(),
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "best_valid": state.best_metric,
        "seconds": round(time.perf_counter() - started, 2),
    }


class ClickLogs:
    """One initial ranker's lists on one fold with simulated clicks (train and valid), the
    targets each row learns from, and the examination the PAL tower estimates per seed."""

    def __init__(
        self,
        config: BenchmarkConfig,
        ranker: str,
        fold: str,
        splits: dict[str, ListDataset],
        work_dir: Path,
    ) -> None:
        self.config = config
        self.clicks = config.clicks
        self.splits = splits
        self.rates: dict[str, np.ndarray] = {}  # click-through rates, clicks / sessions
        self.tie_noise: dict[str, np.ndarray] = {}  # for labels_random_ties
        for split in CLICK_SPLITS:
            # The same logs for every model seed: drawn from the click seed and the lists.
            stream = zlib.crc32(f"{ranker}/{fold}/{split}".encode())
            rng = np.random.default_rng([self.clicks.seed, stream])
            clicks = simulate_clicks(splits[split], self.clicks, rng)
            self.rates[split] = clicks / self.clicks.sessions
            self.tie_noise[split] = rng.uniform(0, TIE_NOISE, clicks.shape)
        self.estimate_dir = work_dir / "examination" / f"{ranker}-{fold}"
        self.estimates: dict[int, dict[str, Any]] = {}  # by model seed
        self.estimate_seconds = 0.0

    def estimate(self, seed: int) -> dict[str, Any]:
        """``estimate_examination`` with this seed, computed once."""
        if seed not in self.estimates:
            started = time.perf_counter()
            naive = self.training_splits("naive", seed)
            run_dir = self.estimate_dir / f"seed{seed}"
            self.estimates[seed] = estimate_examination(self.config, naive, seed, run_dir)
            self.estimate_seconds += time.perf_counter() - started
        return self.estimates[seed]

    def training_splits(self, target: ClickTarget, seed: int) -> dict[str, ListDataset]:
        """The splits a row with this ``target`` and model ``seed`` trains and selects on:
        ``train`` and ``valid`` relabelled, ``test`` always with the expert labels."""
        if target == "labels":
            return self.splits
        relabelled = dict(self.splits)
        for split in CLICK_SPLITS:
            lists = self.splits[split]
            relabelled[split] = lists.with_labels(self._targets(target, lists, split, seed))
        return relabelled

    def _targets(
        self, target: ClickTarget, lists: ListDataset, split: str, seed: int
    ) -> np.ndarray:
        rates = self.rates[split]
        if target == "naive":
            return rates
        if target == "ips_known":
            return ips_labels(rates, lists, examination_by_rank(lists.list_length, self.clicks.eta))
        if target == "ips_estimated":
            return ips_labels(rates, lists, np.array(self.estimate(seed)["examination"]))
        if target == "click_probability":
            probability = click_probability(
                lists.labels, epsilon=self.clicks.epsilon, max_grade=self.clicks.max_grade
            )
            return probability * lists.mask
        return (lists.labels + self.tie_noise[split]) * lists.mask  # labels_random_ties


class Execution:
    """A suite's lists and training runs: every unit's lists are built once, each run is
    trained once (or, with ``resume``, read back) and recorded by key."""

    def __init__(
        self, config: BenchmarkConfig, work_dir: Path, *, resume: bool, progress: bool
    ) -> None:
        self.config, self.work_dir = config, work_dir
        self.resume, self.progress = resume, progress
        self.lists: dict[str, FoldLists] = {}  # by "ranker/fold"
        self.data: dict[str, ListData] = {}  # ml-100k's, for pre-training
        self.logs: dict[str, ClickLogs] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.seconds = {"data": 0.0, "pretrain": 0.0, "train": 0.0}
        if config.clicks is not None:
            self.seconds["examination estimates"] = 0.0
        self.pv: dict[str, dict[str, ListDataset]] = {}

    def load(self, tables: list[Table]) -> None:
        started = time.perf_counter()
        for ranker, fold in sorted(
            {(t.ranker, f) for t in tables for f in self.config.fold_names()}
        ):
            unit = f"{ranker}/{fold}"
            lists, data = load_fold(self.config, ranker, fold, self.work_dir)
            self.lists[unit] = lists
            if data is not None:
                self.data[unit] = data
            if self.config.clicks is not None:
                self.logs[unit] = ClickLogs(self.config, ranker, fold, lists.splits, self.work_dir)
        self.seconds["data"] += time.perf_counter() - started

    def train(self, runs: dict[str, Run], stage: str) -> None:
        """Train ``runs`` (those not recorded yet), unit by unit."""
        todo = {key: run for key, run in runs.items() if key not in self.records}
        bar = tqdm(total=len(todo), desc=f"{self.config.name}: {stage}", disable=not self.progress)
        for key, run in sorted(todo.items(), key=lambda item: (item[1].ranker, item[1].fold)):
            bar.set_postfix_str(f"{run.ranker} {run.fold} {run.row.name} seed {run.seed}")
            record_path = self.work_dir / "runs" / key / "record.json"
            if self.resume and record_path.is_file():
                self.records[key] = json.loads(record_path.read_text())
            else:
                self.records[key] = self._train(run, record_path)
            bar.update()
        bar.close()
        if self.logs:
            self.seconds["examination estimates"] = sum(
                logs.estimate_seconds for logs in self.logs.values()
            )

    def _train(self, run: Run, record_path: Path) -> dict[str, Any]:
        unit = f"{run.ranker}/{run.fold}"
        lists = self.lists[unit]
        splits = lists.splits
        pretrain_config = run.pretrain_config(self.config)
        if pretrain_config is not None:
            pv_key = json.dumps([unit, to_dict(pretrain_config)])
            if pv_key not in self.pv:
                started = time.perf_counter()
                data = self.data[unit]
                self.pv[pv_key] = with_pv(data, pretrain_config, self.work_dir, self.resume)
                self.seconds["pretrain"] += time.perf_counter() - started
            splits = self.pv[pv_key]
        logs = self.logs.get(unit)
        if logs is not None:
            splits = logs.training_splits(run.row.target, run.seed)
        record = train_and_test(run, splits, lists, record_path.parent, self.config.evaluate)
        if run.row.target == "ips_estimated":
            record["examination_estimate"] = logs.estimates[run.seed]
        record.update(row=run.row.name, kind=run.row.kind, ranker=run.ranker, fold=run.fold)
        record["loss"] = run.row.train.loss
        record["choice"] = run.row.choice
        record["seed"] = run.seed
        write_json(record_path, record)
        self.seconds["train"] += record["seconds"]
        return record


def execute(
    config: BenchmarkConfig, work_dir: Path, *, resume: bool = False, progress: bool = True
) -> tuple[list[Table], Execution]:
    """Train every candidate of the main tables on the candidate seeds, choose each row's
    configuration on validation, then train the chosen rows and the ablations on every seed.
    Returns the tables as reported (one configuration per row) and the execution."""
    execution = Execution(config, work_dir, resume=resume, progress=progress)
    tables = plan_tables(config)
    execution.load(tables)
    candidates = plan_runs(config, tables, candidate_seeds(config))
    execution.train(candidates, "candidates")
    chosen = [choose(config, t, execution.lists, execution.records) for t in tables]
    chosen += plan_ablations(config, chosen)
    execution.train(plan_runs(config, chosen, config.seeds), "chosen, every seed")
    return chosen, execution


def _seconds_per_run(records: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Mean training seconds of one run, per row name (where the time goes)."""
    seconds: dict[str, list[float]] = {}
    for record in records.values():
        seconds.setdefault(record["row"], []).append(record["seconds"])
    return {row: round(float(np.mean(values)), 2) for row, values in seconds.items()}


def run_benchmark(
    config: BenchmarkConfig,
    *,
    out_dir: str | Path,
    work_dir: str | Path,
    command: str,
    quick: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run a suite; write ``RESULTS.md`` (its section), ``figures/<name>.png`` and
    ``results/<name>.json`` under ``out_dir``; return the results."""
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    torch.set_num_threads(config.threads)
    out_dir, work_dir = Path(out_dir), Path(work_dir) / config.name
    tables, execution = execute(config, work_dir, resume=resume, progress=progress)
    lists, records, seconds = execution.lists, execution.records, execution.seconds
    summaries = [summarize_table(config, table, lists, records) for table in tables]
    figure = out_dir / "figures" / f"{config.name}.png"
    json_path = out_dir / "results" / f"{config.name}.json"
    plot_suite(summaries, figure, f"{config.name}: NDCG@10, mean ± std over seeds")
    trec = work_dir / "trec"
    if config.letor:
        write_trec_files(config, tables, lists, records, trec)
    seconds["total"] = time.perf_counter() - started
    results = {
        "suite": config.name,
        "quick": quick,
        "command": command,
        "machine": machine(),
        "load_average": [load_start, os.getloadavg()[0]],
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "runs": len(records),
        "seconds_per_run": _seconds_per_run(records),
        "figure": str(figure),
        "trec_files": str(trec) if config.letor else None,
        "json": str(json_path),
        "tables": summaries,
        "expected": expected_figures(
            {
                f"{summary['ranker']}/{row}": values
                for summary in summaries
                if not summary.get("ablation")
                for row, values in summary["rows"].items()
            },
            {} if quick else config.expect,  # quick settings measure nothing
        ),
        "run_records": {
            key: {k: v for k, v in record.items() if k not in ("test", "test_top", "history")}
            for key, record in records.items()
        },
        "config": to_dict(config),
    }
    write_json(json_path, results)
    update_results_markdown(out_dir / "RESULTS.md", config.name, render_section(results, config))
    return results
