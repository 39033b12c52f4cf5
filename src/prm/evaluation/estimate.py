"""Expected clicks of a new ordering estimated from the logs alone, with the evaluator.

The direct method of off-policy evaluation: a click model fitted to the logs
(:class:`~prm.models.evaluator.ContextClickModel`) predicts the clicks of each list shown in
the order a re-ranker gives. Training uses it to choose epochs and settings without the
simulator's hidden truth (``TrainConfig.selection_metric: estimated_clicks``).
"""

from __future__ import annotations

import numpy as np
import torch

from prm.data.batch import ListDataset
from prm.evaluation.metrics import rank_order
from prm.models.evaluator import ContextClickModel, in_display_order


@torch.no_grad()
def predicted_click_probabilities(
    evaluator: ContextClickModel,
    dataset: ListDataset,
    scores: np.ndarray,
    batch_size: int = 2048,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """(N, L) the evaluator's click probability of each slot's item when the list is shown in
    the order of ``scores`` (ties keep the initial order, as in every metric); 0 at padding."""
    evaluator.eval()
    order = torch.from_numpy(rank_order(scores, dataset.mask, dataset.positions))
    out = np.zeros(dataset.mask.shape, dtype=np.float32)
    for start in range(0, len(dataset), batch_size):
        rows = slice(start, start + batch_size)
        batch = dataset.batch(np.arange(len(dataset))[rows])
        shown = evaluator.click_probabilities(in_display_order(batch, order[rows]).to(device))
        # (b, L) in display order, back to each item's slot
        np.put_along_axis(out[rows], order[rows].numpy(), shown.cpu().numpy(), axis=1)
    return out


def predicted_clicks(
    evaluator: ContextClickModel,
    dataset: ListDataset,
    scores: np.ndarray,
    batch_size: int = 2048,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """(N,) the evaluator's expected clicks of each list shown in the order of ``scores``."""
    probabilities = predicted_click_probabilities(evaluator, dataset, scores, batch_size, device)
    return probabilities.sum(axis=1)


class EstimatedClicks:
    """``(scores, dataset) -> mean predicted clicks``: the Trainer's log-only selection value."""

    def __init__(self, evaluator: ContextClickModel, device: str | torch.device = "cpu") -> None:
        self.evaluator, self.device = evaluator, device

    def __call__(self, scores: np.ndarray, dataset: ListDataset) -> float:
        return float(predicted_clicks(self.evaluator, dataset, scores, device=self.device).mean())
