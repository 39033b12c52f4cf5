"""Off-policy estimators against brute force: every shown order and click vector of a 3-item
list, weighted by its probability, gives each estimator's exact expectation."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prm.data.batch import ListDataset
from prm.data.exploration import exploration_log, read_randomization
from prm.data.tables import DataError
from prm.evaluation.offpolicy import (
    ESTIMATORS,
    OffPolicyEvaluator,
    Terms,
    fit_position_based,
    pseudo_inverse_weights,
)
from prm.models.evaluator import ContextClickModel
from prm.models.position_based import PositionBasedModel

EXAMINATION = np.array([1.0, 0.5, 0.25])
ATTRACTION = np.array([0.3, 0.6, 0.9])  # of items 0, 1, 2 (initial order 0, 1, 2)
ORDERS = list(itertools.permutations(range(3)))


def click_probability(order: tuple[int, ...], rank: int, context: bool) -> float:
    """PBM; with ``context``, an item below item 2 loses half its attraction (saturation)."""
    item = order[rank]
    attraction = ATTRACTION[item] * (0.5 if context and 2 in order[:rank] else 1.0)
    return EXAMINATION[rank] * attraction


def enumerated(context: bool = False, propensities: np.ndarray | None = None):
    """Every (shown order, click vector) as a list of one bucket, and its probability."""
    shown, clicks, probability = [], [], []
    for order in ORDERS:
        p = [click_probability(order, k, context) for k in range(3)]
        for vector in itertools.product((0, 1), repeat=3):
            shown.append(order)
            clicks.append(vector)
            probability.append(
                np.prod([pk if c else 1 - pk for pk, c in zip(p, vector, strict=True)]) / 6
            )
    items = np.array(shown)
    n = len(items)
    lists = ListDataset(
        features=np.eye(3, dtype=np.float32)[items],
        pv=np.zeros((n, 3, 0), np.float32),
        mask=np.ones((n, 3), bool),
        labels=np.array(clicks, np.float32),
        positions=np.tile(np.arange(3), (n, 1)),
        user_ids=np.zeros(n, np.int64),
        list_ids=np.arange(n),
        item_ids=items,
    )
    log = exploration_log(lists, items.copy(), propensities)  # item i has initial rank i
    return log, np.array(probability)


def true_clicks(target: tuple[int, ...], context: bool = False) -> float:
    return sum(click_probability(target, k, context) for k in range(3))


def exact_models() -> tuple[ContextClickModel, PositionBasedModel]:
    """An untrained evaluator (wrong attractions, no context) with the true examination
    ratios, and a PBM with the true parameters."""
    evaluator = ContextClickModel(3, 0, d_hidden=4, max_positions=3)
    evaluator.start_examination_at(EXAMINATION)
    pbm = PositionBasedModel(n_items=3, max_rank=3)
    pbm.examination, pbm.attraction = EXAMINATION.copy(), ATTRACTION.copy()
    return evaluator, pbm


def expectations(log, probability, target, evaluator=None, pbm=None) -> dict[str, float]:
    scores = -np.argsort(np.array(target))[None, :].repeat(len(log), 0).astype(float)
    terms = OffPolicyEvaluator(log, evaluator, pbm).terms(scores)
    return {
        name: float(t.value(probability[None])[0])
        for name, t in terms.items()
        if not isinstance(t, str)  # estimators without their model
    }


@pytest.mark.parametrize("target", ORDERS)
def test_every_estimator_is_unbiased_under_the_position_based_model(target) -> None:
    log, probability = enumerated()
    evaluator, pbm = exact_models()
    expected = expectations(log, probability, target, evaluator, pbm)
    truth = true_clicks(target)
    # dm_evaluator is the untrained model's guess: the DR estimators must correct it.
    assert abs(expected.pop("dm_evaluator") - truth) > 0.05
    for name, value in expected.items():
        assert value == pytest.approx(truth, abs=1e-6), name  # float32 model


def test_list_context_biases_item_position_ips() -> None:
    """Item-position IPS assumes a click depends on the item and its rank only; with
    saturation below item 2, its expectation for a target that puts item 2 first misses."""
    log, probability = enumerated(context=True)
    target = (2, 1, 0)
    expected = expectations(log, probability, target)
    assert abs(expected["ips"] - true_clicks(target, context=True)) > 0.02


@pytest.mark.parametrize("n", [2, 3, 4])
def test_pseudo_inverse_weights_match_the_numerical_pseudo_inverse(n) -> None:
    orders = list(itertools.permutations(range(n)))

    def indicator(order) -> np.ndarray:
        out = np.zeros((n, n))
        out[np.arange(n), order] = 1
        return out.ravel()

    gamma = np.mean([np.outer(indicator(o), indicator(o)) for o in orders], axis=0)
    target = indicator(orders[-1])
    for order in orders:
        matches = sum(a == b for a, b in zip(order, orders[-1], strict=True))
        numerical = target @ np.linalg.pinv(gamma) @ indicator(order)
        assert pseudo_inverse_weights(np.array(matches), np.array(n)) == pytest.approx(numerical)


def test_a_slot_the_logging_policy_never_moved_is_outside_the_support() -> None:
    propensities = np.tile([1.0, 0.5, 0.5], (6 * 8, 1))  # rank 1 fixed, 2 and 3 swapped
    log, _ = enumerated(propensities=propensities)
    ope = OffPolicyEvaluator(log, None, exact_models()[1])
    moved = ope.estimate(np.tile([1.0, 3.0, 2.0], (len(log), 1)), n_bootstrap=20)
    assert moved["ips"].value is None and "outside the logging support" in moved["ips"].note
    assert moved["pi"].value is None and moved["dm_pbm"].value is not None
    kept = ope.estimate(-log.shown_ranks.astype(float), n_bootstrap=20)  # the logged order
    assert kept["ips"].value is not None and "uniformly" in kept["pi"].note


def test_estimates_carry_intervals_and_the_gain_is_paired() -> None:
    log, _ = enumerated()
    ope = OffPolicyEvaluator(log, *exact_models())
    scores = np.tile([0.0, 1.0, 2.0], (len(log), 1))
    estimates = ope.estimate(scores, n_bootstrap=200)
    assert set(estimates) == set(ESTIMATORS)
    for estimate in estimates.values():
        assert estimate.low <= estimate.value <= estimate.high
    same = ope.compare(scores, scores, n_bootstrap=50)
    assert all(e.value == 0 and e.low == 0 and e.high == 0 for e in same.values())


def test_self_normalized_terms_weight_ranks_by_their_presence() -> None:
    terms = Terms(np.array([[2.0, 0.0]]), np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]]))
    assert terms.value(np.ones((1, 1)))[0] == 2.0  # a rank no list has adds nothing


def test_position_based_model_recovers_its_parameters() -> None:
    rng = np.random.default_rng(0)
    n_items, length, n_lists = 50, 5, 20_000
    examination = 1 / np.arange(1, length + 1)
    attraction = rng.uniform(0.1, 0.9, n_items)
    items = np.array([rng.choice(n_items, length, replace=False) for _ in range(n_lists)])
    clicks = rng.random(items.shape) < examination * attraction[items]
    lists = ListDataset(
        features=np.zeros((n_lists, length, 1), np.float32),
        pv=np.zeros((n_lists, length, 0), np.float32),
        mask=np.ones(items.shape, bool),
        labels=clicks.astype(np.float32),
        positions=np.tile(np.arange(length), (n_lists, 1)),
        user_ids=np.zeros(n_lists, np.int64),
        list_ids=np.arange(n_lists),
        item_ids=items,
    )
    pbm = fit_position_based([lists], n_items)
    np.testing.assert_allclose(pbm.relative_examination(length), examination, atol=0.05)
    assert np.corrcoef(pbm.attraction, attraction)[0, 1] > 0.95


def _write_bucket(folder: Path, **columns) -> None:
    folder.mkdir(exist_ok=True)
    base = {"list_id": [0, 1], "user_id": [0, 0], "item_ids": [[0, 1, 2], [2, 1, 0]]}
    base["clicks"] = [[0, 1, 0], [0, 0, 0]]
    pq.write_table(pa.table(base | columns), folder / "lists_explore.parquet")


def test_bucket_columns_are_read_and_checked(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no exploration bucket"):
        read_randomization(tmp_path)
    _write_bucket(tmp_path)
    with pytest.raises(DataError, match="missing column.*initial_ranks"):
        read_randomization(tmp_path)
    _write_bucket(tmp_path, initial_ranks=[[2, 0, 1], [0, 1, 2]])
    ranks, propensities = read_randomization(tmp_path)
    assert ranks.tolist() == [[2, 0, 1], [0, 1, 2]] and propensities is None
    _write_bucket(tmp_path, initial_ranks=[[2, 0, 1], [0, 0, 2]])
    with pytest.raises(DataError, match="row 1: initial_ranks must be a permutation"):
        read_randomization(tmp_path)
    ranks = [[2, 0, 1], [0, 1, 2]]
    _write_bucket(tmp_path, initial_ranks=ranks, propensities=[[0.3, 0.3, 0.3], [0.3, 0.0, 0.3]])
    with pytest.raises(DataError, match=r"row 1, slot 1: propensity 0\.0 is not in \(0, 1\]"):
        read_randomization(tmp_path)
    _write_bucket(tmp_path, initial_ranks=ranks, propensities=[[0.3, 0.3, 0.3], [0.3, None, 0.3]])
    with pytest.raises(DataError, match="row 1: column propensities holds a null value"):
        read_randomization(tmp_path)


def test_self_normalized_ips_reads_lists_of_different_lengths() -> None:
    """A 3-item and a padded 2-item list, each scored in its logged order: every slot matches,
    so self-normalized IPS gives the mean logged clicks per list."""
    lists = ListDataset.from_arrays(
        [np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[:2]], [[1, 0, 1], [0, 1]]
    )
    log = exploration_log(lists, np.array([[0, 1, 2], [0, 1, 0]]), None)
    logged_order = -log.shown_ranks.astype(float)
    terms = OffPolicyEvaluator(log).terms(logged_order)
    assert terms["snips"].value(np.ones((1, 2)))[0] == pytest.approx(1.5)
    assert terms["ips"].value(np.ones((1, 2)))[0] == pytest.approx((2 * 3 + 1 * 2) / 2)  # 1/p
