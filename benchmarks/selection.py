"""Does choosing PRM's epoch from the logs pick what the hidden truth would have picked?

    .venv/bin/python benchmarks/selection.py [--demo runs/demo] [--config configs/demo.yaml]
        [--seeds 0,1,2] [--models prm,prm_base]

Reads a finished `prm demo` folder (data, PV caches, the trained evaluator) and retrains PRM
(and PRM-BASE) with the demo's settings, epoch by epoch, recording after each epoch:

- the validation click likelihood (the Trainer's loss) and the evaluator's predicted clicks
  of the validation lists in the model's order: what training may select on;
- the true share of the oracle's gain on the validation and on the test lists (hidden truth).

Then, per seed, the test gain of the epoch each rule selects: the evaluator's estimate (what
`make demo` uses), the validation loss, and the validation lists' true expected clicks
(possible only on a simulator: the reference the log-only rules are judged against).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from position_bias import OracleGain, fit_every_epoch

from prm.config import load_config
from prm.data.loaders import load_list_data
from prm.data.simulator import load_click_model
from prm.evaluation.estimate import EstimatedClicks
from prm.evaluation.evaluate import score_lists
from prm.evaluation.report import markdown_table
from prm.pipeline import EVALUATOR, load_reranker
from prm.pretrain.training import attach_pv
from prm.registry import ModelSpec

RULES = ("estimated clicks (logs)", "validation loss (logs)", "true clicks (hidden truth)")


def epoch_curve(config, data, model_config, seed, evaluator, gains, run_dir) -> list[dict]:
    """Per epoch: validation loss and estimate, true validation and test gain."""
    train, valid, test = (data.splits[s] for s in ("train", "valid", "test"))
    spec = ModelSpec.of("prm", model_config, train.d_feature, train.d_pv)
    examination = (
        evaluator.relative_examination(model_config.max_positions)
        if model_config.position_bias == "evaluator"
        else data.examination
    )
    rows = []

    def grade(epoch: int, model: torch.nn.Module, metrics: dict[str, float]) -> None:
        rows.append(
            {
                "loss": metrics["loss"],
                "estimate": metrics["estimated_clicks"],
                "valid_gain": gains["valid"](score_lists(model, valid)),
                "test_gain": gains["test"](score_lists(model, test)),
            }
        )
        print(
            f"seed {seed} {'prm' if spec.uses_pv else 'prm_base'} epoch {epoch}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in rows[-1].items()),
            flush=True,
        )

    fit_every_epoch(
        spec,
        replace(config.train, seed=seed),
        train,
        valid,
        run_dir,
        grade,
        examination=examination,
        estimator=EstimatedClicks(evaluator),
    )
    return rows


def selected(rows: list[dict]) -> dict[str, dict]:
    """The epoch row each rule picks."""
    return {
        RULES[0]: max(rows, key=lambda r: r["estimate"]),
        RULES[1]: min(rows, key=lambda r: r["loss"]),
        RULES[2]: max(rows, key=lambda r: r["valid_gain"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="runs/demo", help="folder written by `prm demo`")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--seeds", default=None, help="default: the config's seeds")
    parser.add_argument("--models", default="prm,prm_base")
    parser.add_argument("--work", default="runs/selection")
    args = parser.parse_args()
    config, demo = load_config(args.config), Path(args.demo)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(config.seeds)
    data = attach_pv(load_list_data(demo / "data"), demo / "pretrain")
    click_model = load_click_model(demo / "data")
    gains = {s: OracleGain(click_model, data.splits[s]) for s in ("valid", "test")}
    evaluator = load_reranker(demo / "runs" / EVALUATOR).evaluator
    variants = {"prm": config.model, "prm_base": replace(config.model, use_pv=False)}
    rows, picks = [], {rule: [] for rule in RULES}
    for name in args.models.split(","):
        for seed in seeds:
            curve = epoch_curve(
                config,
                data,
                variants[name],
                seed,
                evaluator,
                gains,
                Path(args.work) / f"{name}_seed{seed}",
            )
            choice = selected(curve)
            rows.append(
                [name, str(seed)]
                + [f"{curve.index(choice[r]) + 1}: {choice[r]['test_gain']:.1f}" for r in RULES]
            )
            if name == "prm":
                for rule in RULES:
                    picks[rule].append(choice[rule]["test_gain"])
    print("\nEpoch chosen by each rule: test % of the oracle's gain\n")
    print(markdown_table(["model", "seed", *RULES], rows))
    if picks[RULES[0]]:
        gap = np.mean(picks[RULES[2]]) - np.mean(picks[RULES[0]])
        print(
            f"\nPRM, mean over seeds: logs-selected {np.mean(picks[RULES[0]]):.1f} %, "
            f"loss-selected {np.mean(picks[RULES[1]]):.1f} %, truth-selected "
            f"{np.mean(picks[RULES[2]]):.1f} % (truth minus logs: {gap:+.1f} points)"
        )


if __name__ == "__main__":
    main()
