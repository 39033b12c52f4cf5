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
from dataclasses import dataclass
from functools import cached_property
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


@dataclass(frozen=True)
class RankingFiles:
    """One fold's ranking files in svmlight format: queries from ``qid:`` on each line, or from
    a LightGBM group file ``<file>.query`` beside the file when there is one. Without a
    validation file, the re-rankers' half of the training queries is split 3:1 into train and
    valid."""

    train: Path
    valid: Path | None
    test: Path

    @classmethod
    def in_folder(
        cls,
        folder: str | Path,
        train: str = "train.txt",
        valid: str | None = "vali.txt",
        test: str = "test.txt",
    ) -> RankingFiles:
        """The files named ``train``, ``valid`` and ``test`` in ``folder`` (LETOR's names by
        default); a clear error when the folder is missing."""
        folder = Path(folder)
        if not folder.is_dir():
            names = ", ".join(n for n in (train, valid, test) if n)
            raise DataError(f"{folder}: ranking folder not found; it should hold {names}")
        return cls(folder / train, None if valid is None else folder / valid, folder / test)


def _load(path: Path, cache_dir: str | Path | None, n_features: int | None) -> RankingQueries:
    group = path.with_name(path.name + ".query")
    return load_ranking_file(
        path,
        cache_dir=cache_dir,
        n_features=n_features,
        group_path=group if group.is_file() else None,
    )


@dataclass(frozen=True)
class FoldLists:
    """One fold's re-ranking lists, the whole queries behind the valid and test lists (for
    full-query metrics and run files), and the scores the full-data reference ranker gives
    their documents."""

    splits: dict[str, ListDataset]
    queries: dict[str, RankingQueries]  # "valid", "test"
    reference_scores: dict[str, np.ndarray]  # per document of ``queries[split]``

    def reference_list_scores(self, split: str) -> np.ndarray:
        """(N, L) the reference ranker's scores of each list's items (0 at padding)."""
        lists = self.splits[split]
        return self.reference_scores[split][lists.item_ids] * lists.mask

    @cached_property
    def _whole_queries(self) -> dict[str, dict[str, np.ndarray]]:
        """Per held-out split, its queries padded once: ``scores`` (the reference's),
        ``labels``, ``mask`` and ``docs`` (rows of the split's queries), each (Q, M)."""
        padded = {}
        for split, queries in self.queries.items():
            scores, mask = pad_by_group(self.reference_scores[split], queries.groups)
            labels, _ = pad_by_group(queries.labels, queries.groups)
            docs, _ = pad_by_group(np.arange(len(queries.labels)), queries.groups)
            padded[split] = {"scores": scores, "labels": labels, "mask": mask, "docs": docs}
        return padded

    def reference_over_queries(self, split: str) -> dict[str, np.ndarray]:
        """The whole query behind each list, padded, as the reference ranker sees it:
        ``scores``, ``labels``, ``mask`` and ``docs`` (rows of the split's queries), each
        (N, M)."""
        n = len(self.splits[split])  # the first lists only, in quick runs
        return {name: values[:n] for name, values in self._whole_queries[split].items()}

    def query_labels(self, split: str) -> np.ndarray | None:
        """(N, M) the labels of the whole query behind each list (0 at padding); None for
        lists that are not cut from ranking queries."""
        if split not in self.queries:
            return None
        return self.reference_over_queries(split)["labels"]

    def head(self, max_lists: int | None) -> FoldLists:
        """The first ``max_lists`` lists of each split (quick runs); lists keep their queries."""
        if max_lists is None:
            return self
        splits = {s: d.subset(np.arange(min(max_lists, len(d)))) for s, d in self.splits.items()}
        return FoldLists(splits, self.queries, self.reference_scores)


def reranking_lists(
    files: RankingFiles,
    ranker_name: str,
    list_length: int,
    seed: int,
    cache_dir: str | Path | None,
    *,
    ranker_params: Mapping[str, Any] | None = None,
) -> FoldLists:
    """Re-ranking lists ``train``/``valid``/``test`` of one fold, ranked by ``ranker_name``
    fitted on a seeded half of the training queries; ``train`` holds the lists of the other
    half. The same ranker fitted on all the training queries is the full-data reference."""
    train = _load(files.train, cache_dir, None)
    ranker_half, reranker_half = split_queries(train, 0.5, seed)
    if files.valid is None:
        reranker_half, valid = split_queries(reranker_half, 0.75, seed)
    else:  # no feature index beyond the training file's
        valid = _load(files.valid, cache_dir, train.n_features)
    queries = {
        "train": reranker_half,
        "valid": valid,
        "test": _load(files.test, cache_dir, train.n_features),
    }
    params = {"seed": seed, **(ranker_params or {})}
    ranker = fit_ranker(make_ranker(ranker_name, **params), ranker_half)
    reference = fit_ranker(make_ranker(ranker_name, **params), train)
    held_out = ("valid", "test")
    return FoldLists(
        splits={s: initial_lists(ranker, q, list_length=list_length) for s, q in queries.items()},
        queries={s: queries[s] for s in held_out},
        reference_scores={s: reference.predict(queries[s].features) for s in held_out},
    )


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
            files = RankingFiles.in_folder(args.fold)
            data = reranking_lists(files, name, args.list_length, args.seed, args.cache).splits
        except DataError as error:
            raise SystemExit(f"error: {error}") from None
        seconds = time.perf_counter() - started
        ndcg = {split: round(initial_ndcg(data[split]), 4) for split in ("valid", "test")}
        print(json.dumps({"ranker": name, "ndcg@10": ndcg, "seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
