"""How well does the evaluator, trained on the logs, predict the clicks of orderings it never saw?

    .venv/bin/python benchmarks/evaluator_accuracy.py [--demo runs/demo]
        [--config configs/demo.yaml]

Reads a finished `prm demo` folder (data, PV caches, the trained evaluator-generator, PRM-BASE
and PRM runs) and, on the test lists, grades the evaluator against the simulator's hidden
truth, which nothing in the demo's training read:

1. for orderings from bad to the greedy oracle, the evaluator's predicted clicks per list
   against the true expected clicks, and Kendall's tau between the two rankings of orderings;
2. how the confound between logged rank and appeal was handled: the evaluator's learned
   examination beside the truth (Eq. 7 of docs/simulator.md) and beside the click-rate ratios
   of the randomized exploration bucket it started from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from offpolicy_accuracy import ordering_scores
from scipy.stats import kendalltau

from prm.config import load_config
from prm.data.loaders import load_list_data, present_splits
from prm.data.simulator import load_click_model
from prm.evaluation.estimate import predicted_clicks
from prm.evaluation.evaluate import expected_clicks
from prm.evaluation.report import markdown_table
from prm.pipeline import EVALUATOR, load_reranker
from prm.pretrain.training import attach_pv

REPORTED_RANKS = (2, 5, 10, 20, 30)


def graded_models(demo: Path, seeds: tuple[int, ...]) -> dict:
    """The demo's trained re-rankers, PRM-BASE and PRM per seed, then the evaluator-generator."""
    models = {}
    for name in ("prm_base", "prm"):
        for seed in seeds:
            run = demo / "runs" / f"{name}_seed{seed}"
            if run.is_dir():
                models[f"{name} seed {seed}"] = load_reranker(run)
    models["evaluator-generator"] = load_reranker(demo / "runs" / EVALUATOR)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="runs/demo", help="folder written by `prm demo`")
    parser.add_argument("--config", default="configs/demo.yaml")
    args = parser.parse_args()
    demo, config = Path(args.demo), load_config(args.config)
    data_dir = demo / "data"
    data = attach_pv(load_list_data(data_dir, splits=present_splits(data_dir)), demo / "pretrain")
    test = data.splits["test"]
    click_model = load_click_model(data_dir)
    models = graded_models(demo, config.seeds)
    generator = models["evaluator-generator"]

    rows, predicted, true = [], [], []
    scores_by_ordering = ordering_scores(test, models, demo, click_model, np.random.default_rng(0))
    for name, scores in scores_by_ordering.items():
        estimate = predicted_clicks(generator.evaluator, test, scores).mean()
        truth = expected_clicks(click_model, test, scores).mean()
        predicted.append(estimate)
        true.append(truth)
        rows.append([name, f"{truth:.4f}", f"{estimate:.4f}", f"{estimate - truth:+.4f}"])
    tau = kendalltau(predicted, true).statistic
    gain = true[-1] - true[3]  # oracle minus initial
    error = 100 * np.abs(np.array(predicted) - np.array(true)) / gain
    print(f"\nEvaluator on {len(test)} test lists ({args.demo}); orderings sorted as listed\n")
    print(markdown_table(["ordering", "true clicks", "predicted", "error"], rows))
    print(
        f"\nKendall tau (predicted vs true, {len(rows)} orderings): {tau:.3f}; largest error "
        f"{error.max():.1f} % of the oracle's gain over the initial order"
    )

    ranks = np.array(REPORTED_RANKS)
    learned = np.log(generator.evaluator.relative_examination(ranks.max()))[ranks - 1]
    truth_exam = np.log(click_model.examination(ranks.max()))[ranks - 1]
    bucket = np.log(data.examination)[ranks - 1] if data.examination is not None else None
    exam_rows = [["evaluator (learned)", *(f"{v:.2f}" for v in learned)]]
    if bucket is not None:
        exam_rows.append(["exploration bucket click-rate ratio (its start)"])
        exam_rows[-1] += [f"{v:.2f}" for v in bucket]
    exam_rows.append(["truth (Eq. 7)", *(f"{v:.2f}" for v in truth_exam)])
    print("\nLog examination against rank 1:\n")
    print(markdown_table(["", *(f"rank {r}" for r in ranks)], exam_rows))


if __name__ == "__main__":
    main()
