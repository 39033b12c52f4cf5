from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prm.data.letor import RankingQueries
from prm.data.tables import DataError
from prm.evaluation.metrics import lists_with_click, ndcg_at_k, summarize
from prm.rankers.base import Ranker, check_groups, pad_by_group
from prm.rankers.initial_lists import (
    RANKERS,
    RankingFiles,
    initial_lists,
    initial_ndcg,
    make_ranker,
    reranking_lists,
)
from prm.rankers.linear_pairwise import preference_pairs

FAST = {  # small but enough to learn the planted task
    "lambdamart": {"n_estimators": 30, "min_child_samples": 5},
    "linear_pairwise": {"epochs": 10},
    "pointwise_dnn": {"epochs": 15},
}


def planted_queries(n_queries: int, seed: int, n_docs: int = 15, d: int = 6) -> RankingQueries:
    """Graded labels 0..3 from a hidden score: linear in two features, quadratic in a third."""
    rng = np.random.default_rng(seed)
    n = n_queries * n_docs
    x = rng.standard_normal((n, d)).astype(np.float32)
    hidden = x[:, 0] + 0.5 * x[:, 1] - 0.5 * x[:, 2] ** 2 + 0.3 * rng.standard_normal(n)
    labels = np.digitize(hidden, np.quantile(hidden, [0.6, 0.8, 0.93])).astype(np.float32)
    return RankingQueries(
        qids=np.arange(n_queries, dtype=np.int64),
        offsets=np.arange(0, n + 1, n_docs, dtype=np.int64),
        features=x,
        labels=labels,
    )


def _random_ndcg(queries: RankingQueries, seed: int) -> float:
    labels, mask = pad_by_group(queries.labels, queries.groups)
    scores = np.random.default_rng(seed).random(mask.shape)
    per_list = {"ndcg": ndcg_at_k(scores, labels, mask=mask, k=10)}
    return summarize(per_list, lists_with_click(labels, mask))["ndcg"]


@pytest.mark.parametrize("name", sorted(RANKERS))
def test_each_ranker_beats_random_on_a_planted_task(name: str) -> None:
    train, test = planted_queries(40, seed=0), planted_queries(20, seed=1)
    ranker = make_ranker(name, seed=0, **FAST[name])
    ranker.fit(train.features, train.labels, train.groups)
    ndcg = ranker.score(test.features, test.labels, test.groups, k=10)
    assert ndcg > _random_ndcg(test, seed=0) + 0.2


@pytest.mark.parametrize("name", ["linear_pairwise", "pointwise_dnn"])
def test_torch_rankers_are_deterministic_given_the_seed(name: str) -> None:
    queries = planted_queries(10, seed=0)

    def predictions() -> np.ndarray:
        ranker = make_ranker(name, seed=3, epochs=2)
        return ranker.fit(queries.features, queries.labels, queries.groups).predict(
            queries.features
        )

    np.testing.assert_array_equal(predictions(), predictions())


def test_preference_pairs_stay_within_queries() -> None:
    better, worse = preference_pairs(np.array([2.0, 0, 1, 1, 0]), np.array([3, 2]))
    assert sorted(zip(better.tolist(), worse.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (2, 1),
        (3, 4),
    ]


def test_bad_inputs_are_rejected() -> None:
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="sum to 4 rows"):
        check_groups(x, np.zeros(4), np.array([2, 1]))
    with pytest.raises(ValueError, match="unknown initial ranker 'svm'"):
        make_ranker("svm")
    with pytest.raises(ValueError, match="integer labels"):
        make_ranker("lambdamart").fit(x, np.array([0, 0.5, 1, 0]), np.array([4]))


class FixedScores(Ranker):
    """A stand-in ranker whose scores are given."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = np.asarray(scores)

    def fit(self, X, y, groups):
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.scores


def test_initial_lists_sort_by_score_cut_to_l_and_pad() -> None:
    queries = RankingQueries(
        qids=np.array([7, 9]),
        offsets=np.array([0, 4, 6]),
        features=np.arange(12, dtype=np.float32).reshape(6, 2),
        labels=np.array([0, 1, 2, 0, 1, 0], dtype=np.float32),
    )
    ranker = FixedScores([0.1, 0.9, 0.5, 0.9, 0.2, 0.3])  # a tie at docs 1 and 3
    lists = initial_lists(ranker, queries, list_length=3)
    assert lists.item_ids.tolist() == [[1, 3, 2], [5, 4, 0]]  # the tie keeps file order
    assert lists.mask.tolist() == [[True, True, True], [True, True, False]]
    assert lists.positions.tolist() == [[0, 1, 2], [0, 1, 0]]
    assert lists.labels.tolist() == [[1, 0, 2], [0, 1, 0]]
    np.testing.assert_array_equal(lists.features[0], queries.features[[1, 3, 2]])
    assert (lists.features[1, 2] == 0).all()
    assert lists.list_ids.tolist() == [7, 9]
    assert (lists.d_pv, lists.list_length) == (0, 3)
    assert initial_lists(ranker, queries, list_length=8).mask.sum(axis=1).tolist() == [4, 2]
    ideal = initial_lists(FixedScores(queries.labels.tolist()), queries, list_length=8)
    assert initial_ndcg(ideal) == pytest.approx(1.0)


def _write_fold(fold: Path, sizes: dict[str, int], *, group_files: bool = False) -> None:
    """A LETOR fold of planted queries; qids are disjoint across files. ``group_files``: no
    ``qid:`` on the lines, LightGBM group files ``<file>.query`` beside them instead."""
    fold.mkdir()
    start = 0
    for seed, (name, n_queries) in enumerate(sizes.items()):
        queries = planted_queries(n_queries, seed=seed, d=4)
        lines = []
        for q in range(n_queries):
            qid = "" if group_files else f" qid:{start + q}"
            for row in range(queries.offsets[q], queries.offsets[q + 1]):
                values = " ".join(f"{i + 1}:{v:.4f}" for i, v in enumerate(queries.features[row]))
                lines.append(f"{int(queries.labels[row])}{qid} {values} #docid = d{row}")
        (fold / name).write_text("\n".join(lines) + "\n")
        if group_files:
            (fold / f"{name}.query").write_text("\n".join(map(str, queries.groups)) + "\n")
        start += n_queries


def test_reranking_lists_use_a_disjoint_half_for_the_ranker(tmp_path: Path) -> None:
    fold = tmp_path / "Fold1"
    _write_fold(fold, {"train.txt": 30, "vali.txt": 8, "test.txt": 10})
    files = RankingFiles.in_folder(fold)
    lists = reranking_lists(
        files, "lambdamart", 10, 0, tmp_path / "cache", ranker_params=FAST["lambdamart"]
    )
    data = lists.splits
    assert list(data) == ["train", "valid", "test"]
    assert [len(data[s]) for s in data] == [15, 8, 10]
    assert data["train"].list_ids.max() < 30 and data["valid"].list_ids.min() == 30
    assert data["test"].list_length == 10 and data["test"].mask.all()
    again = reranking_lists(files, "lambdamart", 10, 0, tmp_path / "cache").splits
    other = reranking_lists(files, "lambdamart", 10, 1, tmp_path / "cache").splits
    assert sorted(again["train"].list_ids) != sorted(other["train"].list_ids)
    with pytest.raises(DataError, match="Fold9: ranking folder not found"):
        RankingFiles.in_folder(tmp_path / "Fold9")


def test_reranking_lists_from_group_files_without_validation_file(tmp_path: Path) -> None:
    """Queries from ``<file>.query``; no validation file: the re-rankers' half is split 3:1.
    The full-data reference ranker scores every test document; each list keeps the labels of
    its whole query for full-query metrics."""
    folder = tmp_path / "sample"
    _write_fold(folder, {"rank.train": 40, "rank.test": 6}, group_files=True)
    files = RankingFiles.in_folder(folder, "rank.train", None, "rank.test")
    lists = reranking_lists(files, "lambdamart", 4, 0, None, ranker_params=FAST["lambdamart"])
    assert [len(lists.splits[s]) for s in ("train", "valid", "test")] == [15, 5, 6]
    test, queries = lists.splits["test"], lists.queries["test"]
    assert len(lists.reference_scores["test"]) == len(queries.labels)
    full_labels = lists.query_labels("test")
    assert full_labels.shape[0] == 6 and (full_labels.sum(1) >= test.labels.sum(1)).all()
    assert (full_labels.sum(1) > test.labels.sum(1)).any()  # the cut drops relevant documents
    scores = lists.reference_list_scores("test")
    np.testing.assert_array_equal(
        scores[test.mask], lists.reference_scores["test"][test.item_ids[test.mask]]
    )
