"""The demo trained in fp32 and in bf16 (``--precision bf16``), graded alike: same quality?

    .venv/bin/python benchmarks/precision_quality.py            # both demos, ~20 min on 2 cores

Runs ``prm demo --config configs/demo.yaml`` twice, with ``train.precision`` fp32 and bf16 (the
evaluator, PRM-BASE and PRM are trained in that precision; simulation and pre-training are the
same), into ``--out``/fp32 and ``--out``/bf16; a folder that already holds a finished demo's
results.json is read instead of run again. Prints, per trained model, the test lists' true
expected clicks and share of the greedy oracle's gain (mean ± std over the config's seeds), the
validation value each seed's epoch was selected on (the estimate of that precision's own
evaluator: logs only) and validation NDCG@10 at that epoch, and Welch's t-tests of bf16
against fp32 over seeds on the share of the oracle's gain and on validation NDCG@10.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import stats

from prm.config import load_config
from prm.experiments.demo import demo

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"prm_base": "PRM-BASE", "prm": "PRM", "generator_evaluator": "evaluator-generator"}


def demo_results(precision: str, folder: Path, config_path: Path) -> dict:
    """The demo's results.json in that precision, in ``folder``; run first unless there."""
    results = folder / "results.json"
    if not results.is_file():
        config = load_config(config_path)
        config = replace(config, train=replace(config.train, precision=precision))
        print(f"running the demo in {precision} into {results.parent} ...", file=sys.stderr)
        demo(config, results.parent, progress=False)
    return json.loads(results.read_text())


def per_seed(results: dict, model: str, folder: Path) -> tuple[np.ndarray, ...]:
    """One entry per seed: % of the oracle's gain; the validation value the epoch was selected
    on, and validation NDCG@10 at that epoch (none for the evaluator-generator)."""
    gains = np.array(results["models"][model]["oracle_gain_pct_per_seed"])
    seeds = results["config"]["seeds"] if model in results.get("selected", {}) else []
    selected, ndcg = [], []
    for seed in seeds:
        metrics = json.loads((folder / "runs" / f"{model}_seed{seed}" / "metrics.json").read_text())
        selected.append(metrics["best_valid"])
        ndcg.append(metrics["history"][metrics["best_epoch"] - 1]["valid_ndcg@10"])
    return gains, np.array(selected), np.array(ndcg)


def mean_std(values: np.ndarray, digits: int) -> str:
    if len(values) == 0:
        return "–"
    if len(values) < 2:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--out", default="runs/precision_quality", help="demo folders go here")
    args = parser.parse_args()
    started = time.perf_counter()
    folders = {p: Path(args.out) / p for p in ("fp32", "bf16")}
    results = {p: demo_results(p, folder, Path(args.config)) for p, folder in folders.items()}

    print(
        "| model | precision | true expected clicks (test) | % of oracle gain | each seed "
        "| selected on: estimated clicks (valid) | NDCG@10 (valid) "
        "| p, bf16 vs fp32 (Welch: % of gain / NDCG@10) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for model, name in MODELS.items():
        seeds = {p: per_seed(results[p], model, folders[p]) for p in results}
        p_value = (
            " / ".join(
                f"{stats.ttest_ind(seeds['bf16'][i], seeds['fp32'][i], equal_var=False).pvalue:.2f}"
                for i in (0, 2)
            )
            if min(len(s[0]) for s in seeds.values()) > 1
            else "– (trained once)"
        )
        for precision, result in results.items():
            row = result["models"][model]
            clicks = f"{row['expected_clicks']:.4f}"
            if row["seeds"] > 1:
                clicks += f" ± {row['expected_clicks_std']:.4f}"
            seed_gains, selected, ndcg = per_seed(result, model, folders[precision])
            each = " / ".join(f"{g:.1f}" for g in seed_gains)
            print(
                f"| {name} | {precision} | {clicks} | {mean_std(seed_gains, 1)} | {each} "
                f"| {mean_std(selected, 4)} | {mean_std(ndcg, 4)} "
                f"| {p_value if precision == 'bf16' else ''} |"
            )
    seconds = {p: r["seconds"] for p, r in results.items()}
    print(
        f"\nseconds (fp32 / bf16): evaluator {seconds['fp32']['evaluator']} / "
        f"{seconds['bf16']['evaluator']}, PRM-BASE and PRM {seconds['fp32']['train']} / "
        f"{seconds['bf16']['train']}; machine: {results['bf16']['machine']}"
    )
    print(f"wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
