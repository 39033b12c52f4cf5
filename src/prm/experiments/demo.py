"""The demo as an experiment: simulate, fit from the logs alone, grade with the hidden truth.

``fit_demo`` reads no ``truth/``: it pre-trains PV, trains the evaluator-generator, then
PRM-BASE and PRM once per seed, each choosing its epoch by the evaluator's estimate of the
validation lists' clicks. ``grade_demo`` alone reads the truth: every ordering's true
expected clicks on the test lists, the greedy oracle's beside them, mean ± std over seeds and
paired tests (:mod:`prm.experiments.summarize`).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prm.config import ExperimentConfig, to_dict
from prm.data.batch import ListDataset
from prm.data.examination import EXPLORE
from prm.data.loaders import load_list_data, present_splits
from prm.data.simulator import load_click_model, simulate
from prm.evaluation.estimate import EstimatedClicks
from prm.evaluation.evaluate import oracle_scores, score_lists
from prm.experiments.report import machine
from prm.experiments.summarize import compare, expected_figures, measure, pairwise_tests
from prm.io import write_json
from prm.pipeline import EVALUATOR, train_evaluator, train_reranker
from prm.pretrain.ctr import load_ctr
from prm.pretrain.training import CTR_MODEL, pretrain


@torch.no_grad()
def ctr_sort_scores(ctr_path: str | Path, dataset: ListDataset) -> np.ndarray:
    """(N, L) the CTR model's click logits of each item alone: the point-wise baseline."""
    ctr_model = load_ctr(ctr_path)
    logits = ctr_model(
        torch.from_numpy(np.repeat(dataset.user_ids, dataset.list_length)),
        torch.from_numpy(dataset.item_ids.ravel()),
    )
    return logits.reshape(dataset.mask.shape).numpy()


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
    data = load_list_data(data_dir, splits=present_splits(data_dir))
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
    results["expected"] = expected_figures(results["models"], config.expect)
    write_json(out_dir / "results.json", results)
    return results
