"""The retraining loop: deploy a re-ranker in the simulator, log its clicks, retrain on them.

A re-ranker in production is retrained on logs of the lists it showed, not on the initial
ranker's. Round 1 is PRM trained on the initial ranker's logs (the demo's). Each later round
shows the same training requests in the previous round's order, draws fresh clicks from the
simulator's click model (the online environment), keeps the randomized exploration bucket,
and retrains the evaluator and PRM on those logs. The evaluator keeps the examination it
measured in round 1: the more a policy puts what users like on top, the more its logs confound
rank with appeal (re-learned from round 2's logs, the curve came out steeper than the truth,
-4.2 against -3.4 in log at rank 30, and the doubly robust estimate overshot by 0.39 clicks).
Every round reports what a user would see (the clicks its deployment logged, the evaluator's
and the doubly robust estimates of the new PRM's clicks, with an interval) beside the hidden
truth, which only grades.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prm.config import ExperimentConfig, to_dict
from prm.data.batch import ListDataset
from prm.data.examination import EXPLORE
from prm.data.exploration import ExplorationLog, exploration_log, read_randomization
from prm.data.loaders import ListData, load_list_data, present_splits
from prm.data.simulator import ClickModel, load_click_model, simulate, simulated_world
from prm.evaluation.estimate import EstimatedClicks, predicted_clicks
from prm.evaluation.evaluate import expected_clicks, oracle_scores, score_lists
from prm.evaluation.metrics import rank_order
from prm.evaluation.offpolicy import OffPolicyEvaluator
from prm.evaluation.report import markdown_table
from prm.experiments.report import machine
from prm.io import atomic_path, write_json
from prm.models.evaluator import ContextClickModel
from prm.pipeline import EVALUATOR, load_reranker, train_evaluator, train_reranker
from prm.pretrain.training import attach_pv, pretrain

TRUSTED_ESTIMATE = "dr_rank"  # docs/offpolicy.md: the estimator the benchmark supports


def deploy(
    policy: torch.nn.Module,
    requests: ListDataset,
    click_model: ClickModel,
    rng: np.random.Generator,
) -> ListDataset:
    """The logs of showing ``requests`` (initial order) in ``policy``'s order: the lists in
    shown order (positions = shown rank) with clicks drawn from the click model."""
    order = rank_order(score_lists(policy, requests), requests.mask, requests.positions)
    shown = requests.shown_in_order(order)
    probabilities = click_model.click_probabilities(shown.user_ids, shown.item_ids, shown.mask)
    return shown.with_labels((rng.random(probabilities.shape) < probabilities) & shown.mask)


def _round_one(
    config: ExperimentConfig, demo_dir: Path | None, out_dir: Path, seed: int, progress: bool
) -> tuple[ListData, Path, ContextClickModel, torch.nn.Module]:
    """Data with PV, its folder, the evaluator and PRM trained on the initial ranker's logs:
    a finished demo's, or trained here."""
    if demo_dir is not None:
        data_dir = demo_dir / "data"
        data = attach_pv(
            load_list_data(data_dir, splits=present_splits(data_dir)), demo_dir / "pretrain"
        )
        evaluator = load_reranker(demo_dir / "runs" / EVALUATOR).evaluator
        return data, data_dir, evaluator, load_reranker(demo_dir / "runs" / f"prm_seed{seed}")
    base = out_dir / "round1"
    data_dir = base / "data"
    simulate(config.simulator, data_dir, progress=progress)
    data = load_list_data(data_dir, splits=present_splits(data_dir))
    data = pretrain(config, data, base / "pretrain", progress=progress).attach(data)
    return (data, data_dir, *_train_round(config, data, base, seed, progress))


def _train_round(
    config: ExperimentConfig, data: ListData, run_dir: Path, seed: int, progress: bool
) -> tuple[ContextClickModel, torch.nn.Module]:
    """The evaluator on the round's logs and the bucket, then PRM, its epoch chosen and its
    position-bias tower held by that evaluator, as the demo trains them."""
    evaluator = train_evaluator(
        config, data, run_dir / EVALUATOR, exploration=data.splits[EXPLORE], progress=progress
    ).evaluator
    policy = train_reranker(
        config,
        data,
        run_dir / "prm",
        seed=seed,
        progress=progress,
        estimator=EstimatedClicks(evaluator),
        evaluator=evaluator,
    )
    return evaluator, policy


def _grade(
    policy: torch.nn.Module,
    evaluator: ContextClickModel,
    test: ListDataset,
    bucket: ExplorationLog,
    click_model: ClickModel,
    reference: tuple[float, float],
) -> dict[str, Any]:
    """The round's estimates from the logs, then the truth (initial and oracle clicks in
    ``reference``)."""
    scores = score_lists(policy, test)
    estimate = OffPolicyEvaluator(bucket, evaluator).estimate(score_lists(policy, bucket.requests))[
        TRUSTED_ESTIMATE
    ]
    true = float(expected_clicks(click_model, test, scores).mean())
    initial, oracle = reference
    return {
        "estimated_clicks_evaluator": float(predicted_clicks(evaluator, test, scores).mean()),
        "estimated_clicks_dr": estimate.value,
        "estimated_clicks_dr_interval": [estimate.low, estimate.high],
        "true_expected_clicks": true,
        "oracle_gain_pct": 100 * (true - initial) / (oracle - initial),
    }


def retraining_loop(
    config: ExperimentConfig,
    out_dir: str | Path,
    rounds: int,
    *,
    demo_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``rounds`` rounds (module docstring); write ``loop.json`` and ``loop.png`` to
    ``out_dir`` after each round and return the report."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    seed = config.seeds[0]
    demo_path = Path(demo_dir) if demo_dir is not None else None
    data, data_dir, evaluator, policy = _round_one(config, demo_path, out_dir, seed, progress)
    bucket = exploration_log(data.splits[EXPLORE], *read_randomization(data_dir))
    click_model = load_click_model(data_dir)  # the online environment; learning never reads it
    test = data.splits["test"]
    reference = (
        float(expected_clicks(click_model, test, -test.positions.astype(np.float32)).mean()),
        float(expected_clicks(click_model, test, oracle_scores(click_model, test)).mean()),
    )
    _, rng = simulated_world(config.simulator)  # a stream no split of the data uses
    report: dict[str, Any] = {"rounds": [], "machine": machine(), "config": to_dict(config)}
    report["initial_expected_clicks"], report["oracle_expected_clicks"] = reference
    row = {"round": 1, "logged_clicks_per_list": float(data.splits["train"].labels.sum(1).mean())}
    # Later evaluators start at, and hold, the examination round 1 measured (module docstring).
    retrain_config = replace(config, evaluator=replace(config.evaluator, hold_examination=True))
    examination = evaluator.relative_examination(config.evaluator.max_positions)
    for round_number in range(1, rounds + 1):
        step = time.perf_counter()
        if round_number > 1:
            logs = deploy(policy, data.splits["train"], click_model, rng)
            row = {
                "round": round_number,
                "logged_clicks_per_list": float(logs.labels.sum(1).mean()),
            }
            round_data = replace(
                data, splits={**data.splits, "train": logs}, examination=examination
            )
            run_dir = out_dir / f"round{round_number}"
            evaluator, policy = _train_round(retrain_config, round_data, run_dir, seed, progress)
        row.update(_grade(policy, evaluator, test, bucket, click_model, reference))
        row["seconds"] = round(time.perf_counter() - step, 1)
        report["rounds"].append(row)
        report["seconds"] = round(time.perf_counter() - started, 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "loop.json", report)
        plot_loop(report, out_dir / "loop.png")
    return report


def loop_table(report: dict[str, Any]) -> str:
    """One row per round: logged clicks, the estimates from the logs, the truth."""
    rows = [
        [
            str(r["round"]),
            f"{r['logged_clicks_per_list']:.4f}",
            f"{r['estimated_clicks_evaluator']:.4f}",
            f"{r['estimated_clicks_dr']:.4f} [{r['estimated_clicks_dr_interval'][0]:.4f}, "
            f"{r['estimated_clicks_dr_interval'][1]:.4f}]",
            f"{r['true_expected_clicks']:.4f}",
            f"{r['oracle_gain_pct']:.1f}",
        ]
        for r in report["rounds"]
    ]
    header = [
        "round",
        "logged clicks per list",
        "estimated (evaluator)",
        "estimated (doubly robust, 95 % interval)",
        "true expected clicks",
        "% of oracle gain (true)",
    ]
    return markdown_table(header, rows)


def plot_loop(report: dict[str, Any], path: Path) -> None:
    """True and estimated clicks per round, the truth's initial and oracle levels as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in report["rounds"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(rounds, [r["true_expected_clicks"] for r in report["rounds"]], "o-", label="true")
    ax.plot(
        rounds,
        [r["estimated_clicks_evaluator"] for r in report["rounds"]],
        "s--",
        label="evaluator",
    )
    dr = np.array([r["estimated_clicks_dr"] for r in report["rounds"]])
    low, high = np.array([r["estimated_clicks_dr_interval"] for r in report["rounds"]]).T
    ax.errorbar(rounds, dr, yerr=[dr - low, high - dr], fmt="^:", capsize=3, label="doubly robust")
    ax.axhline(report["initial_expected_clicks"], color="grey", lw=0.8, label="initial ranking")
    ax.axhline(report["oracle_expected_clicks"], color="black", lw=0.8, label="greedy oracle")
    ax.set(xlabel="round", ylabel="clicks per list", xticks=rounds, title="Retraining on own logs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
