"""Parquet readers for list logs, items and users, with errors that name the file and the row.

A list log has one row per shown list: ``list_id``, ``user_id``, ``item_ids`` (the initial
order) and ``clicks`` (same length). Items carry a ``topic`` and dense ``features``; users a
dense ``profile`` and a ``history`` of clicked item ids. Lists may differ in length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prm.data.batch import ListDataset
from prm.data.examination import EXPLORE, examination_from_randomized
from prm.data.shards import lists_source, shard_paths
from prm.pretrain.ctr import CTRTables

if TYPE_CHECKING:
    from prm.data.streaming import ListStream


class DataError(ValueError):
    """A data file that is missing or malformed; the message names the file and the row."""


def read_table(path: str | Path, columns: dict[str, str]) -> pa.Table:
    """Read a Parquet file and check it has ``columns`` (name -> description for errors)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from error
    missing = [
        f"{name} ({what})" for name, what in columns.items() if name not in table.schema.names
    ]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


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
    flat = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    longest = int(lengths.max(initial=0))
    if length is not None and longest > length:
        raise DataError(f"{path}: column {name} has a row of {longest} values, more than {length}")
    out = np.zeros((len(lengths), longest if length is None else length), dtype=dtype)
    out[np.arange(out.shape[1]) < lengths[:, None]] = flat
    return out, lengths


def _first_null(values: pa.Array) -> int:
    return int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])


def _fail_at(path: Path, bad: np.ndarray, ids: np.ndarray, reason: str, first_row: int) -> None:
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


def load_items(path: str | Path) -> ItemTable:
    path = Path(path)
    table = read_table(path, {"item_id": "int", "topic": "int", "features": "list<float>"})
    item_id = table.column("item_id").to_numpy()
    if not np.array_equal(item_id, np.arange(len(item_id))):
        row = int(np.flatnonzero(item_id != np.arange(len(item_id)))[0])
        raise DataError(f"{path}: row {row}: item_id must equal the row number 0..n-1")
    dense, lengths = padded_list_column(table, "features", path, np.float32)
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise DataError(f"{path}: row {row}: {lengths[row]} features, expected {lengths[0]}")
    if not np.isfinite(dense).all():
        row = int(np.flatnonzero(~np.isfinite(dense).all(axis=1))[0])
        raise DataError(f"{path}: row {row}: features hold NaN or inf")
    topic = table.column("topic").to_numpy().astype(np.int64)
    if (topic < 0).any():
        raise DataError(f"{path}: row {int(np.flatnonzero(topic < 0)[0])}: negative topic")
    return ItemTable(topic=topic, dense=dense)


def load_users(path: str | Path, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users as the pre-training model sees them: (profile, history, history_mask)."""
    path = Path(path)
    table = read_table(path, {"user_id": "int", "profile": "list<float>", "history": "list<int>"})
    user_id = table.column("user_id").to_numpy()
    if not np.array_equal(user_id, np.arange(len(user_id))):
        row = int(np.flatnonzero(user_id != np.arange(len(user_id)))[0])
        raise DataError(f"{path}: row {row}: user_id must equal the row number 0..n-1")
    profile, _ = padded_list_column(table, "profile", path, np.float32)
    history, lengths = padded_list_column(table, "history", path, np.int64)
    history_mask = np.arange(history.shape[1]) < lengths[:, None]
    bad = (history_mask & ((history < 0) | (history >= n_items))).any(axis=1)
    if bad.any():
        raise DataError(f"{path}: row {int(np.flatnonzero(bad)[0])}: history item id out of range")
    return profile, history, history_mask


LIST_COLUMNS = {"list_id": "int", "user_id": "int", "item_ids": "list<int>", "clicks": "list<int>"}


def load_lists(path: str | Path, items: ItemTable, n_users: int) -> ListDataset:
    """A list log (one Parquet file or a folder of part files) as a padded :class:`ListDataset`
    with item features gathered from ``items``. Rows of a folder are numbered across its parts."""
    path = Path(path)
    tables = [read_table(part, LIST_COLUMNS) for part in shard_paths(path)]
    return lists_dataset(pa.concat_tables(tables), items, n_users, path)


def lists_dataset(
    table: pa.Table,
    items: ItemTable,
    n_users: int,
    path: Path,
    *,
    length: int | None = None,
    first_row: int = 0,
) -> ListDataset:
    """Validate list-log rows and gather their item features; errors name ``path`` and the row
    (``first_row`` + index, for a piece read from the middle of a file). Lists are padded to
    ``length``, or to the longest one."""
    list_ids = table.column("list_id").to_numpy().astype(np.int64)
    user_ids = table.column("user_id").to_numpy().astype(np.int64)
    item_ids, n_items_per_list = padded_list_column(table, "item_ids", path, np.int64, length)
    clicks, n_clicks_per_list = padded_list_column(table, "clicks", path, np.float32, length)

    def fail_at(bad: np.ndarray, reason: str) -> None:
        _fail_at(path, bad, list_ids, reason, first_row)

    fail_at(n_items_per_list == 0, "empty list")
    fail_at(n_items_per_list != n_clicks_per_list, "item_ids and clicks differ in length")
    mask = np.arange(item_ids.shape[1]) < n_items_per_list[:, None]
    n_items = len(items.topic)
    fail_at(
        (mask & ((item_ids < 0) | (item_ids >= n_items))).any(axis=1),
        f"item id outside 0..{n_items - 1}",
    )
    fail_at(((clicks != 0) & (clicks != 1)).any(axis=1), "clicks must be 0 or 1")
    fail_at((user_ids < 0) | (user_ids >= n_users), "unknown user_id")
    features = items.features[item_ids] * mask[..., None]
    return ListDataset(
        features=features.astype(np.float32),
        pv=np.zeros((*mask.shape, 0), dtype=np.float32),
        mask=mask,
        labels=clicks,
        positions=np.broadcast_to(np.arange(mask.shape[1]), mask.shape) * mask,
        user_ids=user_ids,
        list_ids=list_ids,
        item_ids=item_ids,
    )


@dataclass(frozen=True)
class ListData:
    """A dataset folder: list splits plus the user and item tables the pre-training needs."""

    splits: dict[str, ListDataset | ListStream]  # a ListStream only where a caller put one
    ctr_tables: CTRTables
    items: ItemTable
    # Relative examination per rank, measured on the folder's exploration lists when it has
    # them (prm.data.examination); None otherwise.
    examination: np.ndarray | None = None


def load_list_data(
    data_dir: str | Path, splits: tuple[str, ...] = ("train", "valid", "test")
) -> ListData:
    """Read ``items.parquet``, ``users.parquet`` and each split's ``lists_<split>.parquet``
    (or shard folder ``lists_<split>/``) from a folder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"{data_dir}: data folder not found; create it with `prm simulate --out {data_dir}`"
        )
    items = load_items(data_dir / "items.parquet")
    profile, history, history_mask = load_users(data_dir / "users.parquet", len(items.topic))
    tables = CTRTables(
        profile=profile,
        history=history,
        history_mask=history_mask,
        item_features=items.features,
        item_topic=items.topic,
    )
    datasets = {
        split: load_lists(lists_source(data_dir, split), items, len(profile)) for split in splits
    }
    explore = lists_source(data_dir, EXPLORE)
    examination = (
        examination_from_randomized(load_lists(explore, items, len(profile)))
        if explore.exists()
        else None
    )
    return ListData(splits=datasets, ctr_tables=tables, items=items, examination=examination)
