"""MovieLens 100K as a personalized re-ranking dataset, in the simulator's Parquet format.

Protocol (docs/datasets.md has the reasons and the counts):

1. Each user's ratings are sorted by time (ties by item id). The first ``history_fraction`` of
   them is the user's history period: its ratings of 4 or more are the user's fixed
   ``history`` (the last ``history_length`` of them), and all history-period ratings give item
   popularity and mean rating. No list is built from it.
2. The rest of the timeline is cut into consecutive sessions of about ``rated_per_list``
   ratings. A session's candidates are its rated items plus ``negatives_per_list`` items the
   user never rated, drawn with probability proportional to popularity + 1.
3. A fixed initial ranker (popularity plus the genre match between item and history) orders
   the candidates; the top ``list_length`` form the list. Label: rating >= ``click_rating``
   is a click; low ratings and sampled items are 0.
4. Lists are ordered by the time of their last rating; the earliest are ``train``, then
   ``valid``, then ``test``, so every training list ends no later than any valid list.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from prm.data.files import dataset_dir, line_error, numbered_lines
from prm.data.tables import DataError
from prm.io import write_json, write_parquet


@dataclass(frozen=True)
class MovieLensProtocol:
    """How ratings become users, items and lists; see the module docstring."""

    seed: int = 0
    history_fraction: float = 0.5  # first part of each user's timeline: history, no lists
    history_length: int = 50  # most recent positive history ratings kept per user
    rated_per_list: int = 10  # consecutive later ratings in one list's candidates (at most)
    negatives_per_list: int = 30  # unrated items added to each list's candidates
    list_length: int = 30  # L: candidates kept by the initial ranker
    click_rating: int = 4  # a rating at or above this is a click
    valid_fraction: float = 0.1  # share of lists, the latest but the test ones
    test_fraction: float = 0.1  # share of lists, the latest


@dataclass(frozen=True)
class Ratings:
    """``u.data`` with 0-based ids."""

    user: np.ndarray  # (n,) int64
    item: np.ndarray  # (n,) int64
    rating: np.ndarray  # (n,) int64 in 1..5
    time: np.ndarray  # (n,) int64 unix seconds


def _fields(
    path: Path, sep: str, n_fields: int | None, encoding: str = "utf-8"
) -> Iterator[tuple[int, list[str]]]:
    """Split lines on ``sep``; every line must have ``n_fields`` fields (or as many as the
    first line when ``n_fields`` is None)."""
    for line_no, line in numbered_lines(path, encoding):
        fields = line.rstrip("\r\n").split(sep)
        n_fields = len(fields) if n_fields is None else n_fields
        if len(fields) != n_fields:
            raise line_error(path, line_no, f"{len(fields)} fields, expected {n_fields}")
        yield line_no, fields


def _int(path: Path, line_no: int, text: str, what: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise line_error(
            path, line_no, f"bad {what} {text!r}: expected an integer in {low}..{high}"
        )
    return int(text)


def _check_ids(path: Path, ids: list[tuple[int, int]], what: str) -> None:
    """``(line_no, id)`` in line order must number 1..n, so that id - 1 is the row number."""
    for row, (line_no, found) in enumerate(ids):
        if found != row + 1:
            raise line_error(path, line_no, f"{what} {found}, expected {row + 1} (ids run 1..n)")


def read_items(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``u.item`` (latin-1, '|'): (genre flags (n_items, G) float32, year (n_items,) NaN if
    unknown)."""
    ids, genres, years = [], [], []
    for line_no, fields in _fields(path, "|", None, encoding="latin-1"):
        if len(fields) < 6:
            raise line_error(path, line_no, f"{len(fields)} fields, expected 5 + genre flags")
        ids.append((line_no, _int(path, line_no, fields[0], "movie id", 1, 10**9)))
        genres.append([_int(path, line_no, flag, "genre flag", 0, 1) for flag in fields[5:]])
        date = fields[2].strip()  # e.g. 01-Jan-1995, or empty
        if date and not (date[-4:].isascii() and date[-4:].isdigit()):
            raise line_error(path, line_no, f"bad release date {date!r}: expected DD-Mon-YYYY")
        years.append(float(date[-4:]) if date else np.nan)
    _check_ids(path, ids, "movie id")
    return np.asarray(genres, dtype=np.float32), np.asarray(years)


def read_users(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``u.user`` ('|'): (age (n_users,), female (n_users,) 0/1, occupation names)."""
    ids, ages, female, occupations = [], [], [], []
    for line_no, fields in _fields(path, "|", 5):
        ids.append((line_no, _int(path, line_no, fields[0], "user id", 1, 10**9)))
        ages.append(_int(path, line_no, fields[1], "age", 0, 150))
        if fields[2] not in ("M", "F"):
            raise line_error(path, line_no, f"bad gender {fields[2]!r}: expected M or F")
        female.append(fields[2] == "F")
        occupations.append(fields[3])
    _check_ids(path, ids, "user id")
    return np.asarray(ages, dtype=np.float64), np.asarray(female, dtype=np.float32), occupations


def read_ratings(path: Path, n_users: int, n_items: int) -> Ratings:
    """``u.data`` (tab): user id, item id, rating, unix time; ids must be known users/items."""
    rows = [
        (
            _int(path, line_no, fields[0], "user id", 1, n_users) - 1,
            _int(path, line_no, fields[1], "item id", 1, n_items) - 1,
            _int(path, line_no, fields[2], "rating", 1, 5),
            _int(path, line_no, fields[3], "timestamp", 0, 2**62),
        )
        for line_no, fields in _fields(path, "\t", 4)
    ]
    if not rows:
        raise DataError(f"{path}: no ratings")
    user, item, rating, stamp = np.asarray(rows, dtype=np.int64).T
    return Ratings(user=user, item=item, rating=rating, time=stamp)


def _zscore(x: np.ndarray) -> np.ndarray:
    """Standardized values; NaN (unknown) becomes 0, the mean."""
    std = np.nanstd(x)
    z = (x - np.nanmean(x)) / (std if std > 0 else 1.0)
    return np.nan_to_num(z, nan=0.0)


def _list_column(rows: list[np.ndarray], value_type: pa.DataType) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int32)
    values = np.concatenate(rows) if rows else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


@dataclass(frozen=True)
class Timeline:
    """Ratings sorted by user, then time, then item; user u owns rows ``first[u]:first[u+1]``,
    of which ``first[u]:cut[u]`` are its history period."""

    ratings: Ratings
    first: np.ndarray  # (n_users + 1,) int64
    cut: np.ndarray  # (n_users,) int64

    def history(self, u: int) -> slice:
        return slice(self.first[u], self.cut[u])

    def later(self, u: int) -> np.ndarray:
        return np.arange(self.cut[u], self.first[u + 1])

    def in_history(self) -> np.ndarray:
        """(n_ratings,) bool."""
        user = self.ratings.user
        return np.arange(len(user)) < self.cut[user]


def timeline(r: Ratings, n_users: int, history_fraction: float) -> Timeline:
    """Step 1: sort each user's ratings by time; the first ``history_fraction`` (at least one
    rating, and one left for lists when the user has two) is the history period."""
    order = np.lexsort((r.item, r.time, r.user))
    sorted_ratings = Ratings(*(getattr(r, f)[order] for f in ("user", "item", "rating", "time")))
    n_rated = np.bincount(r.user, minlength=n_users)
    first = np.concatenate([[0], np.cumsum(n_rated)])
    n_history = np.clip(np.floor(history_fraction * n_rated), 1, np.maximum(n_rated - 1, 1))
    cut = first[:-1] + np.minimum(n_history.astype(np.int64), n_rated)
    return Timeline(ratings=sorted_ratings, first=first, cut=cut)


@dataclass(frozen=True)
class HistorySignals:
    """What the history period says about items and users; the only input of the initial
    ranker and of the negative sampling, so neither sees a list's own ratings."""

    popularity: np.ndarray  # (n_items,) history-period ratings
    mean_rating: np.ndarray  # (n_items,) shrunk towards the global mean
    liked: np.ndarray  # (n_ratings,) bool: history-period ratings that are clicks
    taste: np.ndarray  # (n_users, G) unit vector of the genres of the user's liked items


def history_signals(
    t: Timeline, genres: np.ndarray, n_users: int, click_rating: int
) -> HistorySignals:
    r, in_history = t.ratings, t.in_history()
    n_items = len(genres)
    popularity = np.bincount(r.item[in_history], minlength=n_items).astype(np.float64)
    rating_sum = np.bincount(r.item[in_history], r.rating[in_history], minlength=n_items)
    prior = r.rating[in_history].mean()
    liked = in_history & (r.rating >= click_rating)
    taste = np.zeros((n_users, genres.shape[1]))
    np.add.at(taste, r.user[liked], genres[r.item[liked]])
    return HistorySignals(
        popularity=popularity,
        mean_rating=(rating_sum + 5 * prior) / (popularity + 5),
        liked=liked,
        taste=_unit_rows(taste),
    )


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def make_lists(
    t: Timeline,
    signals: HistorySignals,
    genres: np.ndarray,
    p: MovieLensProtocol,
    rng: np.random.Generator,
) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """Steps 2-3: ``(end time, user, item ids in initial order, clicks)`` per session."""
    r, n_items = t.ratings, len(genres)
    log_popularity = np.log1p(signals.popularity)  # also the log of the sampling weight
    genre_unit = _unit_rows(genres)
    lists = []
    for u in range(len(t.cut)):
        later = t.later(u)
        if len(later) == 0:
            continue
        n_sessions = -(-len(later) // p.rated_per_list)  # ceil: sessions of at most that many
        sessions = np.array_split(later, n_sessions)
        rated = r.item[t.first[u] : t.first[u + 1]]
        # Gumbel top-k: draws without replacement, with probability proportional to popularity + 1
        keys = log_popularity + rng.gumbel(size=(len(sessions), n_items))  # (S, n_items)
        keys[:, rated] = -np.inf  # never an item the user rated, before or after
        n_negatives = min(p.negatives_per_list, n_items - len(rated))
        negatives = np.argsort(-keys, axis=1)[:, :n_negatives]  # (S, n_negatives)
        for session, sampled in zip(sessions, negatives, strict=True):
            candidates = np.concatenate([r.item[session], sampled])
            clicks = np.concatenate([r.rating[session] >= p.click_rating, np.zeros_like(sampled)])
            shuffle = rng.permutation(len(candidates))  # ties must not favour the rated items
            candidates, clicks = candidates[shuffle], clicks[shuffle]
            score = log_popularity[candidates] / log_popularity.max(initial=1.0) + (
                genre_unit[candidates] @ signals.taste[u]
            )  # popularity in [0, 1] plus the cosine of item genres and user taste
            top = np.argsort(-score, kind="stable")[: p.list_length]
            lists.append((int(r.time[session].max()), u, candidates[top], clicks[top] > 0))
    return lists


def time_splits(
    lists: list[tuple[int, int, np.ndarray, np.ndarray]], p: MovieLensProtocol
) -> dict[str, tuple[int, int]]:
    """Step 4: sort ``lists`` in place by end time; the ``[start, end)`` rows of each split."""
    lists.sort(key=lambda row: (row[0], row[1]))  # stable: a user's sessions keep their order
    n = len(lists)
    n_test, n_valid = round(p.test_fraction * n), round(p.valid_fraction * n)
    return {
        "train": (0, n - n_valid - n_test),
        "valid": (n - n_valid - n_test, n - n_test),
        "test": (n - n_test, n),
    }


def _write_lists(path: Path, lists: list, start: int) -> dict:
    """One ``lists_<split>.parquet`` (plus a ``time`` column, the list's last rating time)."""
    clicks = [row[3].astype(np.int8) for row in lists]
    write_parquet(
        path,
        pa.table(
            {
                "list_id": pa.array(np.arange(start, start + len(lists), dtype=np.int64)),
                "user_id": pa.array([row[1] for row in lists], pa.int32()),
                "item_ids": _list_column([row[2] for row in lists], pa.int32()),
                "clicks": _list_column(clicks, pa.int8()),
                "time": pa.array([row[0] for row in lists], pa.int64()),
            }
        ),
    )
    n_clicks = np.array([c.sum() for c in clicks], dtype=np.float64)
    return {
        "lists": len(lists),
        "users": len({row[1] for row in lists}),
        "mean_length": float(np.mean([len(c) for c in clicks])) if lists else 0.0,
        "mean_clicks": float(n_clicks.mean()) if lists else 0.0,
        "share_lists_with_click": float((n_clicks > 0).mean()) if lists else 0.0,
        "first_time": lists[0][0] if lists else None,
        "last_time": lists[-1][0] if lists else None,
    }


def convert_movielens(
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    protocol: MovieLensProtocol | None = None,
) -> dict:
    """Write ``items.parquet``, ``users.parquet``, ``lists_{train,valid,test}.parquet`` and
    ``stats.json`` for ml-100k into ``out_dir`` (readable by ``load_list_data``).

    ``data_dir`` is the folder holding ``ml-100k/`` (default: the shared data folder).
    Returns the statistics written to ``stats.json``.
    """
    started = time.perf_counter()
    p = MovieLensProtocol() if protocol is None else protocol
    out_dir = Path(out_dir)
    src = dataset_dir("ml-100k", data_dir)
    genres, years = read_items(src / "u.item")
    ages, female, occupations = read_users(src / "u.user")
    n_users, n_items = len(ages), len(genres)
    t = timeline(read_ratings(src / "u.data", n_users, n_items), n_users, p.history_fraction)
    signals = history_signals(t, genres, n_users, p.click_rating)
    lists = make_lists(t, signals, genres, p, np.random.default_rng(p.seed))

    stats: dict = {"protocol": asdict(p), "users": n_users, "items": n_items, "splits": {}}
    for split, (start, end) in time_splits(lists, p).items():
        path = out_dir / f"lists_{split}.parquet"
        stats["splits"][split] = _write_lists(path, lists[start:end], start)

    topic = np.where(genres.any(axis=1), genres.argmax(axis=1), 0)  # first flagged genre
    item_features = np.column_stack(
        [
            genres,
            _zscore(years),
            _zscore(np.log1p(signals.popularity)),
            _zscore(signals.mean_rating),
        ]
    ).astype(np.float32)
    write_parquet(
        out_dir / "items.parquet",
        pa.table(
            {
                "item_id": pa.array(np.arange(n_items, dtype=np.int32)),
                "topic": pa.array(topic.astype(np.int16)),
                "features": _list_column(list(item_features), pa.float32()),
            }
        ),
    )
    names = sorted(set(occupations))
    occupation = np.eye(len(names), dtype=np.float32)[[names.index(o) for o in occupations]]
    profile = np.column_stack([_zscore(ages), female, occupation]).astype(np.float32)
    history = [
        t.ratings.item[t.history(u)][signals.liked[t.history(u)]][-p.history_length :]
        for u in range(n_users)
    ]
    write_parquet(
        out_dir / "users.parquet",
        pa.table(
            {
                "user_id": pa.array(np.arange(n_users, dtype=np.int32)),
                "profile": _list_column(list(profile), pa.float32()),
                "history": _list_column(history, pa.int32()),
            }
        ),
    )
    stats["mean_history_length"] = float(np.mean([len(h) for h in history]))
    stats["seconds"] = round(time.perf_counter() - started, 2)
    write_json(out_dir / "stats.json", stats)
    return stats


def main(argv: list[str] | None = None) -> None:
    """``python -m prm.data.movielens --out DIR``: convert and print the statistics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the Parquet files to")
    parser.add_argument("--data-dir", help="folder holding ml-100k/ (default: shared data)")
    parser.add_argument("--seed", type=int, default=MovieLensProtocol.seed)
    args = parser.parse_args(argv)
    try:
        stats = convert_movielens(
            args.out, data_dir=args.data_dir, protocol=MovieLensProtocol(seed=args.seed)
        )
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
