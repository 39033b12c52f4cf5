"""Personalized pre-training, fitted: the CTR model on the logged impressions of the training
lists (selected on the validation lists' log loss), then PV of every item of every list.

PV is computed in memory (:meth:`Pretrained.attach`); a run folder keeps the CTR model, its
report and, optionally, a PV cache per split (``pv_<split>.npy``) that :func:`attach_pv` reads
when it matches and recomputes from the model when it is absent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from prm.allocator import keep_freed_memory
from prm.config import ExperimentConfig, PretrainConfig
from prm.data.batch import ListDataset, same_topic_above
from prm.data.examination import require_examination
from prm.data.loaders import ListData
from prm.data.tables import Catalog, DataError
from prm.evaluation.metrics import roc_auc
from prm.io import atomic_path, write_json
from prm.models.layers import PositionBias
from prm.pretrain.ctr import CTRModel, build_ctr_model, load_ctr, save_ctr
from prm.threads import follow_load

CTR_MODEL = "ctr_model.pt"
REPORT = "pretrain_metrics.json"


@dataclass(frozen=True)
class Impressions:
    """Logged impressions, one (user, item, click) triple per shown item."""

    user_ids: np.ndarray  # (N,) int64
    item_ids: np.ndarray  # (N,) int64
    clicks: np.ndarray  # (N,) float32 in {0, 1}
    positions: np.ndarray | None = None  # (N,) int64 shown rank, for the position-bias tower
    # (N,) items of the same topic shown above it, for PretrainConfig.list_context
    same_topic_above: np.ndarray | None = None

    def __post_init__(self) -> None:
        shapes = {self.user_ids.shape, self.item_ids.shape, self.clicks.shape}
        for optional in (self.positions, self.same_topic_above):
            if optional is not None:
                shapes.add(optional.shape)
        if len(shapes) != 1 or len(self.user_ids.shape) != 1:
            raise ValueError(f"Impressions: expected equal 1-D arrays, got shapes {shapes}")

    def __len__(self) -> int:
        return self.user_ids.shape[0]


def impressions(dataset: ListDataset, item_topic: np.ndarray) -> Impressions:
    """Every real (user, item, click) of a split, the pre-training examples, with the rank and
    the same-topic items above it in the logged list."""
    users = np.broadcast_to(dataset.user_ids[:, None], dataset.mask.shape)
    context = same_topic_above(item_topic[dataset.item_ids], dataset.mask)
    return Impressions(
        user_ids=users[dataset.mask],
        item_ids=dataset.item_ids[dataset.mask],
        clicks=dataset.labels[dataset.mask],
        positions=dataset.positions[dataset.mask],
        same_topic_above=context[dataset.mask],
    )


def _tensors(data: Impressions) -> tuple[torch.Tensor, ...]:
    positions = np.zeros_like(data.user_ids) if data.positions is None else data.positions
    same = data.same_topic_above
    return (
        torch.as_tensor(data.user_ids, dtype=torch.int64),
        torch.as_tensor(data.item_ids, dtype=torch.int64),
        torch.as_tensor(data.clicks, dtype=torch.float32),
        torch.as_tensor(positions, dtype=torch.int64),
        torch.as_tensor(np.zeros(len(data)) if same is None else same, dtype=torch.float32),
    )


@torch.no_grad()
def evaluate_ctr(
    model: CTRModel,
    data: Impressions,
    batch_size: int = 16_384,
    position_bias: PositionBias | None = None,
) -> dict[str, float]:
    """Log loss and AUC of the click predictions on ``data`` (with the tower, if given)."""
    users, items, clicks, positions, same = _tensors(data)
    logits = torch.cat(
        [
            _click_logits(model, position_bias, u, i, p, n)
            for u, i, p, n in zip(
                users.split(batch_size),
                items.split(batch_size),
                positions.split(batch_size),
                same.split(batch_size),
                strict=True,
            )
        ]
    )
    return {
        "log_loss": F.binary_cross_entropy_with_logits(logits, clicks).item(),
        "auc": roc_auc(logits.numpy(), clicks.numpy()),
    }


def _click_logits(
    model: CTRModel,
    position_bias: PositionBias | None,
    users: torch.Tensor,
    items: torch.Tensor,
    positions: torch.Tensor,
    same_topic_above: torch.Tensor,
) -> torch.Tensor:
    """The CTR model's logits in the logged list (its list context and, with the tower, the
    offsets of the shown ranks)."""
    logits = model.click_logit(model.hidden(users, items), same_topic_above)
    return logits if position_bias is None else logits + position_bias(positions)


def train_ctr(
    config: PretrainConfig,
    tables: Catalog,
    train: Impressions,
    valid: Impressions,
    progress: bool = True,
    examination: np.ndarray | None = None,
) -> tuple[CTRModel, list[dict[str, float]]]:
    """Fit a CTR model with Adam and log loss; return the epoch best on validation log loss.

    Initialisation and batch order depend on ``config.seed`` alone (the global RNG is left
    untouched). The history holds one record per epoch. With ``config.position_bias`` set to
    "exploration", the tower is fixed at log ``examination`` (per rank, measured on randomized
    lists: :mod:`prm.data.examination`).
    """
    if config.position_bias_tower and train.positions is None:
        raise ValueError("position_bias_tower needs Impressions.positions")
    if config.list_context and train.same_topic_above is None:
        raise ValueError("list_context needs Impressions.same_topic_above")
    fixed_tower = config.position_bias_tower and config.position_bias == "exploration"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_ctr_model(config, tables)
        position_bias = PositionBias(config.max_positions) if config.position_bias_tower else None
    if fixed_tower:
        position_bias.fix(require_examination(examination, "pre-training data"))
    generator = torch.Generator().manual_seed(config.seed)
    tower_parameters = () if position_bias is None else tuple(position_bias.parameters())
    optimizer = torch.optim.Adam(
        [p for p in (*model.parameters(), *tower_parameters) if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    users, items, clicks, positions, same = _tensors(train)
    keep_freed_memory()  # each batch reuses the last one's memory (prm/allocator.py)
    history: list[dict[str, float]] = []
    best_loss, best_state = math.inf, None
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        batches = torch.randperm(len(train), generator=generator).split(config.batch_size)
        total = torch.zeros(())
        for index in tqdm(batches, desc=f"{config.model} epoch {epoch}", disable=not progress):
            follow_load()
            logits = _click_logits(
                model, position_bias, users[index], items[index], positions[index], same[index]
            )
            loss = F.binary_cross_entropy_with_logits(logits, clicks[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(index)
        metrics = evaluate_ctr(model, valid, position_bias=position_bias)
        history.append(
            {
                "epoch": epoch,
                "train_log_loss": total.item() / len(train),
                "valid_log_loss": metrics["log_loss"],
                "valid_auc": metrics["auc"],
                "seconds": time.perf_counter() - start,
            }
        )
        if progress:
            tqdm.write(f"{config.model} epoch {epoch}: {history[-1]}")
        if metrics["log_loss"] < best_loss:
            best_loss = metrics["log_loss"]
            best_state = {name: value.clone() for name, value in model.state_dict().items()}
    if best_state is None:
        raise RuntimeError(f"no epoch gave a finite validation log loss: {history}")
    model.load_state_dict(best_state)
    return model, history


@torch.no_grad()
def compute_pv(
    model: CTRModel,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    mask: np.ndarray,
    batch_size: int = 16_384,
) -> np.ndarray:
    """PV of every real item of ``N`` lists, (N,), (N, L), (N, L) -> (N, L, d_pv) float32.

    Padded slots (``mask`` False) hold zeros; only real (user, item) pairs are computed.
    """
    n, length = item_ids.shape
    real = np.flatnonzero(mask)  # indices into the flattened (N * L) slots
    users = torch.as_tensor(np.asarray(user_ids)[real // length], dtype=torch.int64)
    items = torch.as_tensor(np.asarray(item_ids).reshape(-1)[real], dtype=torch.int64)
    pv = np.zeros((n * length, model.d_pv), dtype=np.float32)
    for start in range(0, real.size, batch_size):
        chunk = slice(start, start + batch_size)
        pv[real[chunk]] = model.hidden(users[chunk], items[chunk]).numpy()
    return pv.reshape(n, length, model.d_pv)  # (N, L, d_pv)


@dataclass(frozen=True)
class Pretrained:
    """A fitted CTR model and its report (model name, d_pv, per-epoch history)."""

    model: CTRModel
    report: dict[str, Any]

    def attach(self, data: ListData) -> ListData:
        """The same data with every split's PV, computed in memory."""
        splits = {
            split: dataset.with_pv(
                compute_pv(self.model, dataset.user_ids, dataset.item_ids, dataset.mask)
            )
            for split, dataset in data.splits.items()
        }
        return replace(data, splits=splits)


def pretrain(
    config: ExperimentConfig,
    data: ListData,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    cache_pv: bool = True,
) -> Pretrained:
    """Train the CTR model on the training lists; with ``out_dir``, write the model, its report
    and (``cache_pv``) every split's PV there."""
    if data.catalog is None:
        raise DataError(
            "PV pre-training needs users.parquet (profiles and click histories), and the data "
            "folder has none: train PRM-BASE (--base) or a baseline without --pv"
        )
    train = data.splits["train"]
    if not np.isin(train.labels[train.mask], (0, 1)).all():
        raise DataError(
            "PV pre-training fits a click model: it needs clicks (0 or 1), and the training "
            "lists hold graded labels"
        )
    model, history = train_ctr(
        config.pretrain,
        data.catalog,
        impressions(data.splits["train"], data.items.topic),
        impressions(data.splits["valid"], data.items.topic),
        progress=progress,
        examination=data.examination,
    )
    pretrained = Pretrained(
        model, {"model": config.pretrain.model, "d_pv": model.d_pv, "history": history}
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_ctr(model, config.pretrain, out_dir / CTR_MODEL)
        if cache_pv:
            for split, dataset in pretrained.attach(data).splits.items():
                with atomic_path(out_dir / f"pv_{split}.npy") as tmp, open(tmp, "wb") as handle:
                    np.save(handle, dataset.pv)
        write_json(out_dir / REPORT, pretrained.report)
    return pretrained


def attach_pv(data: ListData, pretrain_dir: str | Path) -> ListData:
    """The same data with each split's PV from a :func:`pretrain` folder: its cache where it
    matches the split, else computed from its CTR model."""
    pretrain_dir = Path(pretrain_dir)
    model_path = pretrain_dir / CTR_MODEL
    model = None
    splits = {}
    for split, dataset in data.splits.items():
        cache = pretrain_dir / f"pv_{split}.npy"
        if cache.is_file():
            pv = np.load(cache)
            if pv.shape[:2] != dataset.mask.shape:
                raise DataError(
                    f"{cache}: PV of shape {pv.shape} does not match the {split} lists "
                    f"{dataset.mask.shape}; run `prm pretrain` again on this data"
                )
        else:
            if not model_path.is_file():
                raise FileNotFoundError(
                    f"{pretrain_dir}: no PV cache for {split} and no {CTR_MODEL}; "
                    "run `prm pretrain` first"
                )
            model = model or load_ctr(model_path).eval()
            pv = compute_pv(model, dataset.user_ids, dataset.item_ids, dataset.mask)
        splits[split] = dataset.with_pv(pv)
    return replace(data, splits=splits)
