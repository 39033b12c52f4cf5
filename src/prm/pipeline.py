"""The end-to-end job as library calls: simulate, pre-train PV, train re-rankers, compare.

The CLI (``prm simulate|pretrain|train|evaluate|demo``) is a thin layer over these functions,
so a notebook can run the same steps with the same artifacts.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prm.config import ExperimentConfig, PRMConfig, to_dict
from prm.data.batch import ListDataset, concat_lists
from prm.data.examination import EXPLORE
from prm.data.loaders import ListData, load_list_data
from prm.data.shards import lists_source
from prm.data.simulator import load_click_model, simulate
from prm.evaluation.estimate import EstimatedClicks
from prm.evaluation.evaluate import (
    expected_clicks,
    oracle_scores,
    per_list_metrics,
    score_lists,
)
from prm.evaluation.metrics import lists_with_click
from prm.evaluation.significance import mean_std, paired_test
from prm.io import write_json
from prm.models.evaluator import ContextClickModel
from prm.pretrain.ctr import load_ctr
from prm.pretrain.training import CTR_MODEL, pretrain
from prm.rankers.evaluator_generator import GeneratorEvaluator
from prm.registry import ModelSpec
from prm.training.checkpoint import load_checkpoint
from prm.training.trainer import CHECKPOINT, fit_reranker

EVALUATOR = "generator_evaluator"  # the registered kind and the demo's row name


def load_reranker(run_dir: str | Path) -> torch.nn.Module:
    """The best-on-validation weights of a trained re-ranker."""
    checkpoint = load_checkpoint(Path(run_dir) / CHECKPOINT)
    model = ModelSpec.from_dict(checkpoint["model_spec"]).build()
    weights = checkpoint["state"]["best_weights"] or checkpoint["weights"]
    model.load_state_dict(weights)
    return model.eval()


def train_reranker(
    config: ExperimentConfig,
    data: ListData,
    run_dir: str | Path,
    *,
    kind: str = "prm",
    model_config: PRMConfig | dict[str, Any] | None = None,
    seed: int | None = None,
    resume: bool = False,
    progress: bool = True,
    estimator: Callable[[np.ndarray, ListDataset], float] | None = None,
    evaluator: ContextClickModel | None = None,
) -> torch.nn.Module:
    """Train a registered re-ranker and return the best-on-validation model: PRM (PRM-BASE
    with ``use_pv=False``) from ``config.model``, another kind from ``config.rerankers``
    (its config defaults where the section is absent), or from ``model_config`` if given.

    ``evaluator`` (a trained context-aware click model) gives the examination curve for
    ``position_bias: evaluator``.
    """
    examination = data.examination
    if kind == "prm":
        model_config = model_config or config.model
        if model_config.position_bias == "evaluator":
            if evaluator is None:
                raise ValueError("model.position_bias 'evaluator' needs a trained evaluator")
            examination = evaluator.relative_examination(model_config.max_positions)
    elif model_config is None:
        model_config = config.rerankers.get(kind, {})
    train_config = config.train if seed is None else replace(config.train, seed=seed)
    train = data.splits["train"]
    model, _ = fit_reranker(
        ModelSpec.of(kind, model_config, train.d_feature, train.d_pv),
        train_config,
        train,
        data.splits["valid"],
        run_dir,
        eval_config=config.evaluate,
        resume=resume,
        progress=progress,
        estimator=estimator,
        examination=examination,
    )
    return model


def train_evaluator(
    config: ExperimentConfig,
    data: ListData,
    run_dir: str | Path,
    *,
    exploration: ListDataset | None = None,
    resume: bool = False,
    progress: bool = True,
) -> GeneratorEvaluator:
    """Train the evaluator-generator re-ranker on the training lists (every list, clicked or
    not, plus ``exploration`` if given) and return it; its ``evaluator`` is the click model
    that estimates the clicks of any ordering from the logs."""
    settings = config.evaluator_training
    train = data.splits["train"]
    if exploration is not None and settings.with_exploration:
        train = concat_lists([train, exploration])
    train_config = replace(
        config.train,
        epochs=settings.epochs,
        lr=settings.lr,
        lr_schedule=settings.lr_schedule,
        batch_size=settings.batch_size,
        patience=settings.epochs,
        selection_metric="loss",
    )
    generator, _ = fit_reranker(
        ModelSpec.of(EVALUATOR, config.evaluator, train.d_feature, train.d_pv),
        train_config,
        train,
        data.splits["valid"],
        run_dir,
        eval_config=config.evaluate,
        resume=resume,
        progress=progress,
        examination=data.examination,
    )
    return generator


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


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, no GPU used"
    )


@torch.no_grad()
def ctr_sort_scores(ctr_path: str | Path, dataset: ListDataset) -> np.ndarray:
    """(N, L) the CTR model's click logits of each item alone: the point-wise baseline."""
    ctr_model = load_ctr(ctr_path)
    logits = ctr_model(
        torch.from_numpy(np.repeat(dataset.user_ids, dataset.list_length)),
        torch.from_numpy(dataset.item_ids.ravel()),
    )
    return logits.reshape(dataset.mask.shape).numpy()


def demo_splits(data_dir: str | Path) -> tuple[str, ...]:
    """The splits the demo reads: train, valid, test, and the exploration bucket if logged."""
    has_bucket = lists_source(data_dir, EXPLORE).exists()
    return ("train", "valid", "test", EXPLORE) if has_bucket else ("train", "valid", "test")


def fit_demo(
    config: ExperimentConfig, data_dir: str | Path, out_dir: str | Path, progress: bool = True
) -> tuple[dict[str, list[np.ndarray]], dict[str, Any]]:
    """Everything the demo learns, from the logs alone (``data_dir/truth`` is never read).

    Pre-trains PV; trains the evaluator-generator; trains PRM-BASE and PRM once per seed,
    each choosing its epoch by the evaluator's estimate of the validation lists' clicks.
    Returns the test scores of every ordering (one array per seed) and a report of the
    selections and timings.
    """
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    step = time.perf_counter()
    data = load_list_data(data_dir, splits=demo_splits(data_dir))
    data = pretrain(config, data, out_dir / "pretrain", progress=progress).attach(data)
    timings["pretrain"] = time.perf_counter() - step

    step = time.perf_counter()
    generator = train_evaluator(
        config,
        data,
        out_dir / "runs" / EVALUATOR,
        exploration=data.splits.get(EXPLORE),
        progress=progress,
    )
    estimator = EstimatedClicks(generator.evaluator, device=config.train.device)
    timings["evaluator"] = time.perf_counter() - step

    test = data.splits["test"]
    scores: dict[str, list[np.ndarray]] = {
        "initial": [-test.positions.astype(np.float32)],
        "ctr_sort": [ctr_sort_scores(out_dir / "pretrain" / CTR_MODEL, test)],
        EVALUATOR: [score_lists(generator, test, device=config.train.device)],
    }
    selected: dict[str, list[dict[str, Any]]] = {}
    step = time.perf_counter()
    variants = {"prm_base": replace(config.model, use_pv=False), "prm": config.model}
    for name, model_config in variants.items():
        scores[name], selected[name] = [], []
        for seed in config.seeds:
            run_dir = out_dir / "runs" / f"{name}_seed{seed}"
            model = train_reranker(
                config,
                data,
                run_dir,
                model_config=model_config,
                seed=seed,
                progress=progress,
                estimator=estimator,
                evaluator=generator.evaluator,
            )
            scores[name].append(score_lists(model, test, device=config.train.device))
            metrics = json.loads((run_dir / "metrics.json").read_text())
            selected[name].append({k: v for k, v in metrics.items() if k != "history"})
    timings["train"] = time.perf_counter() - step
    return scores, {"selected": selected, "seconds": timings}


CLAIMS = [
    ("prm", "prm_base"),
    ("prm_base", "initial"),
    ("prm", "initial"),
    ("prm", "ctr_sort"),
    (EVALUATOR, "prm"),
]


def grade_demo(
    config: ExperimentConfig, scores: dict[str, list[np.ndarray]], data_dir: str | Path
) -> dict:
    """The test lists' true expected clicks of every ordering, the greedy oracle's beside
    them, and the paired tests of :data:`CLAIMS`: the only step that reads ``truth/``."""
    test = load_list_data(data_dir, splits=("test",)).splits["test"]
    click_model = load_click_model(data_dir)
    scores = {**scores, "oracle": [oracle_scores(click_model, test)]}
    per_model_seeds = {
        name: [measure({name: s}, test, config, click_model)[name] for s in runs]
        for name, runs in scores.items()
    }
    order = ["initial", "ctr_sort", "prm_base", "prm", EVALUATOR, "oracle"]
    results = compare({name: per_model_seeds[name] for name in order}, test)
    results["tests"] = pairwise_tests(per_model_seeds, CLAIMS)
    results["map_convention"] = config.evaluate.map_convention
    return results


def demo(config: ExperimentConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """simulate → pre-train PV → train the evaluator-generator, PRM-BASE and PRM per seed
    (selected on the logs) → grade every ordering on the test lists with the hidden truth."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    data_dir = out_dir / "data"
    simulate(config.simulator, data_dir, progress=progress)
    simulated = time.perf_counter() - started
    scores, report = fit_demo(config, data_dir, out_dir, progress=progress)
    results = grade_demo(config, scores, data_dir)
    results["selected"] = report["selected"]
    results["machine"] = machine()
    seconds = {"simulate": simulated, **report["seconds"]}
    results["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    results["seconds"]["total"] = round(time.perf_counter() - started, 1)
    results["config"] = to_dict(config)
    write_json(out_dir / "results.json", results)
    return results
