"""How well does each off-policy estimator, reading the logs only, judge orderings it never saw?

    .venv/bin/python benchmarks/offpolicy_accuracy.py [--demo runs/demo]
        [--config configs/demo.yaml] [--resamples 20] [--budgets 1000,5000,20000]

Reads a finished `prm demo` folder: its logs, PV model, evaluator, PRM-BASE and PRM runs. Then

1. trains PRM (the demo's settings) for 1 and for 4 epochs beside the demo's own, so orderings
   run from bad to the oracle: reversed, random, quality-feature sort, initial, CTR sort,
   PRM-BASE, PRM at 1 / 2 (the demo's) / 4 epochs, the evaluator-generator, the greedy oracle;
2. draws ``--resamples`` fresh exploration buckets of the largest budget from the demo's
   world (lists shown in a uniformly random order, clicks from the click model), each one a
   resample of the logs; the smaller budgets are their first lists;
3. for every estimator of prm.evaluation.offpolicy and every budget: the estimate and its
   bootstrap 95 % interval of each ordering's clicks per list, against the truth (the
   orderings' true expected clicks over all resampled lists). Reports Kendall's tau between
   estimated and true over the orderings, the largest error as % of the oracle's gain over the
   initial order, and how often the interval covers the truth; each a mean over resamples.

The direct methods' models (the evaluator, a position-based model) are fitted on the demo's
logs, which stay fixed; only the bucket is resampled. Writes
``benchmarks/results/offpolicy.json`` for ``--default-budget``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau
from tqdm import tqdm

from prm.config import ExperimentConfig, load_config
from prm.data.batch import ListDataset
from prm.data.examination import EXPLORE
from prm.data.exploration import ExplorationLog, exploration_log
from prm.data.loaders import load_list_data, present_splits
from prm.data.simulator import load_click_model, simulate_split, simulated_world
from prm.evaluation.evaluate import expected_clicks, oracle_scores, score_lists
from prm.evaluation.offpolicy import (
    ESTIMATORS,
    OffPolicyEvaluator,
    bootstrap_weights,
    fit_position_based,
)
from prm.evaluation.report import markdown_table
from prm.experiments.demo import ctr_sort_scores
from prm.experiments.report import machine
from prm.io import write_json
from prm.pipeline import EVALUATOR, load_reranker, train_reranker
from prm.pretrain.ctr import load_ctr
from prm.pretrain.training import CTR_MODEL, attach_pv, compute_pv
from prm.training.checkpoint import load_checkpoint
from prm.training.trainer import CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
EXTRA_PRM_EPOCHS = (1, 4)  # beside the demo's 2
N_BOOTSTRAP = 500


def trained_prm(config: ExperimentConfig, data, work: Path, epochs: int, evaluator):
    """PRM with the demo's settings trained for ``epochs`` (its last weights), cached."""
    run = work / f"prm_{epochs}_epochs"
    if not (run / CHECKPOINT).is_file():
        train = replace(
            config.train,
            epochs=epochs,
            patience=epochs,
            seed=config.seeds[0],
            selection_metric="loss",
        )
        train_reranker(
            replace(config, train=train),
            data,
            run,
            progress=False,
            evaluator=evaluator,
        )
    model = load_reranker(run)
    model.load_state_dict(load_checkpoint(run / CHECKPOINT)["weights"])  # the last epoch
    return model.eval()


def fresh_bucket(config, world, rng, n_lists: int, items, ctr) -> ExplorationLog:
    """``n_lists`` new exploration lists of the demo's world, with PV, as a bucket."""
    chunks = list(
        simulate_split(config.simulator, world, n_lists, rng, progress=False, shuffle=True)
    )
    item_ids = np.concatenate([c["item_ids"] for c in chunks]).astype(np.int64)
    user_ids = np.concatenate([c["user_ids"] for c in chunks]).astype(np.int64)
    mask = np.ones(item_ids.shape, bool)
    shown = ListDataset(
        features=items.features[item_ids],
        pv=compute_pv(ctr, user_ids, item_ids, mask),
        mask=mask,
        labels=np.concatenate([c["clicks"] for c in chunks]).astype(np.float32),
        positions=np.broadcast_to(np.arange(item_ids.shape[1]), item_ids.shape).copy(),
        user_ids=user_ids,
        list_ids=np.arange(n_lists),
        item_ids=item_ids,
    )
    return exploration_log(shown, np.concatenate([c["initial_ranks"] for c in chunks]), None)


def ordering_scores(requests: ListDataset, models: dict, demo: Path, click_model, rng):
    """Scores of each graded ordering of the requests, from bad to the oracle."""
    initial = -requests.positions.astype(np.float32)
    scores = {
        "reversed initial": -initial,
        "random": rng.random(requests.mask.shape).astype(np.float32),
        "quality feature sort": requests.features[..., -1],  # the noisy quality view
        "initial": initial,
        "CTR-model sort": ctr_sort_scores(demo / "pretrain" / CTR_MODEL, requests),
    }
    for name, model in models.items():
        scores[name] = score_lists(model, requests)
    scores["greedy oracle"] = oracle_scores(click_model, requests)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="runs/demo", help="folder written by `prm demo`")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--work", default="runs/offpolicy", help="cache of the extra PRM runs")
    parser.add_argument("--resamples", type=int, default=20)
    parser.add_argument("--budgets", default="1000,5000,20000")
    parser.add_argument("--default-budget", type=int, default=5000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "offpolicy.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    demo, config, work = Path(args.demo), load_config(args.config), Path(args.work)
    budgets = sorted(int(b) for b in args.budgets.split(","))
    data_dir = demo / "data"
    data = attach_pv(load_list_data(data_dir, splits=present_splits(data_dir)), demo / "pretrain")
    generator = load_reranker(demo / "runs" / EVALUATOR)
    evaluator = generator.evaluator
    seed = config.seeds[0]
    models = {"PRM-BASE": load_reranker(demo / "runs" / f"prm_base_seed{seed}")}
    models["PRM 1 epoch"] = trained_prm(config, data, work, 1, evaluator)
    models["PRM (demo, 2 epochs)"] = load_reranker(demo / "runs" / f"prm_seed{seed}")
    models["PRM 4 epochs"] = trained_prm(config, data, work, 4, evaluator)
    models["evaluator-generator"] = generator
    pbm = fit_position_based([data.splits["train"], data.splits[EXPLORE]], len(data.items.topic))
    click_model = load_click_model(data_dir)
    world, rng = simulated_world(config.simulator)
    ctr = load_ctr(demo / "pretrain" / CTR_MODEL)

    # estimates[budget][estimator] -> (resamples, orderings, 3): value, low, high
    estimates = {b: {e: [] for e in ESTIMATORS} for b in budgets}
    true_sum, n_true = None, 0
    names: list[str] = []
    for resample in tqdm(range(args.resamples), desc="resamples of the bucket"):
        log = fresh_bucket(config, world, rng, budgets[-1], data.items, ctr)
        scores = ordering_scores(log.requests, models, demo, click_model, rng)
        names = list(scores)
        truth = np.array(
            [expected_clicks(click_model, log.requests, s).sum() for s in scores.values()]
        )
        true_sum = truth if true_sum is None else true_sum + truth
        n_true += len(log)
        ope = OffPolicyEvaluator(log, evaluator, pbm)
        terms = [ope.terms(s) for s in scores.values()]
        for budget in budgets:
            weights = bootstrap_weights(budget, N_BOOTSTRAP, seed=resample)
            for estimator in ESTIMATORS:
                rows = []
                for ordering in terms:
                    values = ordering[estimator].head(budget).value(weights)
                    rows.append([values[0], *np.percentile(values[1:], [2.5, 97.5])])
                estimates[budget][estimator].append(rows)
    truth = true_sum / n_true
    gain = truth[names.index("greedy oracle")] - truth[names.index("initial")]

    summary: dict = {}
    for budget in budgets:
        summary[budget] = {}
        for estimator in ESTIMATORS:
            values = np.array(estimates[budget][estimator])  # (R, O, 3)
            taus = [kendalltau(v[:, 0], truth).statistic for v in values]
            errors = 100 * np.abs(values[:, :, 0] - truth) / gain  # (R, O)
            covered = (values[:, :, 1] <= truth) & (truth <= values[:, :, 2])
            summary[budget][estimator] = {
                "kendall_tau": float(np.mean(taus)),
                "max_abs_error_pct_gain": float(errors.max(axis=1).mean()),
                "ci_coverage": float(covered.mean()),
                "mean_interval_width": float((values[:, :, 2] - values[:, :, 1]).mean()),
                "mean_estimate": dict(
                    zip(names, values[:, :, 0].mean(axis=0).round(4).tolist(), strict=True)
                ),
                "error_pct_gain_by_ordering": dict(
                    zip(
                        names,
                        (100 * (values[:, :, 0].mean(axis=0) - truth) / gain).round(1).tolist(),
                        strict=True,
                    )
                ),
            }

    print(f"\nTruth over {n_true} lists ({args.resamples} buckets of {budgets[-1]}):\n")
    print(
        markdown_table(
            ["ordering", "true clicks per list"],
            [[n, f"{t:.4f}"] for n, t in zip(names, truth, strict=True)],
        )
    )
    for budget in budgets:
        rows = [
            [
                name,
                f"{s['kendall_tau']:.3f}",
                f"{s['max_abs_error_pct_gain']:.1f}",
                f"{s['ci_coverage']:.2f}",
                f"{s['mean_interval_width']:.4f}",
            ]
            for name, s in summary[budget].items()
        ]
        print(f"\nBucket of {budget} lists, mean over {args.resamples} resamples:\n")
        header = [
            "estimator",
            "Kendall tau",
            "max |error| % of gain",
            "95% CI coverage",
            "CI width",
        ]
        print(markdown_table(header, rows))
    largest = budgets[-1]
    print(
        f"\nError per ordering (% of the oracle's gain, mean estimate - truth), {largest} lists:\n"
    )
    header = ["ordering", *ESTIMATORS]
    rows = [
        [
            n,
            *(f"{summary[largest][e]['error_pct_gain_by_ordering'][n]:+.1f}" for e in ESTIMATORS),
        ]
        for n in names
    ]
    print(markdown_table(header, rows))
    default = summary[args.default_budget]
    write_json(
        Path(args.out),
        {
            "budget": args.default_budget,
            "resamples": args.resamples,
            "orderings": dict(zip(names, truth.round(4).tolist(), strict=True)),
            "estimators": {
                name: {k: s[k] for k in ("kendall_tau", "max_abs_error_pct_gain", "ci_coverage")}
                for name, s in default.items()
            },
            "by_budget": {str(b): summary[b] for b in budgets},
            "machine": machine(),
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    print(f"\nwrote {args.out} ({time.perf_counter() - started:.0f} s; {machine()})")


if __name__ == "__main__":
    main()
