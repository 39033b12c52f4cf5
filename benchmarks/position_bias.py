"""Can a position-bias term learned from the logs debias PRM? Epoch by epoch, on the simulator.

    .venv/bin/python benchmarks/position_bias.py [--config configs/demo_v1.yaml] [--epochs 10]
        [--work runs/position_bias]
        [--variants pe,no_pe,tower,pe_tower,exploration,true_examination,pe_true_examination]

Trains PRM (with PV, the config's loss and training settings) in the variants below, epoch by
epoch with the shared Trainer, and prints after each epoch the Trainer's validation loss (what
training can select on) and the share of the oracle's gain over the initial ranking on the
validation lists (what the click model says, hidden from training). Every epoch's weights are
scored, not only the best ones that ``Trainer.fit`` would keep.

* ``pe``: the paper's input, PE of the initial rank;
* ``no_pe``: no position anywhere, a permutation-equivariant set scorer;
* ``tower``: no PE, plus the PAL position-bias tower (a logit offset per logged rank, learned
  with the clicks from zero and dropped when ranking);
* ``pe_tower``: PE of the initial rank and the learned tower, which compete for the rank;
* ``exploration``: no PE, the tower fixed at the log examination measured on the randomized
  exploration lists (prm.data.examination);
* ``true_examination``: no PE, the tower fixed at the simulator's true log examination
  (Eq. 7 of docs/simulator.md). Hidden knowledge: a reference, not a model;
* ``pe_true_examination``: PE, and the tower fixed at the true log examination (a reference).

Data and PV come from ``prm simulate`` and ``prm pretrain`` with the config, cached in --work.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from prm.config import ExperimentConfig, load_config
from prm.data.batch import ListDataset
from prm.data.examination import require_examination
from prm.data.loaders import ListData, load_list_data
from prm.data.simulator import ClickModel, load_click_model, simulate
from prm.evaluation.evaluate import expected_clicks, oracle_scores, score_lists
from prm.evaluation.report import markdown_table
from prm.pretrain.training import attach_pv, pretrain
from prm.registry import ModelSpec
from prm.training.trainer import fit_reranker

REPORTED_RANKS = (2, 5, 10, 20, 30)
# name: (PE of the initial rank, tower: None, "learned", "exploration" or "true").
VARIANTS = {
    "pe": (True, None),
    "no_pe": (False, None),
    "tower": (False, "learned"),
    "pe_tower": (True, "learned"),
    "exploration": (False, "exploration"),
    "true_examination": (False, "true"),
    "pe_true_examination": (True, "true"),
}


def prepared_data(config: ExperimentConfig, work: Path) -> tuple[ListData, Path]:
    """Simulated lists with PV attached, made once per work folder."""
    data_dir, pretrain_dir = work / "data", work / "pretrain"
    if not (data_dir / "stats.json").is_file():
        simulate(config.simulator, data_dir)
    data = load_list_data(data_dir)
    if not (pretrain_dir / "pv_test.npy").is_file():
        pretrain(config, data, pretrain_dir)
    return attach_pv(data, pretrain_dir), data_dir


def train_variant(
    name: str,
    config: ExperimentConfig,
    data: ListData,
    click_model: ClickModel,
    epochs: int,
    run_dir: Path,
) -> list[tuple[float, float]]:
    """(validation loss, % of the oracle's validation gain) after each epoch."""
    train, valid = data.splits["train"], data.splits["valid"]
    use_pe, tower = VARIANTS[name]
    examination = {
        "exploration": lambda: require_examination(data.examination, name),
        "true": lambda: click_model.examination(config.simulator.list_length),
    }.get(tower, lambda: None)()
    model_config = replace(
        config.model,
        use_pe=use_pe,
        position_bias_tower=tower is not None,
        position_bias="learned" if examination is None else "exploration",  # fixed at it
    )
    spec = ModelSpec.of("prm", model_config, train.d_feature, train.d_pv)
    curve = EpochCurve(OracleGain(click_model, valid), valid, name)
    train_config = replace(config.train, epochs=epochs)
    fit_every_epoch(spec, train_config, train, valid, run_dir, curve, examination=examination)
    return curve.points


def fit_every_epoch(spec, train_config, train, valid, run_dir, on_epoch, **options) -> None:
    """``fit_reranker`` for all of ``train_config.epochs`` (no early stopping), quietly, with
    ``on_epoch`` grading the model after each epoch."""
    epochs = train_config.epochs
    fit_reranker(
        spec,
        replace(train_config, patience=epochs),
        train,
        valid,
        run_dir,
        progress=False,
        reports=False,
        on_epoch=on_epoch,
        **options,
    )


class OracleGain:
    """% of the oracle's gain over the initial order that scores give on ``valid``; the initial
    and the oracle's expected clicks are computed once, not after every epoch."""

    def __init__(self, click_model: ClickModel, valid: ListDataset) -> None:
        self.click_model, self.valid = click_model, valid
        initial_scores = -valid.positions.astype(np.float32)
        self.initial = expected_clicks(click_model, valid, initial_scores).mean()
        self.oracle = expected_clicks(click_model, valid, oracle_scores(click_model, valid)).mean()

    def __call__(self, scores: np.ndarray) -> float:
        clicks = expected_clicks(self.click_model, self.valid, scores).mean()
        return 100 * (clicks - self.initial) / (self.oracle - self.initial)


class EpochCurve:
    """After each epoch: print and keep (validation loss, % of the oracle's validation gain).

    The validation lists are scored from their initial order, as in the demo.
    """

    def __init__(self, oracle_gain: OracleGain, valid: ListDataset, label: str) -> None:
        self.oracle_gain, self.valid, self.label = oracle_gain, valid, label
        self.points: list[tuple[float, float]] = []
        self.started = time.perf_counter()

    def __call__(self, epoch: int, model: torch.nn.Module, metrics: dict[str, float]) -> None:
        gain = self.oracle_gain(score_lists(model, self.valid))
        seconds, self.started = time.perf_counter() - self.started, time.perf_counter()
        print(
            f"{self.label} epoch {epoch}: loss {metrics['loss']:.4f}, gain {gain:.1f}% "
            f"({seconds:.0f} s)" + tower_offsets(model, self.oracle_gain.click_model)
        )
        self.points.append((metrics["loss"], gain))


def curve_table(curves: dict[str, list[tuple[float, float]]]) -> str:
    """Markdown: a row per epoch, a column per curve, cells "validation loss / % gain"."""
    epochs = len(next(iter(curves.values())))
    rows = [
        [str(epoch + 1), *(f"{c[epoch][0]:.4f} / {c[epoch][1]:.1f}" for c in curves.values())]
        for epoch in range(epochs)
    ]
    return markdown_table(["epoch", *curves], rows)


def tower_offsets(model: torch.nn.Module, click_model: ClickModel) -> str:
    """The tower's offsets at a few ranks beside the true log examination, '' without one."""
    if model.position_bias is None:
        return ""
    ranks = np.array(REPORTED_RANKS)
    learned = model.position_bias.offset.weight[ranks - 1, 0].detach().numpy()
    learned -= model.position_bias.offset.weight[0, 0].item()
    true = np.log(click_model.examination(ranks.max()))[ranks - 1]
    pairs = ", ".join(
        f"{r}: {a:.2f} ({b:.2f})" for r, a, b in zip(ranks, learned, true, strict=True)
    )
    return f"; tower offset vs rank 1 (true log examination): {pairs}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo_v1.yaml")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--work", default="runs/position_bias")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    config = load_config(args.config)
    data, data_dir = prepared_data(config, Path(args.work))
    click_model = load_click_model(data_dir)
    names = args.variants.split(",")
    work = Path(args.work)
    curves = {
        name: train_variant(name, config, data, click_model, args.epochs, work / f"variant_{name}")
        for name in names
    }
    print(
        f"\nPRM on {len(data.splits['train'])} simulated training lists ({args.config}); "
        f"per epoch: validation {config.train.loss} (the Trainer's, lists with a click) / "
        "% of the oracle's validation gain\n"
    )
    print(curve_table(curves))


if __name__ == "__main__":
    main()
