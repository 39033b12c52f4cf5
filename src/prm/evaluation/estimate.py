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
def predicted_clicks(
    evaluator: ContextClickModel,
    dataset: ListDataset,
    scores: np.ndarray,
    batch_size: int = 2048,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """(N,) the evaluator's expected clicks of each list shown in the order of ``scores``
    (ties keep the initial order, as in every metric)."""
    evaluator.eval()
    order = torch.from_numpy(rank_order(scores, dataset.mask, dataset.positions))
    parts = []
    for start in range(0, len(dataset), batch_size):
        rows = np.arange(start, min(start + batch_size, len(dataset)))
        batch = in_display_order(dataset.batch(rows), order[rows]).to(device)
        parts.append(evaluator.expected_clicks(batch).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class EstimatedClicks:
    """``(scores, dataset) -> mean predicted clicks``: the Trainer's log-only selection value."""

    def __init__(self, evaluator: ContextClickModel, device: str | torch.device = "cpu") -> None:
        self.evaluator, self.device = evaluator, device

    def __call__(self, scores: np.ndarray, dataset: ListDataset) -> float:
        return float(predicted_clicks(self.evaluator, dataset, scores, device=self.device).mean())
