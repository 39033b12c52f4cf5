"""Does PRM learn more from the logs of lists it showed itself? Round by round, on the simulator.

    .venv/bin/python benchmarks/own_order_logs.py [--config configs/demo_v1.yaml] [--work runs/obs]
        [--rounds 3] [--epochs 8]

Round 1 trains PRM (the config's model and training settings) on the simulator's logs: the
initial lists with their clicks, as the demo does. Each later round shows the same training
requests in the order of the previous round's PRM, draws fresh clicks from the click model
(Eq. 7-9 of docs/simulator.md) and trains a new PRM from scratch on those logs only, as a
deployed re-ranker is retrained on the lists it showed. The PRM that shows a round's lists is
the previous round's after ``train.epochs`` epochs, the model the demo would deploy.

Prints, after each epoch of each round, the Trainer's validation loss and the share of the
oracle's gain on the validation lists, which every round scores from their initial order, as
the demo does. Data and PV are made as in benchmarks/position_bias.py and shared with it
through --work.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from position_bias import EpochCurve, OracleGain, curve_table, fit_every_epoch, prepared_data

from prm.config import ExperimentConfig, load_config
from prm.data.batch import ListDataset
from prm.data.simulator import ClickModel, load_click_model
from prm.evaluation.evaluate import score_lists
from prm.evaluation.metrics import rank_order
from prm.registry import ModelSpec


def logged_in_order(
    lists: ListDataset, scores: np.ndarray, click_model: ClickModel, seed: int
) -> ListDataset:
    """The lists shown in the order of ``scores``, with clicks drawn from the click model."""
    shown = lists.shown_in_order(rank_order(scores, lists.mask, lists.positions))
    probabilities = click_model.click_probabilities(shown.user_ids, shown.item_ids, shown.mask)
    clicks = np.random.default_rng(seed).random(probabilities.shape) < probabilities
    return shown.with_labels(clicks)


def train_round(
    config: ExperimentConfig,
    train: ListDataset,
    valid: ListDataset,
    click_model: ClickModel,
    epochs: int,
    run_dir: Path,
    label: str,
) -> tuple[list[tuple[float, float]], np.ndarray]:
    """Per-epoch (validation loss, % of the oracle's validation gain), and the training lists'
    scores after ``config.train.epochs`` epochs (the order the next round shows)."""
    spec = ModelSpec.of("prm", config.model, train.d_feature, train.d_pv)
    curve = EpochCurve(OracleGain(click_model, valid), valid, label)
    deployed = {}

    def grade(epoch: int, model: torch.nn.Module, metrics: dict[str, float]) -> None:
        curve(epoch, model, metrics)
        if epoch == config.train.epochs:
            deployed["scores"] = score_lists(model, train)

    train_config = replace(config.train, epochs=max(epochs, config.train.epochs))
    fit_every_epoch(spec, train_config, train, valid, run_dir, grade)
    return curve.points[:epochs], deployed["scores"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo_v1.yaml")
    parser.add_argument("--work", default="runs/own_order_logs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    config = load_config(args.config)
    work = Path(args.work)
    data, data_dir = prepared_data(config, work)
    click_model = load_click_model(data_dir)
    train, valid = data.splits["train"], data.splits["valid"]
    curves = {}
    for round_ in range(1, args.rounds + 1):
        curve, scores = train_round(
            config, train, valid, click_model, args.epochs, work / f"round_{round_}",
            f"round {round_}",
        )  # fmt: skip
        curves[f"round {round_}"] = curve
        if round_ < args.rounds:
            train = logged_in_order(train, scores, click_model, seed=round_ + 1)
            print(
                f"round {round_ + 1} logs: {train.labels.sum(axis=1).mean():.4f} clicks a list "
                f"(round 1: {data.splits['train'].labels.sum(axis=1).mean():.4f})"
            )
    print(
        f"\nPRM ({args.config}) retrained on the logs of its own lists; per epoch: validation "
        f"{config.train.loss} / % of the oracle's validation gain\n"
    )
    print(curve_table(curves))


if __name__ == "__main__":
    main()
