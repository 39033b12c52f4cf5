"""Position bias measured on randomized lists, the intervention that makes it identifiable.

In logs of a ranker, an item's rank follows from its features and from what the ranker knew,
so a position term learned from the same clicks absorbs relevance together with examination
(benchmarks/position_bias.py shows the collapse). An exploration bucket that shows the lists
in a uniformly random order breaks that link: there every rank holds the same mix of items,
and the click rate at rank k divided by that at rank 1 estimates the relative examination
e_k / e_1 (the "RandTop-n" estimate of Wang et al., WSDM 2018; Joachims et al., WSDM 2017).
"""

from __future__ import annotations

import numpy as np

from prm.data.batch import ListDataset

EXPLORE = "explore"  # the split name of the exploration bucket's lists (lists_explore)
MIN_EXAMINATION = 1e-3  # floor for ranks with no click in the bucket, so logs stay finite


def examination_from_randomized(lists: ListDataset) -> np.ndarray:
    """(L,) relative examination per rank, 1 at the top, from lists shown in random order.

    Items lower in a random list have on average more same-topic items above them, so on the
    simulator the estimate overstates the decay (saturation, docs/simulator.md Eq. 8): 0.012
    at rank 30 of the default config against the true 1/30.
    """
    real = lists.mask.sum(axis=0)
    clicks = ((lists.labels > 0) & lists.mask).sum(axis=0)
    rate = np.divide(clicks, real, out=np.zeros(len(real)), where=real > 0)
    if rate[0] <= 0:
        raise ValueError("exploration lists: no click at rank 1, position bias cannot be measured")
    return np.clip(rate / rate[0], MIN_EXAMINATION, 1.0)


def require_examination(examination: np.ndarray | None, data_name: str) -> np.ndarray:
    """``examination``, or a clear error naming what is missing."""
    if examination is None:
        raise ValueError(
            f"{data_name}: position_bias 'exploration' needs the randomized exploration lists "
            "(lists_explore); simulate them with simulator.n_explore_lists > 0"
        )
    return examination
