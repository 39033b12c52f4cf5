"""Ranking metrics of the re-ranking system: P@k, MAP@k and NDCG@k over padded lists.

Every metric is a pure NumPy function ``(scores, labels, *, mask, k, positions=None) -> (N,)``
over ``N`` lists padded to length ``L``; ``mask`` is True at real items. A padded slot never
counts, whatever score or label it holds, and a list with no real item scores 0, never NaN.

Conventions:

* **Ranking.** Items are sorted by score, descending; ties go to the smaller initial position
  (the initial ranker's order wins), so a re-ranker that outputs constant scores reproduces the
  initial list. Padded slots are ranked last. See :func:`rank_order`.
* **Relevance.** A label ``> 0`` is a click (binary) or a relevant item (graded 1..4) for P and
  MAP; NDCG uses the label itself as the gain.
* **P@k** divides by ``k`` even when the list is shorter than ``k`` (trec_eval's ``P_k``).
* **MAP@k** has two normalisations, chosen by ``convention``: ``"prm"`` divides by the clicks
  inside the top ``k``, as the PRM authors' code does; ``"trec"`` divides by the relevant items in
  the whole list, as trec_eval's ``map_cut_k`` does. They agree when every click is in the top k.
* **NDCG@k** uses linear gain and ``1 / log2(rank + 1)`` discount (trec_eval's ``ndcg_cut_k``);
  the ideal DCG sorts all labels of the list. A list with no positive label scores 0.
* **Averaging.** Metrics against logged clicks are averaged over the lists with at least one
  click (:func:`lists_with_click`), as the authors' code does: a list without a click scores 0
  under every ranking, so it would only dilute the differences between rankers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.stats import rankdata

MapConvention = Literal["prm", "trec"]


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` elementwise as float64, 0 where ``den == 0``.

    The one place a masked reduction is normalised: an empty list, a list without a click or an
    empty selection of lists gives 0 instead of NaN.
    """
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape), dtype=np.float64)
    return np.divide(num, den, out=out, where=den != 0)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def rank_order(
    scores: np.ndarray, mask: np.ndarray, positions: np.ndarray | None = None
) -> np.ndarray:
    """(N, L) int: for each list, the slot indices from the top rank to the bottom.

    Sort keys, most significant first: real items before padded slots; score descending; initial
    position ascending (ties go to the item the initial ranker put higher). ``positions=None``
    uses the slot index as the initial position.

    scores: (N, L) float; mask: (N, L) bool; positions: (N, L) int or None.
    """
    scores = np.asarray(scores, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if positions is None:
        positions = np.broadcast_to(np.arange(scores.shape[-1]), scores.shape)
    # np.lexsort sorts by the last key first; padded scores are zeroed so NaN or inf there is inert
    return np.lexsort((positions, -np.where(mask, scores, 0.0), ~mask), axis=-1)


def _ranked_and_ideal(
    scores: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    positions: np.ndarray | None,
    ideal_labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels in ranked order and in ideal (label-descending) order, both (N, L), 0 at padding.
    The ideal order is of ``ideal_labels`` when given (N, M, 0 at padding), else of ``labels``."""
    mask = np.asarray(mask, dtype=bool)
    labels = np.where(mask, np.asarray(labels, dtype=np.float64), 0.0)  # (N, L)
    if np.shape(scores) != labels.shape:
        raise ValueError(f"scores {np.shape(scores)} and labels {labels.shape} differ in shape")
    order = rank_order(scores, mask, positions)  # (N, L)
    ranked = np.take_along_axis(labels, order, axis=-1)  # (N, L)
    if ideal_labels is None:
        return ranked, -np.sort(-labels, axis=-1)
    ideal = -np.sort(-np.asarray(ideal_labels, dtype=np.float64), axis=-1)[:, : labels.shape[1]]
    width = labels.shape[1] - ideal.shape[1]
    return ranked, np.pad(ideal, ((0, 0), (0, width)))  # (N, L): its top L


def _discounts(k: int) -> np.ndarray:
    """(k,) ``1 / log2(rank + 1)`` for ranks 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2))


def _precision(ranked: np.ndarray, k: int) -> np.ndarray:
    return (ranked[:, :k] > 0).sum(axis=-1) / float(k)


def _average_precision(
    ranked: np.ndarray, ideal: np.ndarray, k: int, convention: MapConvention
) -> np.ndarray:
    hit = ranked[:, :k] > 0  # (N, k')
    precision_at_i = np.cumsum(hit, axis=-1) / np.arange(1, hit.shape[-1] + 1)  # (N, k')
    total = np.where(hit, precision_at_i, 0.0).sum(axis=-1)  # (N,)
    if convention == "prm":
        n_relevant = hit.sum(axis=-1)
    elif convention == "trec":
        n_relevant = (ideal > 0).sum(axis=-1)
    else:
        raise ValueError(f"convention must be 'prm' or 'trec', got {convention!r}")
    return _safe_divide(total, n_relevant)


def _ndcg(ranked: np.ndarray, ideal: np.ndarray, k: int) -> np.ndarray:
    discount = _discounts(min(k, ranked.shape[-1]))  # (k',)
    dcg = ranked[:, :k] @ discount  # (N,)
    idcg = ideal[:, :k] @ discount  # (N,)
    return _safe_divide(dcg, idcg)


def precision_at_k(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    mask: np.ndarray,
    k: int,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) float64 P@k = #{clicked items in the top k} / k.

    The denominator is ``k`` even for lists shorter than ``k`` (trec_eval's ``P_k``).
    scores, labels: (N, L) float; mask: (N, L) bool; positions: (N, L) int or None.
    """
    _check_k(k)
    ranked, _ = _ranked_and_ideal(scores, labels, mask, positions)
    return _precision(ranked, k)


def map_at_k(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    mask: np.ndarray,
    k: int,
    positions: np.ndarray | None = None,
    convention: MapConvention = "prm",
) -> np.ndarray:
    """(N,) float64 average precision at cutoff k.

    AP@k = sum_{i <= k, rel_i} P@i / Z, with ``Z`` the clicks inside the top k for
    ``convention="prm"`` (the PRM authors' code) or the relevant items in the whole list for
    ``"trec"`` (trec_eval's ``map_cut_k``); 0 when ``Z == 0``.
    scores, labels: (N, L) float; mask: (N, L) bool; positions: (N, L) int or None.
    """
    _check_k(k)
    ranked, ideal = _ranked_and_ideal(scores, labels, mask, positions)
    return _average_precision(ranked, ideal, k, convention)


def ndcg_at_k(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    mask: np.ndarray,
    k: int,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) float64 NDCG@k = DCG@k / IDCG@k, with DCG@k = sum_{i <= k} label_i / log2(i + 1).

    IDCG@k is the DCG@k of the list's labels sorted descending; 0 when the list has no positive
    label. Linear gain, as trec_eval's ``ndcg_cut_k``.
    scores, labels: (N, L) float; mask: (N, L) bool; positions: (N, L) int or None.
    """
    _check_k(k)
    ranked, ideal = _ranked_and_ideal(scores, labels, mask, positions)
    return _ndcg(ranked, ideal, k)


def ranking_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    mask: np.ndarray,
    positions: np.ndarray | None,
    ks: Sequence[int] = (5, 10, 30),
    map_convention: MapConvention = "prm",
    ideal_labels: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-list ``p@k``, ``map@k`` and ``ndcg@k`` for every ``k`` in ``ks``, each (N,) float64.

    Sorts once and shares the ranking across metrics; same conventions as the single metrics.
    ``ideal_labels`` (N, M): the labels of the whole query each list was cut from, so that
    IDCG (and MAP's "trec" denominator) count the relevant documents below the cut too; the
    items ranked below the list are taken to follow it. NDCG@k is then trec_eval's
    ``ndcg_cut_k`` of the list as a run over the query's judgments (k <= L).
    """
    for k in ks:
        _check_k(k)
    ranked, ideal = _ranked_and_ideal(scores, labels, mask, positions, ideal_labels)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"p@{k}"] = _precision(ranked, k)
        out[f"map@{k}"] = _average_precision(ranked, ideal, k, map_convention)
        out[f"ndcg@{k}"] = _ndcg(ranked, ideal, k)
    return out


def lists_with_click(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) bool: lists with at least one positive label at a real item, the lists we average."""
    return ((np.asarray(labels) > 0) & np.asarray(mask, dtype=bool)).any(axis=-1)


def summarize(per_list: dict[str, np.ndarray], lists: np.ndarray) -> dict[str, float]:
    """Mean of each per-list metric over the lists selected by ``lists`` ((N,) bool).

    An empty selection gives 0 for every metric (through the same NaN-safe division).
    """
    lists = np.asarray(lists, dtype=bool)
    count = lists.sum()
    out: dict[str, float] = {}
    for name, values in per_list.items():
        if np.shape(values) != lists.shape:
            raise ValueError(f"{name} has shape {np.shape(values)}, lists has {lists.shape}")
        out[name] = float(_safe_divide(np.where(lists, values, 0.0).sum(), count))
    return out


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve as the Mann–Whitney U statistic, (N,), (N,) -> scalar.

    AUC = (Σ_{positives} rank − P (P + 1) / 2) / (P Q) for P positives and Q negatives, with
    average ranks, so a positive-negative tie counts 1/2. NaN when either class is absent.
    """
    positive = np.asarray(labels) > 0
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
