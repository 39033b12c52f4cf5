from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from prm.config import SimulatorConfig
from prm.data.simulator import (
    ClickModel,
    diversified_scores,
    history_log_share,
    load_click_model,
    make_world,
    simulate,
)

SMALL = SimulatorConfig(
    n_users=200, n_items=300, n_topics=5, list_length=8, candidate_pool=20,
    n_train_lists=300, n_valid_lists=50, n_test_lists=50,
)  # fmt: skip


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    simulate(SMALL, tmp_path / "a", progress=False)
    simulate(SMALL, tmp_path / "b", progress=False)
    simulate(replace(SMALL, seed=1), tmp_path / "c", progress=False)
    for name in ("items.parquet", "users.parquet", "lists_train.parquet", "lists_test.parquet"):
        a, b = pq.read_table(tmp_path / "a" / name), pq.read_table(tmp_path / "b" / name)
        assert a.equals(b), name
    a = pq.read_table(tmp_path / "a" / "lists_train.parquet")
    c = pq.read_table(tmp_path / "c" / "lists_train.parquet")
    assert not a.equals(c)


def test_initial_ranker_taste_is_the_smoothed_history_share() -> None:
    world = make_world(SMALL, np.random.default_rng(0))
    topic_items = [np.flatnonzero(world.item_topic == t) for t in range(SMALL.n_topics)]
    history = np.stack(
        [
            np.resize(topic_items[0], SMALL.history_length),  # all clicks on topic 0
            np.concatenate([topic_items[t][:1] for t in range(SMALL.n_topics)] * 4),  # uniform
        ]
    )
    world = replace(world, history=history)
    share = history_log_share(world, np.array([0, 1]))
    smoothing = SMALL.history_length + SMALL.n_topics
    assert share[0, 0] == pytest.approx(np.log((SMALL.history_length + 1) / smoothing))
    assert np.allclose(share[0, 1:], np.log(1 / smoothing))
    assert np.allclose(share[1], np.log(5 / smoothing))


def test_files_and_stats(tiny_data_dir: Path, tiny_config) -> None:
    c = tiny_config.simulator
    stats = json.loads((tiny_data_dir / "stats.json").read_text())
    assert stats["splits"]["train"]["lists"] == c.n_train_lists
    lists = pq.read_table(tiny_data_dir / "lists_train.parquet").to_pydict()
    assert all(len(items) == c.list_length for items in lists["item_ids"])
    assert all(len(set(items)) == len(items) for items in lists["item_ids"]), "duplicate item"
    ids = np.concatenate(
        [pq.read_table(tiny_data_dir / f"lists_{s}.parquet")["list_id"].to_numpy() for s in
         ("train", "valid", "test")]
    )  # fmt: skip
    assert len(np.unique(ids)) == len(ids), "list ids are unique across splits"
    split = stats["splits"]["test"]
    assert split["mean_expected_clicks_oracle"] > split["mean_expected_clicks_initial"]


@pytest.fixture(scope="module")
def click_model() -> ClickModel:
    return ClickModel(make_world(SMALL, np.random.default_rng(0)), SMALL)


def test_expected_clicks_match_sampled_clicks(click_model: ClickModel) -> None:
    rng = np.random.default_rng(1)
    users = np.full(1, 3)
    items = rng.choice(SMALL.n_items, size=(1, 8), replace=False)
    mask = np.ones_like(items, dtype=bool)
    p = click_model.click_probabilities(users, items, mask)[0]
    sampled = (rng.random((200_000, 8)) < p).mean(axis=0)
    np.testing.assert_allclose(sampled, p, atol=4e-3)
    assert click_model.expected_clicks(users, items, mask)[0] == pytest.approx(p.sum())


def test_position_bias_and_topic_saturation(click_model: ClickModel) -> None:
    world = click_model.world
    topic0 = np.flatnonzero(world.item_topic == 0)[:3]
    user = np.array([0])
    mask = np.ones((1, 3), dtype=bool)
    p = click_model.click_probabilities(user, topic0[None, :], mask)[0]
    # Same item alone at rank 1 vs after two items of its topic: examination and saturation.
    alone = click_model.click_probabilities(user, topic0[None, 2:], np.ones((1, 1), bool))[0, 0]
    exam = click_model.examination(3)
    assert p[2] / exam[2] < alone / exam[0], "a repeated topic lowers attractiveness"
    assert exam[0] > exam[1] > exam[2]


def test_list_context_counts_real_items_above(click_model: ClickModel) -> None:
    world = click_model.world
    topic0, topic1 = (np.flatnonzero(world.item_topic == t) for t in (0, 1))
    items = np.array([[topic0[0], topic0[1], topic1[0], topic0[2], topic0[3]]])
    mask = np.array([[True, True, True, True, False]])  # the last slot is padding
    same, lifted = click_model.list_context(items, mask)
    np.testing.assert_array_equal(same[0, :4], [0, 1, 0, 2])
    topics = world.item_topic[items[0]]
    expected_lift = [world.lift[topics[:k], topics[k]].any() for k in range(4)]
    np.testing.assert_array_equal(lifted[0, :4], expected_lift)


def test_padding_changes_nothing(click_model: ClickModel) -> None:
    rng = np.random.default_rng(2)
    users = rng.integers(0, SMALL.n_users, 4)
    items = np.stack([rng.choice(SMALL.n_items, 8, replace=False) for _ in range(4)])
    mask = np.ones_like(items, dtype=bool)
    padded_items = np.concatenate([items, rng.integers(0, SMALL.n_items, (4, 3))], axis=1)
    padded_mask = np.concatenate([mask, np.zeros((4, 3), dtype=bool)], axis=1)
    np.testing.assert_allclose(
        click_model.expected_clicks(users, padded_items, padded_mask),
        click_model.expected_clicks(users, items, mask),
    )


def test_one_pass_diversified_sort_is_the_greedy_oracle_without_lift() -> None:
    world = make_world(SMALL, np.random.default_rng(0))
    no_lift = ClickModel(world, replace(SMALL, lift_weight=0.0))
    rng = np.random.default_rng(4)
    users = rng.integers(0, SMALL.n_users, 200)
    items = np.stack([rng.choice(SMALL.n_items, 8, replace=False) for _ in range(200)])
    alone = np.zeros(items.shape)
    point_wise = no_lift.attractiveness_logit(users, items, alone, alone)
    key = diversified_scores(point_wise, world.item_topic[items], world.saturation[users, None])
    greedy = no_lift.greedy_oracle(users, items, np.ones_like(items, dtype=bool))
    np.testing.assert_array_equal(np.argsort(-key, axis=1, kind="stable"), greedy)


def test_greedy_oracle_is_a_permutation_that_beats_random_orders(click_model: ClickModel) -> None:
    rng = np.random.default_rng(3)
    users = rng.integers(0, SMALL.n_users, 50)
    items = np.stack([rng.choice(SMALL.n_items, 8, replace=False) for _ in range(50)])
    mask = np.ones_like(items, dtype=bool)
    mask[:10, 6:] = False  # shorter lists: padding stays at the end
    order = click_model.greedy_oracle(users, items, mask)
    assert (np.sort(order, axis=1) == np.arange(8)).all()
    assert not mask[np.arange(50)[:, None], order][:10, 6:].any()
    best = click_model.expected_clicks(
        users, np.take_along_axis(items, order, 1), np.take_along_axis(mask, order, 1)
    )
    for _ in range(20):
        shuffled = np.argsort(rng.random(items.shape) + ~mask * 10, axis=1)
        other = click_model.expected_clicks(
            users, np.take_along_axis(items, shuffled, 1), np.take_along_axis(mask, shuffled, 1)
        )
        assert (best >= other - 1e-12).mean() > 0.95


def test_click_model_round_trips_through_files(tiny_data_dir: Path) -> None:
    model = load_click_model(tiny_data_dir)
    assert model.world.taste.shape[0] == model.config.n_users


def test_missing_truth_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="world.npz"):
        load_click_model(tmp_path)
