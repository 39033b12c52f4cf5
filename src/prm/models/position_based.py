"""The plain position-based click model (PBM; Richardson et al. 2007, Chuklin et al. 2015).

P(click on item i at rank k) = e_k · a_i: an examination per rank and an attraction per item,
the same for every user and blind to the items shown around it. Fitted by expectation-
maximization on logged lists. It is the textbook direct method of off-policy evaluation, and
the reference that shows what the context-aware evaluator (prm.models.evaluator) adds.
"""

from __future__ import annotations

import numpy as np

PRIOR_IMPRESSIONS = 10.0  # an item's attraction starts as this many impressions at the mean


class PositionBasedModel:
    """Examination per rank and attraction per item, fitted by EM on (item, rank, click)."""

    def __init__(self, n_items: int, max_rank: int) -> None:
        self.examination = np.full(max_rank, 0.5)
        self.attraction = np.full(n_items, 0.1)

    def fit(
        self, item_ids: np.ndarray, ranks: np.ndarray, clicks: np.ndarray, iterations: int = 50
    ) -> PositionBasedModel:
        """EM on flat impression arrays (one entry per shown item; ``ranks`` 0-based).

        E-step: an unclicked impression was examined with probability e(1-a)/(1-ea) and
        attractive with (1-e)a/(1-ea); M-step: means of those per rank and per item. Items
        with few impressions are pulled towards the mean attraction (PRIOR_IMPRESSIONS).
        """
        clicked = clicks > 0
        ranks = np.minimum(ranks, len(self.examination) - 1)
        per_rank = np.bincount(ranks, minlength=len(self.examination)).astype(float)
        per_item = np.bincount(item_ids, minlength=len(self.attraction)).astype(float)
        for _ in range(iterations):
            e, a = self.examination[ranks], self.attraction[item_ids]
            unclicked = np.maximum(1.0 - e * a, 1e-12)
            examined = np.where(clicked, 1.0, e * (1.0 - a) / unclicked)
            attracted = np.where(clicked, 1.0, (1.0 - e) * a / unclicked)
            rank_sum = np.bincount(ranks, examined, minlength=len(self.examination))
            self.examination = np.where(per_rank > 0, rank_sum / np.maximum(per_rank, 1), 0.5)
            mean = attracted.mean() if len(attracted) else 0.1
            item_sum = np.bincount(item_ids, attracted, minlength=len(self.attraction))
            self.attraction = (item_sum + PRIOR_IMPRESSIONS * mean) / (per_item + PRIOR_IMPRESSIONS)
        return self

    def click_probabilities(self, item_ids: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """e_rank · a_item, elementwise over arrays of any one shape."""
        ranks = np.minimum(ranks, len(self.examination) - 1)
        return self.examination[ranks] * self.attraction[item_ids]

    def relative_examination(self, length: int) -> np.ndarray:
        """(length,) e_k / e_1, the form of prm.data.examination."""
        ranks = np.minimum(np.arange(length), len(self.examination) - 1)
        return self.examination[ranks] / self.examination[0]
