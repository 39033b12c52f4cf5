"""Semi-synthetic clicks: rates follow the position-based model, IPS undoes the examination."""

from __future__ import annotations

import numpy as np
import pytest

from prm.config import ConfigError
from prm.data.batch import ListDataset
from prm.data.click_simulation import (
    ClickSimulation,
    click_probability,
    examination_by_rank,
    ips_labels,
    simulate_clicks,
)

GRADES = np.array([[2, 0, 1, 0], [0, 1, 2, 0], [1, 2, 0, 0]], np.float32)
MASK = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], bool)


def graded_lists(grades: np.ndarray = GRADES, mask: np.ndarray = MASK) -> ListDataset:
    """Lists in their initial order (position = slot), padded where ``mask`` is False."""
    n, length = grades.shape
    return ListDataset(
        features=np.zeros((n, length, 1), np.float32),
        pv=np.zeros((n, length, 0), np.float32),
        mask=mask,
        labels=grades * mask,
        positions=np.arange(length) * mask,
        user_ids=np.zeros(n, np.int64),
        list_ids=np.arange(n),
        item_ids=np.zeros((n, length), np.int64),
    )


def test_click_probability_spans_epsilon_to_one() -> None:
    p = click_probability(np.array([0, 1, 2]), epsilon=0.1, max_grade=2)
    np.testing.assert_allclose(p, [0.1, 0.1 + 0.9 / 3, 1.0])
    with pytest.raises(ValueError, match="max_grade"):
        click_probability(np.array([3]), epsilon=0.1, max_grade=2)


def test_click_rates_match_examination_times_click_probability() -> None:
    lists = graded_lists()
    simulation = ClickSimulation(eta=1.0, epsilon=0.1, max_grade=2, sessions=200_000)
    clicks = simulate_clicks(lists, simulation, np.random.default_rng(0))
    expected = (1.0 / (lists.positions + 1)) * click_probability(
        lists.labels, epsilon=0.1, max_grade=2
    )
    np.testing.assert_allclose(clicks[MASK] / simulation.sessions, expected[MASK], atol=0.004)
    assert (clicks[~MASK] == 0).all()  # padding is never clicked
    again = simulate_clicks(lists, simulation, np.random.default_rng(0))
    np.testing.assert_array_equal(clicks, again)  # deterministic by seed


def test_ips_labels_are_unbiased_for_relevance() -> None:
    """Averaged over many click logs, clicks / e_k is sessions * p(y) at every rank: the
    position effect is gone and the grade order is kept."""
    lists = graded_lists()
    logs = lists.subset(np.tile(np.arange(len(lists)), 20_000))  # 20,000 logs of each list
    simulation = ClickSimulation(eta=1.5, epsilon=0.1, max_grade=2, sessions=10)
    examination = examination_by_rank(lists.list_length, simulation.eta)
    clicks = simulate_clicks(logs, simulation, np.random.default_rng(1))
    weighted = ips_labels(clicks, logs, examination)  # (20,000 * N, L)
    mean = weighted.reshape(-1, *lists.mask.shape).mean(axis=0)  # (N, L)
    relevance = click_probability(lists.labels, epsilon=0.1, max_grade=2)
    np.testing.assert_allclose(mean[MASK], simulation.sessions * relevance[MASK], rtol=0.03)
    assert (mean[~MASK] == 0).all()


def test_ips_floors_a_vanishing_examination_estimate() -> None:
    lists = graded_lists()
    clicks = np.ones(lists.mask.shape, np.float32)
    labels = ips_labels(clicks, lists, np.array([1.0, 0.0, 0.5, 0.25]))
    assert np.isfinite(labels).all() and labels[0, 1] == pytest.approx(1000.0)


@pytest.mark.parametrize(
    "fields",
    [{"eta": -1.0}, {"epsilon": 1.5}, {"max_grade": 0}, {"sessions": 0}, {"targets": ()}],
)
def test_click_simulation_rejects_bad_settings(fields: dict) -> None:
    with pytest.raises(ConfigError):
        ClickSimulation(**fields)
