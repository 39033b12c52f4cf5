"""Initial lists, the input of every re-ranker: a trained initial ranker's top-L per query.

As in the paper's LETOR experiment, the initial ranker never sees the queries whose lists the
re-rankers train on: each fold's training queries are split in two seeded halves, one to fit
the initial ranker, the other (ranked by it) to train re-rankers. ``vali`` selects re-rankers
and ``test`` evaluates them, both ranked by the same initial ranker.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from prm.data.batch import ListDataset
from prm.data.files import default_data_dir
from prm.data.letor import RankingQueries, load_ranking_file, split_queries
from prm.data.tables import DataError
from prm.evaluation.metrics import lists_with_click, rank_order, ranking_metrics, summarize
from prm.rankers.base import Ranker, pad_by_group
from prm.rankers.lambdamart import LambdaMART
from prm.rankers.linear_pairwise import LinearPairwise
from prm.rankers.pointwise_dnn import PointwiseDNN

RANKERS: dict[str, type[Ranker]] = {
    "lambdamart": LambdaMART,
    "linear_pairwise": LinearPairwise,
    "pointwise_dnn": PointwiseDNN,
}
LETOR_SPLITS = {"train": "train.txt", "valid": "vali.txt", "test": "test.txt"}


def make_ranker(name: str, **params: Any) -> Ranker:
    """An unfitted initial ranker by name, with keyword hyperparameters."""
    if name not in RANKERS:
        raise ValueError(f"unknown initial ranker {name!r}; known: {sorted(RANKERS)}")
    return RANKERS[name](**params)


def fit_ranker(ranker: Ranker, queries: RankingQueries) -> Ranker:
    """Fit ``ranker`` on all documents of ``queries``, grouped by query."""
    return ranker.fit(queries.features, queries.labels, queries.groups)


def initial_lists(ranker: Ranker, queries: RankingQueries, *, list_length: int) -> ListDataset:
    """Each query's documents sorted by the ranker's score and cut to the top ``list_length``.

    Ties keep the file order. Every list is padded to ``list_length``; ``positions`` is the
    initial rank (0-based), ``item_ids`` the document's row in ``queries``, ``list_ids`` the
    qid, and ``user_ids`` 0 (LETOR has no users). ``pv`` is empty (d_pv = 0).
    """
    if list_length < 1:
        raise ValueError(f"list_length must be >= 1, got {list_length}")
    scores = np.asarray(ranker.predict(queries.features), dtype=np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{type(ranker).__name__} gave NaN or infinite scores")
    length = max(list_length, int(queries.groups.max(initial=0)))
    padded_scores, mask = pad_by_group(scores, queries.groups, length)  # (Q, length)
    docs, _ = pad_by_group(np.arange(len(scores)), queries.groups, length)  # (Q, length)
    order = rank_order(padded_scores, mask)[:, :list_length]  # (Q, L) slots, best first
    docs = np.take_along_axis(docs, order, axis=1)  # (Q, L) document rows
    mask = np.take_along_axis(mask, order, axis=1)  # (Q, L)
    return ListDataset(
        features=queries.features[docs] * mask[..., None],
        pv=np.zeros((*mask.shape, 0), dtype=np.float32),
        mask=mask,
        labels=queries.labels[docs] * mask,
        positions=np.arange(list_length) * mask,
        user_ids=np.zeros(len(queries), dtype=np.int64),
        list_ids=queries.qids.copy(),
        item_ids=docs * mask,
    )


def letor_reranking_data(
    fold_dir: str | Path,
    ranker_name: str,
    list_length: int,
    seed: int,
    cache_dir: str | Path | None,
    *,
    ranker_params: Mapping[str, Any] | None = None,
) -> dict[str, ListDataset]:
    """Re-ranking lists ``train``/``valid``/``test`` of one LETOR fold (``train.txt``,
    ``vali.txt``, ``test.txt``), ranked by ``ranker_name`` fitted on a seeded half of the
    training queries; ``train`` holds the lists of the other half."""
    fold_dir = Path(fold_dir)
    if not fold_dir.is_dir():
        raise DataError(
            f"{fold_dir}: LETOR fold folder not found; it should hold "
            f"{', '.join(LETOR_SPLITS.values())} (e.g. mq2008/Fold1 of the shared data folder)"
        )
    train = load_ranking_file(fold_dir / LETOR_SPLITS["train"], cache_dir=cache_dir)
    ranker_half, reranker_half = split_queries(train, 0.5, seed)
    queries = {"train": reranker_half}
    for split in ("valid", "test"):  # no feature index beyond the training file's
        path = fold_dir / LETOR_SPLITS[split]
        queries[split] = load_ranking_file(path, cache_dir=cache_dir, n_features=train.n_features)
    ranker = fit_ranker(make_ranker(ranker_name, seed=seed, **(ranker_params or {})), ranker_half)
    return {
        split: initial_lists(ranker, part, list_length=list_length)
        for split, part in queries.items()
    }


def initial_ndcg(lists: ListDataset, k: int = 10) -> float:
    """NDCG@k of the initial order, over the lists with a relevant document."""
    scores = -lists.positions.astype(np.float64)  # rank 0 first
    per_list = ranking_metrics(
        scores, lists.labels, mask=lists.mask, positions=lists.positions, ks=(k,)
    )
    return summarize(per_list, lists_with_click(lists.labels, lists.mask))[f"ndcg@{k}"]


def main(argv: list[str] | None = None) -> None:
    """``python -m prm.rankers.initial_lists --fold DIR``: NDCG@10 of each initial ranker."""
    parser = argparse.ArgumentParser(description="NDCG@10 of each initial ranker on a fold")
    parser.add_argument("--fold", default=str(default_data_dir() / "mq2008" / "Fold1"))
    parser.add_argument("--cache", default="runs/cache", help="Parquet cache of parsed files")
    parser.add_argument("--list-length", type=int, default=200, help="200 keeps whole queries")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in RANKERS:
        started = time.perf_counter()
        try:
            data = letor_reranking_data(args.fold, name, args.list_length, args.seed, args.cache)
        except DataError as error:
            raise SystemExit(f"error: {error}") from None
        seconds = time.perf_counter() - started
        ndcg = {split: round(initial_ndcg(data[split]), 4) for split in ("valid", "test")}
        print(json.dumps({"ranker": name, "ndcg@10": ndcg, "seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
