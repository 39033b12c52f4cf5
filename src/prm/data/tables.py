"""The tables of a data folder and the checks every Parquet read goes through.

``DataError`` is the one error for bad input data: its message names the file, the row and
the column. Items (``items.parquet``) carry a ``topic`` and dense ``features``; users
(``users.parquet``) a dense ``profile`` and a ``history`` of clicked item ids; both are
indexed by id, and ids must equal row numbers. :class:`Catalog` holds them as the CTR model
and a serving bundle read them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class DataError(ValueError):
    """A data file that is missing or malformed; the message names the file and the row."""


def open_parquet(path: Path) -> pq.ParquetFile:
    """A Parquet file ready to read, or a DataError saying it is missing or unreadable."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from error


def read_table(path: str | Path, columns: dict[str, str]) -> pa.Table:
    """Read a Parquet file and check it has ``columns`` (name -> description for errors)."""
    path = Path(path)
    file = open_parquet(path)
    try:
        table = file.read()
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from error
    missing = [
        f"{name} ({what})" for name, what in columns.items() if name not in table.schema.names
    ]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


# Largest magnitude a float input may have: its square still fits in float32, so the norms and
# variances of a layer see no overflow (1e30 in one feature made every loss NaN).
MAX_MAGNITUDE = float(np.sqrt(np.finfo(np.float32).max))  # about 1.8e19


def require_ints(table: pa.Table, path: Path, *names: str) -> None:
    """Id columns hold integers (lists of integers for list columns): a float id is refused,
    never truncated (252.7 is not item 252), and so is a string."""
    for name in names:
        kind = table.schema.field(name).type
        inner = kind.value_type if pa.types.is_list(kind) or pa.types.is_large_list(kind) else kind
        if not pa.types.is_integer(inner):
            raise DataError(f"{path}: column {name} must hold integer ids, got {kind}")


def require_finite(values: np.ndarray, path: Path, name: str, first_row: int = 0) -> None:
    """Rows of ``values`` (N, d) finite and within ±:data:`MAX_MAGNITUDE`."""
    bad = ~(np.abs(values) <= MAX_MAGNITUDE)  # NaN too
    if bad.any():
        row, column = (int(i[0]) for i in np.nonzero(bad))
        value = values[row, column]
        what = "is not finite" if not np.isfinite(value) else f"exceeds ±{MAX_MAGNITUDE:.1e}"
        raise DataError(
            f"{path}: row {first_row + row}: {name}[{column}] = {value} {what} (float32 values "
            "must stay finite when squared; scale the column)"
        )


def padded_list_column(
    table: pa.Table, name: str, path: Path, dtype: type, length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow list column as a zero-padded (N, L) array and the (N,) row lengths.

    ``L`` is the longest row, or ``length`` when given (so pieces of one split read apart
    share a shape).
    """
    column = table.column(name).combine_chunks()
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        raise DataError(f"{path}: column {name} must be a list column, got {column.type}")
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: row {row}: column {name} is null")
    offsets = column.offsets.to_numpy()
    lengths = np.diff(offsets)
    values = column.values.slice(offsets[0], offsets[-1] - offsets[0])
    if values.null_count:
        row = int(np.searchsorted(offsets, _first_null(values) + offsets[0], side="right") - 1)
        raise DataError(f"{path}: row {row}: column {name} holds a null value")
    flat = values.to_numpy(zero_copy_only=False)
    if np.issubdtype(dtype, np.floating) and flat.dtype.kind == "f" and flat.size:
        overflow = np.abs(flat) > np.finfo(dtype).max  # a finite float64 turned to inf
        if overflow.any():
            at = int(np.flatnonzero(overflow)[0])
            row = int(np.searchsorted(offsets, at + offsets[0], side="right") - 1)
            raise DataError(
                f"{path}: row {row}: column {name} holds {flat[at]}, beyond {np.dtype(dtype).name}"
            )
    flat = flat.astype(dtype, copy=False)
    longest = int(lengths.max(initial=0))
    if length is not None and longest > length:
        raise DataError(f"{path}: column {name} has a row of {longest} values, more than {length}")
    out = np.zeros((len(lengths), longest if length is None else length), dtype=dtype)
    out[np.arange(out.shape[1]) < lengths[:, None]] = flat
    return out, lengths


def _first_null(values: pa.Array) -> int:
    return int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])


def fail_at_rows(path: Path, bad: np.ndarray, ids: np.ndarray, reason: str, first_row: int) -> None:
    """A DataError at the first row marked ``bad``, naming its list id."""
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: row {first_row + row} (list_id {int(ids[row])}): {reason}")


@dataclass(frozen=True)
class ItemTable:
    topic: np.ndarray  # (n_items,) int
    dense: np.ndarray  # (n_items, d) float32

    @property
    def features(self) -> np.ndarray:
        """Item features X seen by re-rankers: topic one-hot followed by dense features."""
        n_topics = int(self.topic.max(initial=-1)) + 1
        onehot = np.eye(n_topics, dtype=np.float32)[self.topic]
        return np.concatenate([onehot, self.dense], axis=1)


def require_row_ids(table: pa.Table, path: Path, name: str) -> None:
    """Ids of a table indexed by id must equal the row numbers 0..n-1."""
    ids = table.column(name).to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        row = int(np.flatnonzero(ids != np.arange(len(ids)))[0])
        raise DataError(f"{path}: row {row}: {name} must equal the row number 0..n-1")


def load_items(path: str | Path) -> ItemTable:
    path = Path(path)
    table = read_table(path, {"item_id": "int", "topic": "int", "features": "list<float>"})
    require_ints(table, path, "item_id", "topic")
    require_row_ids(table, path, "item_id")
    dense, lengths = padded_list_column(table, "features", path, np.float32)
    _same_lengths(lengths, path, "features")
    require_finite(dense, path, "features")
    topic = table.column("topic").to_numpy().astype(np.int64)
    if (topic < 0).any():
        raise DataError(f"{path}: row {int(np.flatnonzero(topic < 0)[0])}: negative topic")
    # Each topic is a one-hot column of X: ids beyond the item count are sparse ids (a
    # category code), which would make a huge, almost empty one-hot.
    if (topic >= len(topic)).any():
        row = int(np.flatnonzero(topic >= len(topic))[0])
        raise DataError(
            f"{path}: row {row}: topic {topic[row]} is not below the item count {len(topic)}; "
            "number the topics 0..n_topics-1"
        )
    return ItemTable(topic=topic, dense=dense)


def _same_lengths(lengths: np.ndarray, path: Path, name: str) -> None:
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise DataError(
            f"{path}: row {row}: column {name} has {lengths[row]} values, row 0 has {lengths[0]}"
        )


def load_users(path: str | Path, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users as the pre-training model sees them: (profile, history, history_mask)."""
    path = Path(path)
    table = read_table(path, {"user_id": "int", "profile": "list<float>", "history": "list<int>"})
    require_ints(table, path, "user_id", "history")
    require_row_ids(table, path, "user_id")
    profile, profile_lengths = padded_list_column(table, "profile", path, np.float32)
    _same_lengths(profile_lengths, path, "profile")  # never zero-padded
    require_finite(profile, path, "profile")
    history, lengths = padded_list_column(table, "history", path, np.int64)
    history_mask = np.arange(history.shape[1]) < lengths[:, None]
    bad = (history_mask & ((history < 0) | (history >= n_items))).any(axis=1)
    if bad.any():
        raise DataError(
            f"{path}: row {int(np.flatnonzero(bad)[0])}: column history holds an item id "
            f"outside 0..{n_items - 1}"
        )
    return profile, history, history_mask


@dataclass(frozen=True)
class Catalog:
    """Known users and items, indexed by id: what the CTR model looks up (its tables travel
    with it as buffers) and what a model bundle ships, so a request may name them by id."""

    profile: np.ndarray  # (n_users, d_profile) float32: dense user profile
    history: np.ndarray  # (n_users, H) int64: item ids of past clicks, any valid id at padding
    history_mask: np.ndarray  # (n_users, H) bool: True at real past clicks
    item_features: np.ndarray  # (n_items, d_feature) float32: item features X
    item_topic: np.ndarray | None = None  # (n_items,) int64: for the topic-affinity field

    def __post_init__(self) -> None:
        n_users = self.profile.shape[0]
        if self.history.shape != self.history_mask.shape or self.history.shape[0] != n_users:
            raise ValueError(
                f"Catalog: profile {self.profile.shape}, history {self.history.shape} and "
                f"history_mask {self.history_mask.shape} disagree on users or history length"
            )
        n_items = self.item_features.shape[0]
        if self.history.size and (self.history.min() < 0 or self.history.max() >= n_items):
            raise ValueError(f"Catalog: history holds item ids outside [0, {n_items})")
        if self.item_topic is not None and self.item_topic.shape != (n_items,):
            raise ValueError(
                f"Catalog: item_topic has shape {self.item_topic.shape}, expected ({n_items},)"
            )

    @property
    def n_users(self) -> int:
        return self.profile.shape[0]

    @property
    def n_items(self) -> int:
        return self.item_features.shape[0]

    @property
    def d_profile(self) -> int:
        return self.profile.shape[1]

    @property
    def d_feature(self) -> int:
        return self.item_features.shape[1]

    def save(self, path: Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        with open(path, "wb") as handle:
            np.savez(handle, **{name: value for name, value in arrays.items() if value is not None})

    @classmethod
    def load(cls, path: Path) -> Catalog:
        with np.load(path) as arrays:
            return cls(
                profile=arrays["profile"].astype(np.float32),
                history=arrays["history"].astype(np.int64),
                history_mask=arrays["history_mask"].astype(bool),
                item_features=arrays["item_features"].astype(np.float32),
                item_topic=arrays["item_topic"].astype(np.int64)
                if "item_topic" in arrays
                else None,
            )


def load_catalog(data_dir: Path) -> tuple[Catalog | None, ItemTable]:
    """The users and items of a data folder (``users.parquet``, ``items.parquet``); no
    catalog when the folder has no users table (it is needed only for PV pre-training)."""
    items = load_items(data_dir / "items.parquet")
    if not (data_dir / "users.parquet").exists():
        return None, items
    profile, history, history_mask = load_users(data_dir / "users.parquet", len(items.topic))
    catalog = Catalog(
        profile=profile,
        history=history,
        history_mask=history_mask,
        item_features=items.features,
        item_topic=items.topic,
    )
    return catalog, items
