"""Training loop shared by every re-ranker: Adam, early stopping on validation, resumable.

Every epoch ends with a validation pass and an atomic checkpoint, so ``resume=True`` continues
from the last finished epoch with the same RNG states and reaches the same final weights as an
uninterrupted run. Only lists with at least one click are trained on (as in the PRM authors'
code: softmax cross-entropy has no target on a list without a click).
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from prm.config import EvalConfig, TrainConfig, to_dict
from prm.data.batch import ListDataset
from prm.evaluation.evaluate import evaluate_scores, score_lists
from prm.evaluation.plots import plot_training_curve
from prm.io import write_json
from prm.training.checkpoint import (
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from prm.training.losses import LOSSES

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainState:
    """Everything that changes during training; saved whole in every checkpoint."""

    epoch: int = 0  # finished epochs
    best_epoch: int = 0
    best_metric: float = -float("inf")  # the selection value, maximised (minus the loss)
    best_weights: dict[str, torch.Tensor] | None = None
    epochs_without_improvement: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> torch.Generator:
    """Seed the global RNGs (init, dropout) and return the generator that shuffles batches."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)


class Trainer:
    """Fits ``model`` (``forward(batch) -> (B, L) scores``) on ``train``, selecting on ``valid``."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        model_spec: dict[str, Any],
        eval_config: EvalConfig | None = None,
        progress: bool = True,
    ) -> None:
        self.model = model.to(config.device)
        self.config = config
        self.eval_config = eval_config or EvalConfig()
        self.run_dir = Path(run_dir)
        self.model_spec = model_spec  # how to rebuild the model: kind, config, input sizes
        self.progress = progress
        self.loss_fn = LOSSES[config.loss]
        self.shuffle = seed_everything(config.seed)
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.state = TrainState()

    def fit(self, train: ListDataset, valid: ListDataset, resume: bool = False) -> TrainState:
        checkpoint_path = self.run_dir / CHECKPOINT
        if resume and checkpoint_path.is_file():
            self._restore(load_checkpoint(checkpoint_path))
        train = train.subset(train.has_click())
        state = self.state
        while state.epoch < self.config.epochs and not self._stopped():
            started = time.perf_counter()
            train_loss = self._train_epoch(train, state.epoch + 1)
            metrics = self.validate(valid)
            metric = self._selection_value(metrics)
            state.epoch += 1
            state.history.append(
                {
                    "epoch": state.epoch,
                    "train_loss": train_loss,
                    **{f"valid_{k}": v for k, v in metrics.items()},
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
            if metric > state.best_metric:
                state.best_metric, state.best_epoch = metric, state.epoch
                state.best_weights = copy.deepcopy(self.model.state_dict())
                state.epochs_without_improvement = 0
            else:
                state.epochs_without_improvement += 1
            save_checkpoint(checkpoint_path, self._checkpoint())
            self._write_reports()
        if state.best_weights is not None:
            self.model.load_state_dict(state.best_weights)
        return state

    def _stopped(self) -> bool:
        return self.state.epochs_without_improvement >= self.config.patience

    def _train_epoch(self, train: ListDataset, epoch: int) -> float:
        self.model.train()
        total, batches = 0.0, 0
        n_batches = -(-len(train) // self.config.batch_size)
        bar = tqdm(
            train.iter_batches(self.config.batch_size, shuffle=True, generator=self.shuffle),
            total=n_batches,
            desc=f"epoch {epoch}",
            disable=not self.progress,
            leave=False,
        )
        for batch in bar:
            batch = batch.to(self.config.device)
            loss = self.model.loss(batch, self.loss_fn)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total, batches = total + loss.item(), batches + 1
            bar.set_postfix(loss=f"{total / batches:.4f}")
        return total / max(batches, 1)

    def _selection_value(self, metrics: dict[str, float]) -> float:
        """The validation figure to maximise: a ranking metric, or minus the loss."""
        name = self.config.selection_metric
        if name == "loss":
            return -metrics["loss"]
        if name not in metrics:
            raise ValueError(f"selection_metric {name!r} is not one of {sorted(metrics)}")
        return metrics[name]

    @torch.no_grad()
    def validate(self, valid: ListDataset) -> dict[str, float]:
        """Ranking metrics and loss over validation lists with a click (the selection set)."""
        scores = score_lists(self.model, valid, device=self.config.device)
        metrics = evaluate_scores(scores, valid, self.eval_config)
        clicked = valid.subset(valid.has_click())
        total, lists = 0.0, 0
        for batch in clicked.iter_batches(2048):
            batch = batch.to(self.config.device)
            loss = self.model.loss(batch, self.loss_fn)
            total, lists = total + loss.item() * len(batch.list_ids), lists + len(batch.list_ids)
        metrics["loss"] = total / max(lists, 1)
        return metrics

    def _checkpoint(self) -> dict[str, Any]:
        return {
            "model_spec": self.model_spec,
            "train_config": to_dict(self.config),
            "weights": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "state": self.state.__dict__,
            "rng": rng_state(self.shuffle),
        }

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["weights"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.state = TrainState(**checkpoint["state"])
        restore_rng_state(checkpoint["rng"], self.shuffle)

    def _best_history_row(self) -> dict[str, float]:
        return self.state.history[self.state.best_epoch - 1] if self.state.best_epoch else {}

    def _write_reports(self) -> None:
        write_json(
            self.run_dir / "metrics.json",
            {
                "best_epoch": self.state.best_epoch,
                "selection_metric": self.config.selection_metric,
                "best_valid": self._best_history_row().get(f"valid_{self.config.selection_metric}"),
                "history": self.state.history,
            },
        )
        plot_training_curve(
            self.state.history, self.config.selection_metric, self.run_dir / "training_curve.png"
        )
