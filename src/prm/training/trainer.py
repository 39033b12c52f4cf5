"""Training loop shared by every re-ranker: Adam, early stopping on validation, resumable.

Every epoch ends with a validation pass and an atomic checkpoint, so ``resume=True`` continues
from the last finished epoch with the same RNG states and reaches the same final weights as an
uninterrupted run. Only lists with at least one click are trained on (as in the PRM authors'
code: softmax cross-entropy has no target on a list without a click).

Inside a process group (:mod:`prm.training.distributed`) the same loop runs data-parallel
(DDP): ``batch_size`` is the global batch, each process trains on its part of it, every
process sees the same validation metrics (rank 0's, broadcast) and so stops at the same
epoch, and rank 0 alone writes the checkpoint, holding every process's RNG states.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from prm.allocator import keep_freed_memory
from prm.config import ConfigError, EvalConfig, TrainConfig, to_dict
from prm.data.batch import ListBatch, ListDataset, TrainingLists
from prm.data.streaming import InMemoryLists, prefetch, to_device
from prm.data.tables import DataError
from prm.evaluation.evaluate import evaluate_scores, score_lists
from prm.evaluation.plots import plot_training_curve
from prm.io import remove_stale_temporaries, write_json
from prm.registry import ModelSpec
from prm.threads import follow_load
from prm.training import distributed
from prm.training.checkpoint import (
    CHECKPOINT_KEYS,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from prm.training.losses import LOSSES, Loss
from prm.training.precision import BF16Copy

CHECKPOINT = "checkpoint.pt"
LOG_EVERY = 50  # steps between progress-bar loss updates (each one waits for the device)
# Train settings a resumed run may change: where it runs, and how long it goes on.
RESUME_MAY_CHANGE = ("device", "compile", "epochs", "patience")


class DivergedError(DataError):
    """Training produced a non-finite loss: the run stops before saving that epoch (a
    DataError, as extreme inputs are the usual cause: the CLI's exit 2)."""


@dataclass
class TrainState:
    """Everything that changes during training; saved whole in every checkpoint."""

    epoch: int = 0  # finished epochs
    best_epoch: int = 0
    best_metric: float = -float("inf")  # the selection value, maximised (minus the loss)
    best_weights: dict[str, torch.Tensor] | None = None
    epochs_without_improvement: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int, rank: int = 0) -> torch.Generator:
    """Seed the global RNGs (init, dropout; offset by ``rank`` so processes drop different
    units) and return the generator that shuffles batches, the same in every process."""
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)
    return torch.Generator().manual_seed(seed)


class LossStep(nn.Module):
    """The model's training loss as a forward pass, so that DDP synchronises the gradients it
    produces and torch.compile sees the whole step."""

    def __init__(self, model: nn.Module, loss_fn: Loss) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: ListBatch) -> torch.Tensor:
        return self.model.loss(batch, self.loss_fn)


class Trainer:
    """Builds the re-ranker of ``spec`` and fits it on ``train``, selecting on ``valid``."""

    def __init__(
        self,
        spec: ModelSpec,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        examination: np.ndarray | None = None,
        eval_config: EvalConfig | None = None,
        progress: bool = True,
        reports: bool = True,
        estimator: Callable[[np.ndarray, ListDataset], float] | None = None,
        on_epoch: Callable[[int, nn.Module, dict[str, float]], None] | None = None,
    ) -> None:
        """The model is initialised from ``config.seed`` and takes ``examination`` (e_k / e_1
        per rank) as it uses one (``Reranker.take_examination``). ``reports=False`` skips the
        per-epoch metrics.json and training-curve PNG (a suite of hundreds of small runs keeps
        the history in its own records instead). ``estimator`` maps validation scores to an
        estimate of their expected clicks from the logs
        (:class:`prm.evaluation.estimate.EstimatedClicks`), reported as ``estimated_clicks``
        and selectable with ``selection_metric: estimated_clicks``. ``on_epoch(epoch, model,
        validation metrics)`` runs after each epoch's validation (a benchmark grades the model
        there)."""
        if config.selection_metric == "estimated_clicks" and estimator is None:
            raise ValueError(
                "selection_metric 'estimated_clicks' needs an evaluator trained on the logs "
                "(the demo trains one; see prm.evaluation.estimate)"
            )
        fixed = spec.config.get("position_bias") in ("exploration", "evaluator")
        if spec.config.get("position_bias_tower") and fixed and examination is None:
            raise ValueError(
                f"position_bias {spec.config['position_bias']!r} needs its examination curve: "
                "the exploration lists (lists_explore) or a trained evaluator (--evaluator)"
            )
        keep_freed_memory()  # each step reuses the last one's memory (prm/allocator.py)
        torch.manual_seed(config.seed)
        model = spec.build()
        if examination is not None:
            model.take_examination(examination)
        self.estimator = estimator
        self.on_epoch = on_epoch
        self.reports = reports
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.device = distributed.device(config.device)
        self.model = model.to(self.device)
        self.config = config
        self.eval_config = eval_config or EvalConfig()
        self.run_dir = Path(run_dir)
        self.spec = spec
        self.progress = progress and self.rank == 0
        self.loss_fn = LOSSES[config.loss]
        self.shuffle = seed_everything(config.seed, self.rank)
        # Fused: one multi-threaded kernel a step instead of many small ones, whose thread
        # barriers stall when other jobs share the CPU (docs/scaling.md, "CPU notes").
        self.optimizer = torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad],
            lr=config.lr,
            weight_decay=config.weight_decay,
            fused=True,
        )
        # bf16: the step trains a bf16 copy; Adam steps this fp32 model (training/precision.py).
        self.bf16 = BF16Copy(self.model) if config.precision == "bf16" else None
        step: nn.Module = LossStep(self.bf16.module if self.bf16 else self.model, self.loss_fn)
        if self.world > 1:
            step = DistributedDataParallel(step)  # broadcasts rank 0's initial weights
        self.step = torch.compile(step) if config.compile else step
        self.state = TrainState()

    def fit(
        self, train: ListDataset | TrainingLists, valid: ListDataset, resume: bool = False
    ) -> TrainState:
        """Train until ``epochs`` or early stopping; the model ends with the best weights.

        ``train`` is a split in memory, or lists streamed from shards (a ``ListStream``).
        """
        checkpoint_path = self.run_dir / CHECKPOINT
        if self.rank == 0:  # writes killed mid-way by an earlier run of this folder
            remove_stale_temporaries(self.run_dir)
        if resume:
            # Rank 0 reads, all restore: the run folder need only exist where rank 0 runs.
            found = self.rank == 0 and checkpoint_path.is_file()
            checkpoint = distributed.broadcast_from_first(
                load_checkpoint(checkpoint_path, CHECKPOINT_KEYS) if found else None
            )
            if checkpoint is not None:
                self._restore(checkpoint)
        lists = (
            InMemoryLists(train, clicked_only=not self._learns_from_lists_without_click())
            if isinstance(train, ListDataset)
            else train
        )
        state = self.state
        # A run killed after its last checkpoint but before its reports resumes with every
        # epoch done: it must still leave the reports complete.
        reports_behind = resume and bool(state.history)
        while state.epoch < self.config.epochs and not self._stopped():
            started = time.perf_counter()
            train_loss = self.train_epoch(lists, state.epoch + 1)
            metrics = self.validate(valid)
            metric = self._selection_value(metrics)
            self._check_finite(state.epoch + 1, train_loss, metrics["loss"])
            state.epoch += 1
            if self.on_epoch is not None:
                self.on_epoch(state.epoch, self.model, metrics)
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
            checkpoint = self._checkpoint()
            if self.rank == 0:
                save_checkpoint(checkpoint_path, checkpoint)
                if self.reports:
                    self._write_reports()
            reports_behind = False
        if reports_behind and self.rank == 0 and self.reports:
            self._write_reports()
        if state.best_weights is not None:
            self.model.load_state_dict(state.best_weights)
        return state

    def _check_finite(self, epoch: int, train_loss: float, valid_loss: float) -> None:
        """Stop at a NaN or infinite loss: the weights are lost, and a metric of the scores
        they give (NaN ties) would still look like a result."""
        if not (math.isfinite(train_loss) and math.isfinite(valid_loss)):
            raise DivergedError(
                f"non-finite loss in epoch {epoch} (training {train_loss}, validation "
                f"{valid_loss}): an input holds extreme values (features, PV) or train.lr "
                f"({self.config.lr}) is too high; epoch {epoch} was not saved"
            )

    def _learns_from_lists_without_click(self) -> bool:
        return getattr(self.model, "trains_on_lists_without_click", False)

    def _stopped(self) -> bool:
        return self.state.epochs_without_improvement >= self.config.patience

    def train_epoch(self, train: TrainingLists, epoch: int) -> float:
        """One pass over the training lists; returns the mean of the global batches' losses."""
        self.model.train()
        batch_size = self.config.batch_size
        steps = train.steps(batch_size, self.world)
        batches = train.local_batches(batch_size, self.shuffle, self.rank, self.world)
        # This process's share of each global batch's mean loss, summed over steps.
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        bar = tqdm(
            prefetch(batches, self.device),
            total=steps,
            desc=f"epoch {epoch}",
            disable=not self.progress,
            leave=False,
        )
        if self.bf16:
            self.bf16.load_master()
        for step, (batch, weight) in enumerate(bar, 1):
            follow_load()
            self._set_learning_rate(epoch - 1 + (step - 1) / max(steps, 1))
            batch = to_device(batch, self.device)
            loss = self.step(self.bf16.inputs(batch) if self.bf16 else batch)
            self.optimizer.zero_grad(set_to_none=True)
            (loss * weight).backward()
            if self.bf16:
                self.bf16.gradients_to_master()
            self.optimizer.step()
            if self.bf16:
                self.bf16.update_copy()
            total += loss.detach() * (weight / self.world)
            if self.progress and step % LOG_EVERY == 0:
                bar.set_postfix(loss=f"{total.item() * self.world / step:.4f}")
        return distributed.all_reduce_sum(total).item() / max(steps, 1)

    def _set_learning_rate(self, epochs_done: float) -> None:
        """The schedule's rate after ``epochs_done`` (fractional) epochs; a function of the
        progress alone, so a resumed run follows the same rates."""
        rate = self.config.lr
        if self.config.lr_schedule == "linear":
            rate *= 1.0 - epochs_done / self.config.epochs
        for group in self.optimizer.param_groups:
            group["lr"] = rate

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
        """Ranking metrics and loss over validation lists with a click (the selection set).

        Each process scores its slice of the lists; rank 0 computes the metrics from all the
        scores and broadcasts them, so every process takes the same early-stopping decision.
        """
        mine = valid.subset(np.array_split(np.arange(len(valid)), self.world)[self.rank])
        learns_all = self._learns_from_lists_without_click()
        clicked = mine if learns_all else mine.subset(mine.has_click())
        total = 0.0
        scores = score_lists(self.model, mine, device=self.device)
        for batch in clicked.iter_batches(2048):
            loss = self.model.loss(batch.to(self.device), self.loss_fn)
            total += loss.item() * len(batch.list_ids)
        parts = distributed.gather_to_first((scores, total, len(clicked)))
        metrics = None
        if parts is not None:
            all_scores, totals, counts = zip(*parts, strict=True)
            all_scores = np.concatenate(all_scores)
            metrics = evaluate_scores(all_scores, valid, self.eval_config)
            if self.estimator is not None:
                metrics["estimated_clicks"] = self.estimator(all_scores, valid)
            metrics["loss"] = sum(totals) / max(sum(counts), 1)
        return distributed.broadcast_from_first(metrics)

    def _checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint on rank 0 (None elsewhere); every process must call it, since it
        gathers the RNG states of all of them."""
        rng = distributed.gather_to_first(rng_state(self.shuffle))
        if rng is None:
            return None
        return {
            "model_spec": self.spec.to_dict(),
            "train_config": to_dict(self.config),
            "weights": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "state": self.state.__dict__,
            "rng": rng,  # one entry per process, in rank order
        }

    def _check_same_run(self, checkpoint: dict[str, Any]) -> None:
        """Resume only the run the checkpoint holds: refuse a config that differs, by key
        (an optimizer state and a schedule made for other settings would be kept silently)."""
        saved_spec, spec = checkpoint.get("model_spec", {}), self.spec.to_dict()
        saved_train, train = checkpoint.get("train_config", {}), to_dict(self.config)
        section = "model" if spec["kind"] == "prm" else spec["kind"]
        differ = [
            f"train.{key} (checkpoint {saved_train.get(key)!r}, now {train[key]!r})"
            for key in train
            if key not in RESUME_MAY_CHANGE and saved_train.get(key) != train[key]
        ]
        saved_config, config = saved_spec.get("config", {}), spec["config"]
        differ += [
            f"{section}.{key} (checkpoint {saved_config.get(key)!r}, now {config.get(key)!r})"
            for key in sorted(config.keys() | saved_config.keys())
            if saved_config.get(key) != config.get(key)
        ]
        differ += [
            f"{key} (checkpoint {saved_spec.get(key)!r}, now {spec[key]!r})"
            for key in ("kind", "d_feature", "d_pv")
            if saved_spec.get(key) != spec[key]
        ]
        if differ:
            raise ConfigError(
                f"--resume: {self.run_dir / CHECKPOINT} was trained with another config: "
                f"{'; '.join(differ)}. Resume with the run's config, or train into a new folder"
            )

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self._check_same_run(checkpoint)
        saved = len(checkpoint["rng"])
        if saved != self.world:
            raise ValueError(
                f"the checkpoint holds the RNG states of {saved} process(es); resume it with "
                f"{saved} (--nproc {saved}) to continue exactly, or start a new run folder"
            )
        self.model.load_state_dict(checkpoint["weights"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.state = TrainState(**checkpoint["state"])
        restore_rng_state(checkpoint["rng"][self.rank], self.shuffle)

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


def fit_reranker(
    spec: ModelSpec,
    config: TrainConfig,
    train: ListDataset | TrainingLists,
    valid: ListDataset,
    run_dir: str | Path,
    *,
    resume: bool = False,
    **options: Any,
) -> tuple[nn.Module, TrainState]:
    """The one way to train any registered re-ranker: build it from ``spec``, train it and
    return its best-on-validation weights, in eval mode, with the training state (epochs,
    history). ``options`` are :class:`Trainer`'s (examination, eval_config, progress,
    reports, estimator, on_epoch)."""
    trainer = Trainer(spec, config, run_dir, **options)
    state = trainer.fit(train, valid, resume=resume)
    return trainer.model.eval(), state
