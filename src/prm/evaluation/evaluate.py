"""Scoring a dataset with a re-ranker and measuring the new order.

Two kinds of measurement: ranking metrics against the logged clicks (any dataset; averaged
over lists with a click, see :mod:`prm.evaluation.metrics`) and, on simulated data, the true
expected clicks of the new order under the click model (all lists count).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from prm.config import EvalConfig
from prm.data.batch import ListDataset
from prm.data.simulator import ClickModel
from prm.evaluation.metrics import lists_with_click, rank_order, ranking_metrics, summarize


@torch.no_grad()
def score_lists(
    model: nn.Module, dataset: ListDataset, batch_size: int = 2048, device: str = "cpu"
) -> np.ndarray:
    """(N, L) float32 scores of every list; padded slots may hold anything (they are masked)."""
    model.eval()
    parts = [
        model(batch.to(device)).float().cpu().numpy() for batch in dataset.iter_batches(batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros(dataset.mask.shape, np.float32)


def per_list_metrics(
    scores: np.ndarray, dataset: ListDataset, config: EvalConfig
) -> dict[str, np.ndarray]:
    """P@k, MAP@k, NDCG@k of each list, against the dataset's labels."""
    return ranking_metrics(
        scores,
        dataset.labels,
        mask=dataset.mask,
        positions=dataset.positions,
        ks=config.ks,
        map_convention=config.map_convention,
    )


def evaluate_scores(
    scores: np.ndarray, dataset: ListDataset, config: EvalConfig
) -> dict[str, float]:
    """Mean metrics over the lists with at least one click."""
    per_list = per_list_metrics(scores, dataset, config)
    return summarize(per_list, lists_with_click(dataset.labels, dataset.mask))


def expected_clicks(
    click_model: ClickModel, dataset: ListDataset, scores: np.ndarray
) -> np.ndarray:
    """(N,) expected clicks of each list shown in the order of ``scores``."""
    order = rank_order(scores, dataset.mask, dataset.positions)
    items = np.take_along_axis(dataset.item_ids, order, axis=1)
    mask = np.take_along_axis(dataset.mask, order, axis=1)
    return click_model.expected_clicks(dataset.user_ids, items, mask)


def oracle_scores(click_model: ClickModel, dataset: ListDataset) -> np.ndarray:
    """Scores that sort each list into the click model's greedy oracle order."""
    order = click_model.greedy_oracle(dataset.user_ids, dataset.item_ids, dataset.mask)
    scores = np.empty(order.shape, dtype=np.float32)
    np.put_along_axis(scores, order, -np.arange(order.shape[1], dtype=np.float32), axis=1)
    return scores
