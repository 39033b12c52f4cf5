"""List logs as padded datasets, and a whole data folder as :class:`ListData`.

A list log has one row per shown list: ``list_id``, ``user_id``, ``item_ids`` (the initial
order) and ``clicks`` (0/1) or graded ``labels`` (same length). Lists may differ in length.
Items and users are read by :mod:`prm.data.tables`, whose checks and errors (file, row,
column) every read shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from prm.data.batch import ListDataset, TrainingLists
from prm.data.examination import EXPLORE, examination_from_randomized
from prm.data.shards import lists_source, shard_paths
from prm.data.tables import (
    Catalog,
    DataError,
    ItemTable,
    fail_at_rows,
    load_catalog,
    padded_list_column,
    read_table,
    require_ints,
)

LIST_COLUMNS = {"list_id": "int", "user_id": "int", "item_ids": "list<int>"}
# A list log holds exactly one of these: clicks, or graded relevance (a LETOR-style log).
LABEL_COLUMNS = {"clicks": "list<int>, each 0 or 1", "labels": "list<float>, graded, >= 0"}


def label_column(names: list[str], path: Path) -> str:
    """The label column of a list log: ``clicks`` or ``labels``, exactly one of them."""
    present = [name for name in LABEL_COLUMNS if name in names]
    if len(present) != 1:
        wanted = " or ".join(f"{name} ({what})" for name, what in LABEL_COLUMNS.items())
        found = " and ".join(present) or "neither"
        raise DataError(f"{path}: a list log needs one label column, {wanted}; found {found}")
    return present[0]


def load_lists(path: str | Path, items: ItemTable, n_users: int | None) -> ListDataset:
    """A list log (one Parquet file or a folder of part files) as a padded :class:`ListDataset`
    with item features gathered from ``items``. Rows of a folder are numbered across its parts."""
    path = Path(path)
    tables = [read_table(part, LIST_COLUMNS) for part in shard_paths(path)]
    if len({label_column(table.schema.names, path) for table in tables}) > 1:
        raise DataError(f"{path}: part files disagree on the label column (clicks or labels)")
    if sum(len(table) for table in tables) == 0:
        raise DataError(f"{path}: no lists (0 rows)")
    return lists_dataset(pa.concat_tables(tables), items, n_users, path)


def lists_dataset(
    table: pa.Table,
    items: ItemTable,
    n_users: int | None,
    path: Path,
    *,
    length: int | None = None,
    first_row: int = 0,
) -> ListDataset:
    """Validate list-log rows and gather their item features; errors name ``path`` and the row
    (``first_row`` + index, for a piece read from the middle of a file). Lists are padded to
    ``length``, or to the longest one. ``n_users`` None: the folder has no users table, so
    user ids are not checked against one."""
    require_ints(table, path, "list_id", "user_id", "item_ids")
    list_ids = table.column("list_id").to_numpy().astype(np.int64)
    user_ids = table.column("user_id").to_numpy().astype(np.int64)
    item_ids, n_items_per_list = padded_list_column(table, "item_ids", path, np.int64, length)
    label = label_column(table.schema.names, path)
    labels, n_labels_per_list = padded_list_column(table, label, path, np.float32, length)

    def fail_at(bad: np.ndarray, reason: str) -> None:
        fail_at_rows(path, bad, list_ids, reason, first_row)

    fail_at(n_items_per_list == 0, "empty list")
    fail_at(n_items_per_list != n_labels_per_list, f"item_ids and {label} differ in length")
    mask = np.arange(item_ids.shape[1]) < n_items_per_list[:, None]
    n_items = len(items.topic)
    fail_at(
        (mask & ((item_ids < 0) | (item_ids >= n_items))).any(axis=1),
        f"item id outside 0..{n_items - 1} (column item_ids)",
    )
    # The same item twice in a list is refused here as by `prm rerank` and the server.
    ordered = np.sort(np.where(mask, item_ids, -1), axis=1)  # (N, L), padding first
    fail_at(
        ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(axis=1),
        "item_ids: duplicate item id (an item appears twice in the list)",
    )
    if label == "clicks":
        fail_at(((labels != 0) & (labels != 1)).any(axis=1), "clicks must be 0 or 1")
    else:
        fail_at(~((labels >= 0) & np.isfinite(labels)).all(axis=1), "labels must be finite, >= 0")
    if n_users is not None:
        fail_at(
            (user_ids < 0) | (user_ids >= n_users), f"unknown user_id (users has 0..{n_users - 1})"
        )
    features = items.features[item_ids] * mask[..., None]
    return ListDataset(
        features=features.astype(np.float32),
        pv=np.zeros((*mask.shape, 0), dtype=np.float32),
        mask=mask,
        labels=labels,
        positions=np.broadcast_to(np.arange(mask.shape[1]), mask.shape) * mask,
        user_ids=user_ids,
        list_ids=list_ids,
        item_ids=item_ids,
    )


@dataclass(frozen=True)
class ListData:
    """A dataset folder: list splits plus the user and item tables the pre-training needs."""

    splits: dict[str, ListDataset | TrainingLists]  # streamed only where a caller put one
    catalog: Catalog | None  # None: the folder has no users.parquet (no PV pre-training)
    items: ItemTable
    # Relative examination per rank, measured on the folder's exploration lists when it has
    # them (prm.data.examination); None otherwise.
    examination: np.ndarray | None = None


def present_splits(data_dir: str | Path) -> tuple[str, ...]:
    """train and valid, then test and the exploration bucket where the folder has them: what
    pre-training reads (it caches PV for every split it is given)."""
    optional = tuple(s for s in ("test", EXPLORE) if lists_source(data_dir, s).exists())
    return ("train", "valid", *optional)


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
    catalog, items = load_catalog(data_dir)
    n_users = catalog.n_users if catalog is not None else None
    datasets = {
        split: load_lists(lists_source(data_dir, split), items, n_users) for split in splits
    }
    explore = lists_source(data_dir, EXPLORE)
    examination = (
        examination_from_randomized(load_lists(explore, items, n_users))
        if explore.exists()
        else None
    )
    return ListData(splits=datasets, catalog=catalog, items=items, examination=examination)
