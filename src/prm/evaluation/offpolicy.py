"""Off-policy estimates of a new ordering's expected clicks per list, from logs alone.

Will a new re-ranker beat the one in production? Logged clicks were made in the production
order, so metrics against them reward keeping it. These estimators answer from the logs
instead, each with a bootstrap 95 % interval over lists (docs/offpolicy.md says which to trust):

- **direct method**: a click model fitted to the logs predicts the clicks of the new order;
  ``dm_evaluator`` is the context-aware evaluator (prm.models.evaluator), ``dm_pbm`` the plain
  position-based model (prm.models.position_based);
- **IPS family** on the randomized exploration bucket (prm.data.exploration), whose
  propensities are known: ``ips`` weights the click of each item shown where the new order
  puts it by 1 / propensity (item-position IPS, OBP's IIPS); ``pi`` is the pseudo-inverse
  estimator for slates (Swaminathan et al., NeurIPS 2017), the list's clicks times a weight
  from the number of items shown where the new order puts them; ``snips`` and ``snpi``
  self-normalize them (per rank, and per list); ``rank_ips`` reweights every click by the
  examination of its new rank over that of its shown rank (Joachims et al., WSDM 2017);
- **doubly robust**: the evaluator's prediction plus an IPS correction of its error on the
  logged display, ``dr`` with item-position weights, ``dr_rank`` with examination ratios.

IPS and PI are unbiased when each slot's click depends only on its item and its rank
(``ips``; ``pi``: when the list's clicks add up over slots); ``rank_ips`` when clicks follow
examination times attraction. List context (saturation, lift) breaks all three assumptions;
the direct methods model it, or not, and the doubly robust ones correct the model's error
where it shows in the bucket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from prm.data.batch import ListDataset
from prm.data.exploration import ExplorationLog
from prm.evaluation.estimate import predicted_click_probabilities
from prm.evaluation.metrics import rank_order
from prm.models.evaluator import ContextClickModel
from prm.models.position_based import PositionBasedModel

ESTIMATORS = {
    "dm_evaluator": "direct method: the context-aware evaluator's predicted clicks",
    "dm_pbm": "direct method: a position-based click model (no user, no list context)",
    "ips": "item-position IPS on the exploration bucket",
    "snips": "self-normalized item-position IPS",
    "pi": "pseudo-inverse (slate) IPS on the exploration bucket",
    "snpi": "self-normalized pseudo-inverse",
    "rank_ips": "IPS with examination ratios (every click, PBM assumption)",
    "dr": "doubly robust: evaluator + item-position IPS correction",
    "dr_rank": "doubly robust: evaluator + examination-ratio IPS correction",
}
N_BOOTSTRAP = 1000


@dataclass(frozen=True)
class Estimate:
    """One estimator's expected clicks per list with its bootstrap 95 % interval; no value
    (``None``) and a ``note`` saying why when the estimator cannot answer."""

    estimator: str
    value: float | None
    low: float | None
    high: float | None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Terms:
    """Per-list pieces of one estimate. With list weights w (all 1, or a bootstrap resample's
    counts) the estimate is ``Σ_k (w·num_k)/(w·den_k) · (w·present_k)/Σw``: a plain mean has
    one column with den = present = 1; self-normalized IPS has one column per rank."""

    numerator: np.ndarray  # (N, K)
    denominator: np.ndarray  # (N, K)
    present: np.ndarray  # (N, K)

    @classmethod
    def mean(cls, per_list: np.ndarray) -> Terms:
        ones = np.ones((len(per_list), 1))
        return cls(per_list[:, None].astype(np.float64), ones, ones)

    def head(self, n_lists: int) -> Terms:
        """The terms of the first ``n_lists`` lists (a smaller log)."""
        return Terms(*(part[:n_lists] for part in (self.numerator, self.denominator, self.present)))

    def value(self, weights: np.ndarray) -> np.ndarray:
        """(B,) the estimate under each row of list weights (B, N)."""
        num, den = weights @ self.numerator, weights @ self.denominator
        ratio = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        share = (weights @ self.present) / weights.sum(axis=1, keepdims=True)
        return (ratio * share).sum(axis=1)


def bootstrap_weights(n_lists: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """(1 + n_bootstrap, N): all-ones (the estimate itself), then resampled list counts."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_lists, np.full(n_lists, 1.0 / n_lists), size=n_bootstrap)
    return np.vstack([np.ones((1, n_lists)), counts]).astype(np.float64)


def target_ranks(log: ExplorationLog, scores: np.ndarray) -> np.ndarray:
    """(N, L) 0-based rank of each request slot in the order of ``scores`` (ties keep the
    initial order)."""
    requests = log.requests
    order = rank_order(scores, requests.mask, requests.positions)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :].repeat(len(order), 0), 1)
    return ranks


def pseudo_inverse_weights(matches: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per-list PI weight q_πᵀ Γ⁺ 1_s for a list of n items shuffled uniformly over n slots
    with ``matches`` items shown where the target puts them: (n - 1)·matches - (n - 2).
    Γ (the logging policy's slot-item second moments) is singular when every item is shown,
    hence the pseudo-inverse; tests check this form against Γ⁺ computed numerically."""
    return (lengths - 1) * matches - (lengths - 2)


class OffPolicyEvaluator:
    """Every estimator of :data:`ESTIMATORS` for orderings of one exploration log.

    ``evaluator`` gives ``dm_evaluator``, ``dr`` and ``dr_rank`` (and the examination of
    ``rank_ips``); ``pbm`` gives ``dm_pbm`` (and the examination when there is no evaluator).
    """

    def __init__(
        self,
        log: ExplorationLog,
        evaluator: ContextClickModel | None = None,
        pbm: PositionBasedModel | None = None,
        device: str = "cpu",
    ) -> None:
        self.log, self.evaluator, self.pbm, self.device = log, evaluator, pbm, device
        length = log.requests.list_length
        self.examination = (
            evaluator.relative_examination(length)
            if evaluator is not None
            else pbm.relative_examination(length)
            if pbm is not None
            else None
        )
        # The evaluator's clicks of the display that was logged: the DR corrections' baseline.
        self.logged_predictions = (
            self._predict(-log.shown_ranks.astype(np.float64)) if evaluator is not None else None
        )

    def _predict(self, scores: np.ndarray) -> np.ndarray:
        return predicted_click_probabilities(
            self.evaluator, self.log.requests, scores, device=self.device
        )

    def outside_support(self, ranks: np.ndarray) -> np.ndarray:
        """(N,) bool: lists where the target moves an item the logging policy never moved."""
        return (self.log.fixed_slots() & (ranks != self.log.shown_ranks)).any(axis=1)

    def terms(self, scores: np.ndarray) -> dict[str, Terms | str]:
        """Each estimator's per-list terms for the ordering ``scores``, or why it has none."""
        log, requests = self.log, self.log.requests
        mask, clicks = requests.mask, requests.labels * requests.mask
        ranks = target_ranks(log, scores)
        matches = (ranks == log.shown_ranks) & mask
        item_weights = np.where(matches, 1.0 / log.propensities.clip(min=1e-12), 0.0)
        out: dict[str, Terms | str] = {}
        outside = self.outside_support(ranks)
        support_note = (
            f"outside the logging support on {int(outside.sum())} of {len(outside)} lists: "
            "the ordering moves items the logging policy never moved (propensity 1)"
            if outside.any()
            else ""
        )
        out["ips"] = support_note or Terms.mean((clicks * item_weights).sum(axis=1))
        out["snips"] = support_note or self._per_rank_normalized(clicks, item_weights)
        if support_note or not log.uniform:
            note = support_note or "needs a uniformly shuffled bucket (no logged propensities)"
            out["pi"] = out["snpi"] = note
        else:
            weights = pseudo_inverse_weights(matches.sum(axis=1), mask.sum(axis=1))
            reward = clicks.sum(axis=1)
            out["pi"] = Terms.mean(reward * weights)
            present = np.ones((len(reward), 1))
            out["snpi"] = Terms((reward * weights)[:, None], weights[:, None], present)
        missing_exam = "needs an examination curve: pass an evaluator or a position-based model"
        rank_weights = None
        if self.examination is not None:
            exam = self.examination
            rank_weights = np.where(mask, exam[ranks] / exam[log.shown_ranks], 0.0)
            out["rank_ips"] = Terms.mean((clicks * rank_weights).sum(axis=1))
        else:
            out["rank_ips"] = missing_exam
        if self.pbm is not None:
            pbm_clicks = self.pbm.click_probabilities(requests.item_ids, ranks) * mask
            out["dm_pbm"] = Terms.mean(pbm_clicks.sum(axis=1))
        else:
            out["dm_pbm"] = "needs a position-based model fitted to the logs"
        if self.evaluator is None:
            missing = "needs the evaluator (a trained generator_evaluator run)"
            out["dm_evaluator"] = out["dr"] = out["dr_rank"] = missing
            return out
        direct = self._predict(scores).sum(axis=1)
        residual = (clicks - self.logged_predictions) * mask
        out["dm_evaluator"] = Terms.mean(direct)
        out["dr"] = support_note or Terms.mean(direct + (item_weights * residual).sum(axis=1))
        out["dr_rank"] = Terms.mean(direct + (rank_weights * residual).sum(axis=1))
        return out

    def _per_rank_normalized(self, clicks: np.ndarray, weights: np.ndarray) -> Terms:
        """Item-position IPS normalized per shown rank by the mean weight there (whose
        expectation is 1: exactly one item of each list belongs at each rank)."""
        mask = self.log.requests.mask
        lists, ranks = np.nonzero(mask)[0], self.log.shown_ranks[mask]  # real slots only

        def by_shown_rank(values: np.ndarray) -> np.ndarray:
            out = np.zeros(mask.shape)
            out[lists, ranks] = values[mask]
            return out

        return Terms(
            by_shown_rank(clicks * weights), by_shown_rank(weights), by_shown_rank(mask * 1.0)
        )

    def estimate(
        self, scores: np.ndarray, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0
    ) -> dict[str, Estimate]:
        """Every estimator's value and 95 % interval for the ordering ``scores``."""
        weights = bootstrap_weights(len(self.log), n_bootstrap, seed)
        return summarize(self.terms(scores), weights, lambda terms, w: terms.value(w))

    def compare(
        self,
        scores: np.ndarray,
        baseline_scores: np.ndarray,
        n_bootstrap: int = N_BOOTSTRAP,
        seed: int = 0,
    ) -> dict[str, Estimate]:
        """Estimated gain of ``scores`` over ``baseline_scores`` (e.g. the production order),
        with a paired interval: both are computed on the same resampled lists."""
        weights = bootstrap_weights(len(self.log), n_bootstrap, seed)
        new, old = self.terms(scores), self.terms(baseline_scores)
        paired = {
            name: next((t for t in (new[name], old[name]) if isinstance(t, str)), None)
            or (new[name], old[name])
            for name in new
        }
        return summarize(paired, weights, lambda pair, w: pair[0].value(w) - pair[1].value(w))


def offpolicy_report(
    ope: OffPolicyEvaluator, scores: np.ndarray, n_bootstrap: int = N_BOOTSTRAP
) -> dict[str, Any]:
    """Every estimate of the ordering ``scores`` on ``ope``'s log and of its gain over the
    initial order, as ``prm evaluate --offpolicy`` writes them (offpolicy.json)."""
    initial = -ope.log.requests.positions.astype(np.float64)
    return {
        "lists": len(ope.log),
        "uniform_bucket": ope.log.uniform,
        "estimates": {k: v.as_dict() for k, v in ope.estimate(scores, n_bootstrap).items()},
        "gain_over_initial": {
            k: v.as_dict() for k, v in ope.compare(scores, initial, n_bootstrap).items()
        },
    }


def summarize(
    terms: dict[str, Any], weights: np.ndarray, value: Callable[[Any, np.ndarray], np.ndarray]
) -> dict[str, Estimate]:
    """Per estimator, ``value`` under weights row 0 (the estimate) and the 2.5 and 97.5
    percentiles over the bootstrap rows; a string in ``terms`` is the reason for no value."""
    out = {}
    for name in ESTIMATORS:
        if isinstance(terms[name], str):
            out[name] = Estimate(name, None, None, None, terms[name])
            continue
        values = value(terms[name], weights)
        low, high = np.percentile(values[1:], [2.5, 97.5])
        out[name] = Estimate(name, float(values[0]), float(low), float(high))
    return out


def fit_position_based(lists: list[ListDataset], n_items: int) -> PositionBasedModel:
    """A PBM fitted on logged lists (ListDatasets in shown order: slot = shown rank)."""
    max_rank = max(part.list_length for part in lists)
    item_ids = np.concatenate([part.item_ids[part.mask] for part in lists])
    clicks = np.concatenate([part.labels[part.mask] for part in lists])
    ranks = np.concatenate(
        [np.broadcast_to(np.arange(part.list_length), part.mask.shape)[part.mask] for part in lists]
    )
    return PositionBasedModel(n_items, max_rank).fit(item_ids, ranks, clicks)
