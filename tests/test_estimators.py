"""The notebook API: in-memory lists in, a fitted scikit-learn-style re-ranker out."""

from __future__ import annotations

import numpy as np
import pytest

import prm
from prm import ListDataset, ListReranker, PRMReranker
from prm.config import ConfigError
from prm.registry import RERANKERS


def planted_lists(n: int, seed: int) -> ListDataset:
    """Lists of 6-12 items; the clicked item is the one with the largest first feature, a
    fact about the list that a set scorer can learn."""
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for length in rng.integers(6, 13, size=n):
        x = rng.normal(size=(length, 4))
        features.append(x)
        labels.append((x[:, 0] == x[:, 0].max()).astype(float))
    return ListDataset.from_arrays(features, labels)


def test_from_arrays_pads_variable_length_lists() -> None:
    lists = ListDataset.from_arrays([np.ones((2, 3)), np.ones((4, 3))], [[0, 1], [1, 0, 0, 0]])
    assert lists.mask.tolist() == [[True, True, False, False], [True] * 4]
    assert lists.labels[0].tolist() == [0, 1, 0, 0] and lists.d_pv == 0
    assert lists.positions[1].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="list 1: features must be"):
        ListDataset.from_arrays([np.ones((2, 3)), np.ones((4, 3))], [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="list 0: features or labels hold NaN"):
        ListDataset.from_arrays([np.full((2, 3), np.nan)], [[0, 1]])


def test_from_pandas_groups_a_long_table_into_lists_in_rank_order() -> None:
    pandas = pytest.importorskip("pandas")  # a dev dependency, optional for users
    frame = pandas.DataFrame(
        {
            "session": [7, 7, 3, 7, 3],
            "rank": [2, 0, 0, 1, 1],
            "user": [5, 5, 1, 5, 1],
            "item": [70, 71, 30, 72, 31],
            "price": [0.2, 0.0, 1.0, 0.1, 1.1],
            "click": [1, 0, 0, 0, 1],
        }
    )
    lists = ListDataset.from_pandas(
        frame,
        feature_columns=["price"],
        list_column="session",
        position_column="rank",
        user_column="user",
        item_column="item",
    )
    assert lists.list_ids.tolist() == [7, 3]  # in the order of their first row
    assert lists.user_ids.tolist() == [5, 1]
    assert lists.item_ids.tolist() == [[71, 72, 70], [30, 31, 0]]
    assert lists.features[0, :, 0].tolist() == pytest.approx([0.0, 0.1, 0.2])
    assert lists.labels.tolist() == [[0, 0, 1], [0, 1, 0]]
    assert lists.mask.tolist() == [[True, True, True], [True, True, False]]
    frame.loc[0, "rank"] = 1
    with pytest.raises(ValueError, match="rank: list 7 has a position twice"):
        ListDataset.from_pandas(
            frame, feature_columns=["price"], list_column="session", position_column="rank"
        )


def test_prm_reranker_learns_a_planted_list_wise_task() -> None:
    train, test = planted_lists(600, 0), planted_lists(200, 1)
    model = PRMReranker(epochs=8, d_model=16, n_heads=2, n_blocks=1, d_ff=32, lr=3e-3)
    assert model.fit(train).score(test) > 0.9
    order = model.rank(test)
    assert sorted(order[0][: test.mask[0].sum()]) == list(range(test.mask[0].sum()))


@pytest.mark.parametrize("kind", sorted(RERANKERS))
def test_every_registered_kind_fits_and_predicts(kind: str) -> None:
    train, test = planted_lists(64, 0), planted_lists(16, 1)
    model = ListReranker(kind, epochs=1, batch_size=32).fit(train, planted_lists(16, 2))
    scores = model.predict(test)
    assert scores.shape == test.mask.shape
    assert np.isfinite(scores[test.mask]).all()


def test_unknown_parameters_are_rejected_by_name() -> None:
    with pytest.raises(ConfigError, match="d_modle"):
        PRMReranker(d_modle=8).fit(planted_lists(20, 0))
    with pytest.raises(ValueError, match="unknown re-ranker kind"):
        ListReranker("transformer")
    with pytest.raises(RuntimeError, match="call fit"):
        PRMReranker().predict(planted_lists(2, 0))


def test_public_names_resolve() -> None:
    for name in prm.__all__:
        assert getattr(prm, name) is not None
    with pytest.raises(AttributeError):
        prm.nothing_here  # noqa: B018
