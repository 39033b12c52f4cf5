"""Learning-to-rank text files (SVMlight with ``qid``, or with a ``.query`` group file).

Two layouts are read:

* LETOR (MQ2008): ``<label> qid:<qid> <idx>:<value> ... # comment``, each query's lines
  contiguous;
* LightGBM's ranking sample: ``<label> <idx>:<value> ...`` without ``qid``, plus a group file
  with one line per query holding its number of consecutive data lines.

Feature indices are 1-based and strictly increasing within a line; an omitted feature is 0.
The feature count is the largest index seen unless ``n_features`` is given. A parsed file is
cached as Parquet (one row per query) so the second load skips parsing.

Queries where every label is 0 are kept: they still train the initial ranker (LambdaMART's
gradients vanish on them, the point-wise model learns from their negatives). They never move
a metric, as metrics are averaged over lists with a relevant item only
(:func:`prm.evaluation.metrics.lists_with_click`).
"""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from prm.data.files import line_error
from prm.data.tables import DataError, read_table
from prm.io import write_parquet

CACHE_VERSION = 1  # bump when the parsing or the cache layout changes


@dataclass(frozen=True)
class RankingQueries:
    """Documents of ``Q`` queries, stored query after query: query q owns rows
    ``offsets[q]:offsets[q + 1]`` of ``features`` and ``labels``."""

    qids: np.ndarray  # (Q,) int64
    offsets: np.ndarray  # (Q + 1,) int64, offsets[0] = 0
    features: np.ndarray  # (n_docs, d) float32
    labels: np.ndarray  # (n_docs,) float32 graded relevance

    def __len__(self) -> int:
        return len(self.qids)

    @property
    def groups(self) -> np.ndarray:
        """(Q,) documents per query, LightGBM's ``group``."""
        return np.diff(self.offsets)

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    def subset(self, index: np.ndarray) -> RankingQueries:
        """The queries at ``index`` (integer), in that order."""
        index = np.asarray(index, dtype=np.int64)
        sizes = self.groups[index]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        # document r of the subset is document r - offsets[q] + self.offsets[index[q]]
        shift = np.repeat(self.offsets[index] - offsets[:-1], sizes)
        rows = shift + np.arange(offsets[-1])
        return RankingQueries(
            qids=self.qids[index],
            offsets=offsets,
            features=self.features[rows],
            labels=self.labels[rows],
        )

    def query_of_doc(self) -> np.ndarray:
        """(n_docs,) int64: the query index of each document."""
        return np.repeat(np.arange(len(self)), self.groups)

    def has_relevant(self) -> np.ndarray:
        """(Q,) bool: queries with at least one document of positive label."""
        return np.bincount(self.query_of_doc()[self.labels > 0], minlength=len(self)) > 0


def split_queries(
    queries: RankingQueries, fraction: float, seed: int
) -> tuple[RankingQueries, RankingQueries]:
    """A seeded random split of the queries: ``fraction`` of them, then the rest."""
    order = np.random.default_rng(seed).permutation(len(queries))
    cut = int(round(fraction * len(queries)))
    return queries.subset(np.sort(order[:cut])), queries.subset(np.sort(order[cut:]))


def _is_int(text: str) -> bool:
    return text.isascii() and text.isdigit()


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _number(text: str) -> float:
    """A decimal number that float32 holds, or ValueError (rejects 'nan', 'inf', Python's '1_0'
    and values such as 1e39 or 1e300 that become inf in float32)."""
    if not _NUMBER.match(text):
        raise ValueError(f"{text!r}")
    value = float(text)
    if abs(value) > FLOAT32_MAX:
        raise ValueError(f"{text!r}: beyond float32 (±{FLOAT32_MAX:.2e})")
    return value


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line_no, line)`` of a UTF-8 text file, skipping blank lines; a line that is not
    UTF-8 is a DataError at its ``file:line``, not a UnicodeDecodeError."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise line_error(
                    path,
                    line_no,
                    f"not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1})",
                ) from None
            if line.strip():
                yield line_no, line


def _read_groups(path: Path, n_lines: int, data_path: Path) -> np.ndarray:
    """Group sizes from a ``.query`` file; they must add up to the data file's line count."""
    sizes: list[int] = []
    total, last_line = 0, 0
    for line_no, line in numbered_lines(path):
        text, last_line = line.strip(), line_no
        if not _is_int(text) or int(text) == 0:
            raise line_error(path, line_no, f"bad group size {text!r}: expected an integer >= 1")
        sizes.append(int(text))
        total += sizes[-1]
        if total > n_lines:
            raise line_error(
                path,
                line_no,
                f"group sum mismatch: groups reach line {total} of {data_path}, "
                f"which has {n_lines} data lines",
            )
    if not sizes:
        raise DataError(f"{path}: empty group file, expected one group size per line")
    if total != n_lines:
        raise line_error(
            path,
            last_line,
            f"group sum mismatch: groups add up to {total} lines, "
            f"{data_path} has {n_lines} data lines",
        )
    return np.asarray(sizes, dtype=np.int64)


def parse_svmlight(
    path: str | Path, *, n_features: int | None = None, group_path: str | Path | None = None
) -> RankingQueries:
    """Parse a ranking file line by line into :class:`RankingQueries`.

    Queries come from ``qid:`` on every line, or, when ``group_path`` is given, from the group
    sizes (then numbered 0..Q-1, and a ``qid:`` on a line is an error). Raises
    :class:`~prm.data.tables.DataError` naming ``file:line`` for any malformed line.
    """
    path = Path(path)
    if n_features is not None and n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    labels, qids, rows = array("d"), array("q"), array("q")
    indices, values = array("q"), array("d")
    first_line_of_qid: dict[int, int] = {}
    n_lines = 0
    for line_no, line in numbered_lines(path):
        tokens = line.partition("#")[0].split()
        if not tokens:
            continue  # a comment line
        try:
            label = _number(tokens[0])
        except ValueError as error:
            raise line_error(path, line_no, f"bad label {error}") from None
        if label < 0:
            raise line_error(path, line_no, f"bad label {tokens[0]!r}: negative")
        start = 1
        if group_path is None:
            if len(tokens) < 2 or not tokens[1].startswith("qid:"):
                raise line_error(path, line_no, "bad qid: missing 'qid:<id>' after the label")
            qid_text = tokens[1][4:]
            if not _is_int(qid_text):
                raise line_error(path, line_no, f"bad qid {qid_text!r}: expected an integer")
            qid = int(qid_text)
            if qid in first_line_of_qid and qids[-1] != qid:
                raise line_error(
                    path,
                    line_no,
                    f"bad qid {qid}: its lines must be contiguous "
                    f"(seen from line {first_line_of_qid[qid]}, then another qid)",
                )
            first_line_of_qid.setdefault(qid, line_no)
            qids.append(qid)
            start = 2
        previous = 0
        for token in tokens[start:]:
            index_text, colon, value_text = token.partition(":")
            if index_text == "qid":
                where = "" if group_path is None else f" (queries come from {group_path})"
                raise line_error(path, line_no, f"bad qid: unexpected {token!r}{where}")
            if not colon or not _is_int(index_text):
                raise line_error(path, line_no, f"bad feature {token!r}: expected <index>:<value>")
            index = int(index_text)
            if index < 1 or (n_features is not None and index > n_features):
                limit = "" if n_features is None else f" and <= n_features = {n_features}"
                raise line_error(path, line_no, f"bad feature index {index}: must be >= 1{limit}")
            if index <= previous:
                kind = "duplicate" if index == previous else "non-increasing"
                raise line_error(path, line_no, f"{kind} feature index {index} after {previous}")
            try:
                value = _number(value_text)
            except ValueError as error:
                raise line_error(
                    path, line_no, f"bad feature value {error} at index {index}"
                ) from None
            previous = index
            indices.append(index - 1)
            values.append(value)
            rows.append(n_lines)
        labels.append(label)
        n_lines += 1
    if n_lines == 0:
        raise DataError(f"{path}: no data lines")
    if not indices and n_features is None:
        raise DataError(f"{path}: no feature on any line; pass n_features")
    columns = np.frombuffer(indices, np.int64)
    features = np.zeros((n_lines, n_features or int(columns.max()) + 1), dtype=np.float32)
    features[np.frombuffer(rows, np.int64), columns] = np.frombuffer(values, np.float64)
    if group_path is None:
        qid_per_line = np.frombuffer(qids, np.int64)
        starts = np.flatnonzero(np.r_[True, qid_per_line[1:] != qid_per_line[:-1]])
        sizes = np.diff(np.r_[starts, n_lines])
        qid_array = qid_per_line[starts]
    else:
        sizes = _read_groups(Path(group_path), n_lines, path)
        qid_array = np.arange(len(sizes), dtype=np.int64)
    return RankingQueries(
        qids=qid_array.astype(np.int64),
        offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        features=features,
        labels=np.frombuffer(labels, np.float64).astype(np.float32),
    )


def _cache_path(
    cache_dir: Path, path: Path, n_features: int | None, group_path: Path | None
) -> Path:
    """A cache file whose name changes whenever a source file or a parse option changes."""
    sources = [path] if group_path is None else [path, group_path]
    key = json.dumps(
        {
            "version": CACHE_VERSION,
            "n_features": n_features,
            "sources": [
                [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in sources
            ],
        }
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{path.parent.name}-{path.name}")
    return cache_dir / f"{slug}-{digest}.parquet"


def _to_table(queries: RankingQueries) -> pa.Table:
    """One row per query: ``qid``, ``labels`` list<float>, ``features`` list<list<float>[d]>."""
    offsets = pa.array(queries.offsets.astype(np.int32))
    docs = pa.FixedSizeListArray.from_arrays(
        pa.array(queries.features.ravel(), pa.float32()), queries.n_features
    )
    return pa.table(
        {
            "qid": pa.array(queries.qids, pa.int64()),
            "labels": pa.ListArray.from_arrays(offsets, pa.array(queries.labels, pa.float32())),
            "features": pa.ListArray.from_arrays(offsets, docs),
        }
    )


def _from_table(table: pa.Table, path: Path) -> RankingQueries:
    labels = table.column("labels").combine_chunks()
    features = table.column("features").combine_chunks()
    if not pa.types.is_fixed_size_list(features.type.value_type):
        raise DataError(f"{path}: column features must be list<fixed_size_list<float>>")
    offsets = labels.offsets.to_numpy().astype(np.int64)
    if not np.array_equal(offsets, features.offsets.to_numpy()):
        raise DataError(f"{path}: labels and features differ in documents per query")
    d = features.type.value_type.list_size
    flat = features.values.values.to_numpy(zero_copy_only=False)
    return RankingQueries(
        qids=table.column("qid").to_numpy().astype(np.int64),
        offsets=offsets - offsets[0],
        features=flat.astype(np.float32, copy=False).reshape(-1, d),
        labels=labels.values.to_numpy(zero_copy_only=False).astype(np.float32),
    )


def load_ranking_file(
    path: str | Path,
    *,
    cache_dir: str | Path | None = None,
    n_features: int | None = None,
    group_path: str | Path | None = None,
) -> RankingQueries:
    """:func:`parse_svmlight`, through a Parquet cache in ``cache_dir`` when one is given.

    The cache is keyed by the source files' paths, sizes and modification times and by
    ``n_features``, and written atomically, so it is never stale nor half-written.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    group_path = None if group_path is None else Path(group_path)
    if group_path is not None and not group_path.is_file():
        raise DataError(f"{group_path}: group file not found")
    if cache_dir is None:
        return parse_svmlight(path, n_features=n_features, group_path=group_path)
    cache = _cache_path(Path(cache_dir), path, n_features, group_path)
    if cache.is_file():
        table = read_table(cache, {"qid": "int", "labels": "list<float>", "features": "list"})
        return _from_table(table, cache)
    queries = parse_svmlight(path, n_features=n_features, group_path=group_path)
    write_parquet(cache, _to_table(queries))
    return queries
