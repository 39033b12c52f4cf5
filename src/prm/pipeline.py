"""The end-to-end job as library calls: simulate, pre-train PV, train re-rankers, compare.

The CLI (``prm simulate|pretrain|train|evaluate|demo``) is a thin layer over these functions,
so a notebook can run the same steps with the same artifacts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prm.config import ExperimentConfig, PRMConfig
from prm.data.batch import ListDataset, concat_lists
from prm.data.loaders import ListData
from prm.models.evaluator import ContextClickModel
from prm.rankers.evaluator_generator import GeneratorEvaluator
from prm.registry import ModelSpec
from prm.training.checkpoint import load_checkpoint
from prm.training.trainer import CHECKPOINT, fit_reranker

EVALUATOR = "generator_evaluator"  # the registered kind and the demo's row name


def load_reranker(run_dir: str | Path) -> torch.nn.Module:
    """The best-on-validation weights of a trained re-ranker."""
    checkpoint = load_checkpoint(Path(run_dir) / CHECKPOINT)
    model = ModelSpec.from_dict(checkpoint["model_spec"]).build()
    weights = checkpoint["state"]["best_weights"] or checkpoint["weights"]
    model.load_state_dict(weights)
    return model.eval()


def train_reranker(
    config: ExperimentConfig,
    data: ListData,
    run_dir: str | Path,
    *,
    kind: str = "prm",
    model_config: PRMConfig | dict[str, Any] | None = None,
    seed: int | None = None,
    resume: bool = False,
    progress: bool = True,
    estimator: Callable[[np.ndarray, ListDataset], float] | None = None,
    evaluator: ContextClickModel | None = None,
) -> torch.nn.Module:
    """Train a registered re-ranker and return the best-on-validation model: PRM (PRM-BASE
    with ``use_pv=False``) from ``config.model``, another kind from ``config.rerankers``
    (its config defaults where the section is absent), or from ``model_config`` if given.

    ``evaluator`` (a trained context-aware click model) gives the examination curve for
    ``position_bias: evaluator``.
    """
    examination = data.examination
    if kind == "prm":
        model_config = model_config or config.model
        if model_config.position_bias == "evaluator":
            if evaluator is None:
                raise ValueError("model.position_bias 'evaluator' needs a trained evaluator")
            examination = evaluator.relative_examination(model_config.max_positions)
    elif model_config is None:
        model_config = config.rerankers.get(kind, {})
    train_config = config.train if seed is None else replace(config.train, seed=seed)
    train = data.splits["train"]
    model, _ = fit_reranker(
        ModelSpec.of(kind, model_config, train.d_feature, train.d_pv),
        train_config,
        train,
        data.splits["valid"],
        run_dir,
        eval_config=config.evaluate,
        resume=resume,
        progress=progress,
        estimator=estimator,
        examination=examination,
    )
    return model


def train_evaluator(
    config: ExperimentConfig,
    data: ListData,
    run_dir: str | Path,
    *,
    exploration: ListDataset | None = None,
    resume: bool = False,
    progress: bool = True,
) -> GeneratorEvaluator:
    """Train the evaluator-generator re-ranker on the training lists (every list, clicked or
    not, plus ``exploration`` if given) and return it; its ``evaluator`` is the click model
    that estimates the clicks of any ordering from the logs."""
    settings = config.evaluator_training
    train = data.splits["train"]
    if exploration is not None and settings.with_exploration:
        train = concat_lists([train, exploration])
    train_config = replace(
        config.train,
        epochs=settings.epochs,
        lr=settings.lr,
        lr_schedule=settings.lr_schedule,
        batch_size=settings.batch_size,
        patience=settings.epochs,
        selection_metric="loss",
    )
    generator, _ = fit_reranker(
        ModelSpec.of(EVALUATOR, config.evaluator, train.d_feature, train.d_pv),
        train_config,
        train,
        data.splits["valid"],
        run_dir,
        eval_config=config.evaluate,
        resume=resume,
        progress=progress,
        examination=data.examination,
    )
    return generator
