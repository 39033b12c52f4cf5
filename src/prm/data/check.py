"""Check a data folder against the documented Parquet contract (docs/data.md), listing every
violation rather than stopping at the first.

The loaders stop at the first problem they meet; a user converting their own logs wants the
whole list at once. :func:`check_data` reads the folder and returns one :class:`Violation` per
broken row and check (file, row, column and what is wrong); an empty list means the loaders
will accept the folder. Nothing is written. ``prm check-data DIR`` prints the result.

Rows are numbered from 0 within each file (within each part file of a shard folder).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prm.data.examination import EXPLORE
from prm.data.loaders import LABEL_COLUMNS
from prm.data.shards import PART_GLOB, lists_source
from prm.data.tables import MAX_MAGNITUDE

SPLITS = ("train", "valid", "test")  # the splits `prm pretrain` and the demo read


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (file, row, column) and what is wrong."""

    file: Path
    problem: str
    row: int | None = None  # 0-based row in ``file``; None for a whole-file or column problem
    column: str | None = None
    list_id: int | None = None  # for list logs, the row's list_id when it can be read

    def __str__(self) -> str:
        where = [str(self.file)]
        if self.row is not None:
            list_id = "" if self.list_id is None else f" (list_id {self.list_id})"
            where.append(f"row {self.row}{list_id}")
        if self.column is not None:
            where.append(f"column {self.column}")
        return f"{': '.join(where)}: {self.problem}"


def check_data(data_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> list[Violation]:
    """Every violation of the data contract in ``data_dir``: ``items.parquet``, and where
    present ``users.parquet``, ``lists_<split>`` for each of ``splits`` (one file or a folder
    of part files; at least one of them) and the exploration bucket ``lists_explore``. Empty
    when clean."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return [Violation(data_dir, "data folder not found")]
    found: list[Violation] = []
    n_items = _check_items(data_dir / "items.parquet", found)
    users = data_dir / "users.parquet"  # optional: only PV pre-training reads it
    n_users = _check_users(users, n_items, found) if users.exists() else None
    if not any(lists_source(data_dir, split).exists() for split in splits):
        names = ", ".join(f"lists_{split}" for split in splits)
        found.append(Violation(data_dir, f"no list log: none of {names} (.parquet or folder)"))
    for split in (*splits, EXPLORE):
        source = lists_source(data_dir, split)
        if not source.exists():
            continue  # each command reads the splits it needs, and says so if one is missing
        explore = split == EXPLORE
        rows = [
            _check_lists(part, n_items, n_users, explore=explore, found=found)
            for part in _parts(source, found)
        ]
        if rows and all(n == 0 for n in rows):
            found.append(Violation(source, "no lists (0 rows)"))
    files = {file: i for i, file in enumerate(dict.fromkeys(v.file for v in found))}
    # Each file's whole-file and column problems first, then its rows in order.
    return sorted(found, key=lambda v: (files[v.file], v.row is not None, v.row or 0))


def summarize_data(data_dir: str | Path) -> dict:
    """Row counts from the Parquet footers: items, users and lists per split."""
    data_dir = Path(data_dir)
    splits = {}
    for split in (*SPLITS, EXPLORE):
        source = lists_source(data_dir, split)
        if source.exists():
            parts = sorted(source.glob(PART_GLOB)) if source.is_dir() else [source]
            splits[split] = sum(pq.ParquetFile(part).metadata.num_rows for part in parts)
    return {
        "items": pq.ParquetFile(data_dir / "items.parquet").metadata.num_rows,
        "users": (
            pq.ParquetFile(data_dir / "users.parquet").metadata.num_rows
            if (data_dir / "users.parquet").exists()
            else 0
        ),
        "lists": splits,
    }


def _parts(source: Path, found: list[Violation]) -> list[Path]:
    if not source.is_dir():
        return [source]
    parts = sorted(source.glob(PART_GLOB))
    if not parts:
        found.append(Violation(source, f"shard folder holds no {PART_GLOB} files"))
    return parts


# --- the three tables ---------------------------------------------------------------------


def _check_items(path: Path, found: list[Violation]) -> int | None:
    """Items; returns their count (None when the file cannot be read)."""
    table = _Table.read(path, ["item_id", "topic", "features"], found)
    if table is None:
        return None
    table.row_number_ids("item_id")
    topic = table.ints("topic")
    if topic is not None:
        table.report_rows(topic < 0, "topic", lambda r: f"negative topic {topic[r]}")
        table.report_rows(
            topic >= table.n_rows,
            "topic",
            lambda r: f"topic {topic[r]} not below the item count {table.n_rows} (one-hot)",
        )
    features = table.lists("features", "float")
    if features is not None:
        features.one_length(table, "features")
        features.finite(table, "features")
    return table.n_rows


def _check_users(path: Path, n_items: int | None, found: list[Violation]) -> int | None:
    """Users; returns their count (None when the file cannot be read)."""
    table = _Table.read(path, ["user_id", "profile", "history"], found)
    if table is None:
        return None
    table.row_number_ids("user_id")
    profile = table.lists("profile", "float")
    if profile is not None:
        profile.one_length(table, "profile")
        profile.finite(table, "profile")
    history = table.lists("history", "int")
    if history is not None and n_items is not None:
        history.in_range(table, "history", n_items, "item_id")
    return table.n_rows


def _check_lists(
    path: Path, n_items: int | None, n_users: int | None, *, explore: bool, found: list[Violation]
) -> int | None:
    """A list log; returns its row count (None when the file cannot be read)."""
    columns = ["list_id", "user_id", "item_ids"]
    table = _Table.read(path, [*columns, "initial_ranks"] if explore else columns, found)
    if table is None:
        return None
    labels = [name for name in LABEL_COLUMNS if name in table.names]
    if len(labels) != 1:
        found.append(
            Violation(
                path,
                "needs one label column, clicks (0 or 1) or labels (graded, >= 0); found "
                + (" and ".join(labels) or "neither"),
            )
        )
    table.list_ids = table.ints("list_id")
    user_id = table.ints("user_id")
    if user_id is not None and n_users is not None:
        table.report_rows(
            ((user_id < 0) | (user_id >= n_users)) & ~table.nulls["user_id"],
            "user_id",
            lambda r: f"unknown user_id {user_id[r]} (users.parquet has 0..{n_users - 1})",
        )
    items = table.lists("item_ids", "int")
    if items is not None:
        empty = (items.lengths == 0) & ~items.null_rows
        table.report_rows(empty, "item_ids", lambda r: "empty list")
        if n_items is not None:
            items.in_range(table, "item_ids", n_items, "item_id")
        items.unique(table, "item_ids", "appears twice in the list")
    for label in labels if len(labels) == 1 else []:
        values = table.lists(label, "number")
        if values is not None:
            if items is not None:
                values.same_length(table, label, items)
            if label == "clicks":
                bad = ~np.isin(values.values, (0, 1))
                values.report_values(table, label, bad, "is {value}, must be 0 or 1")
            else:
                bad = ~((values.values >= 0) & np.isfinite(values.values))
                values.report_values(table, label, bad, "is {value}, must be finite and >= 0")
    if not explore:
        return table.n_rows
    ranks = table.lists("initial_ranks", "int")
    if ranks is not None:
        if items is not None:
            ranks.same_length(table, "initial_ranks", items)
        lengths = ranks.lengths[ranks.rows]
        outside = (ranks.values < 0) | (ranks.values >= lengths)
        ranks.report_values(
            table, "initial_ranks", outside, "is {value}: not a rank in 0..n-1 of this list"
        )
        ranks.unique(table, "initial_ranks", "appears twice: not a permutation of 0..n-1")
    if "propensities" in table.names:
        propensities = table.lists("propensities", "float")
        if propensities is not None:
            if items is not None:
                propensities.same_length(table, "propensities", items)
            bad = ~((propensities.values > 0) & (propensities.values <= 1))  # NaN too
            propensities.report_values(table, "propensities", bad, "is {value}, not in (0, 1]")
    return table.n_rows


# --- one Parquet file and its columns -------------------------------------------------------

KINDS = {  # expected value type -> (test, name in messages)
    "int": (pa.types.is_integer, "int"),
    "float": (lambda t: pa.types.is_floating(t) or pa.types.is_integer(t), "float"),
    "number": (
        lambda t: pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t),
        "int",
    ),
}


@dataclass
class _Table:
    path: Path
    table: pa.Table
    found: list[Violation]
    list_ids: np.ndarray | None = None  # names rows of list logs in messages
    nulls: dict[str, np.ndarray] = field(default_factory=dict)  # int column -> (N,) null rows

    @classmethod
    def read(cls, path: Path, required: list[str], found: list[Violation]) -> _Table | None:
        """The file, or None after a violation when it is missing or unreadable; each missing
        column is a violation too (the rest of the file is still checked)."""
        if not path.is_file():
            found.append(Violation(path, "file not found"))
            return None
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as error:
            found.append(Violation(path, f"not a readable Parquet file ({error})"))
            return None
        for name in required:
            if name not in table.schema.names:
                found.append(Violation(path, "column missing", column=name))
        return cls(path, table, found)

    @property
    def n_rows(self) -> int:
        return self.table.num_rows

    @property
    def names(self) -> list[str]:
        return self.table.schema.names

    def report_rows(self, bad: np.ndarray, column: str, problem: Callable[[int], str]) -> None:
        """One violation per row where ``bad`` (N,) holds; ``problem(row)`` says what."""
        rows = np.flatnonzero(bad)
        self.report_messages(rows, column, map(problem, rows.tolist()))

    def report_messages(self, rows: np.ndarray, column: str, problems: Iterable[str]) -> None:
        """One violation per row of ``rows`` (R,), with its problem from ``problems``."""
        list_ids = [None] * len(rows) if self.list_ids is None else self.list_ids[rows].tolist()
        for row, problem, list_id in zip(rows.tolist(), problems, list_ids, strict=True):
            self.found.append(Violation(self.path, problem, row, column, list_id))

    def type_error(self, column: str, got: pa.DataType, expected: str) -> None:
        self.found.append(Violation(self.path, f"type {got}, expected {expected}", column=column))

    def ints(self, name: str) -> np.ndarray | None:
        """An integer column as int64 (N,), nulls reported and read as 0; None if the column is
        missing or of another type."""
        if name not in self.names:
            return None
        column = self.table.column(name).combine_chunks()
        if not pa.types.is_integer(column.type):
            self.type_error(name, column.type, "int")
            return None
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        self.report_rows(nulls, name, lambda r: "null")
        self.nulls[name] = nulls
        return pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64)

    def row_number_ids(self, name: str) -> None:
        ids = self.ints(name)
        if ids is not None:
            self.report_rows(
                (ids != np.arange(len(ids))) & ~self.nulls[name],
                name,
                lambda r: f"{name} is {ids[r]}, must equal the row number {r}",
            )

    def lists(self, name: str, kind: str) -> _Lists | None:
        """A list column flattened, nulls reported; None if missing or of another type."""
        if name not in self.names:
            return None
        column = self.table.column(name).combine_chunks()
        is_value_type, value_name = KINDS[kind]
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)) or not (
            is_value_type(column.type.value_type)
        ):
            self.type_error(name, column.type, f"list<{value_name}>")
            return None
        null_rows = column.is_null().to_numpy(zero_copy_only=False)
        self.report_rows(null_rows, name, lambda r: "null instead of a list")
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
        values = column.flatten()  # the values of the non-null rows, in order
        rows = np.repeat(np.arange(len(lengths)), lengths)
        slots = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        lists = _Lists(lengths, rows, slots, values=None, null_rows=null_rows)
        null_values = values.is_null().to_numpy(zero_copy_only=False)
        if null_values.any():
            lists.report_values(self, name, null_values, "is null")
        as_int = kind == "int"
        numbers = values.cast(pa.int64() if as_int else pa.float64(), safe=False)
        numbers = pc.fill_null(numbers, 0 if as_int else float("nan"))
        lists.values = numbers.to_numpy(zero_copy_only=False)
        lists.checked = ~null_values  # later checks skip the values already reported
        return lists


@dataclass
class _Lists:
    """A list column as flat values with the row and the slot (index in its list) of each."""

    lengths: np.ndarray  # (N,) values per row (0 for a null row)
    rows: np.ndarray  # (V,) row of each value
    slots: np.ndarray  # (V,) 0-based index of each value in its row
    values: np.ndarray | None  # (V,) int64 or float64
    null_rows: np.ndarray | None = None  # (N,) bool
    checked: np.ndarray | None = None  # (V,) bool: values not null

    def report_values(self, table: _Table, column: str, bad: np.ndarray, problem: str) -> None:
        """One violation per row with a ``bad`` (V,) value, naming its first such value;
        ``problem`` is formatted with ``value``."""
        if self.checked is not None:
            bad = bad & self.checked
        index = np.flatnonzero(bad)
        rows, first, count = np.unique(self.rows[index], return_index=True, return_counts=True)
        first = index[first]  # (R,) the first bad value of each bad row
        values = [None] * len(first) if self.values is None else self.values[first].tolist()
        slots, count = self.slots[first].tolist(), count.tolist()

        def say(k: int) -> str:
            more = f" (and {count[k] - 1} more in this row)" if count[k] > 1 else ""
            return f"{column}[{slots[k]}] {problem.format(value=_show(values[k]))}{more}"

        table.report_messages(rows, column, map(say, range(len(rows))))

    def one_length(self, table: _Table, column: str) -> None:
        """Every (non-null) row as long as most rows."""
        real = ~self.null_rows
        if not real.any():
            return
        common = int(np.bincount(self.lengths[real]).argmax())
        table.report_rows(
            real & (self.lengths != common),
            column,
            lambda r: f"{self.lengths[r]} values, while most rows have {common}",
        )

    def same_length(self, table: _Table, column: str, items: _Lists) -> None:
        both = ~self.null_rows & ~items.null_rows
        table.report_rows(
            both & (self.lengths != items.lengths),
            column,
            lambda r: f"{self.lengths[r]} values for {items.lengths[r]} item_ids",
        )

    def finite(self, table: _Table, column: str) -> None:
        """Finite, and within ±MAX_MAGNITUDE, so that float32 values stay finite squared."""
        bad = ~(np.abs(self.values) <= MAX_MAGNITUDE)  # NaN too
        self.report_values(
            table, column, bad, f"is {{value}}: not finite within ±{MAX_MAGNITUDE:.1e}"
        )

    def in_range(self, table: _Table, column: str, n: int, what: str) -> None:
        bad = (self.values < 0) | (self.values >= n)
        self.report_values(table, column, bad, f"is {{value}}: no such {what} (0..{n - 1})")

    def unique(self, table: _Table, column: str, problem: str) -> None:
        """Flag the second and later copies of a value within a row (integer values)."""
        if not len(self.values):
            return
        low, span = self.values.min(), int(self.values.max() - self.values.min()) + 1
        if span * len(self.lengths) < 2**62:  # one int64 key per (row, value): a fast sort
            order = np.argsort(self.rows * span + (self.values - low), kind="stable")
        else:
            order = np.lexsort((self.slots, self.values, self.rows))
        rows, values = self.rows[order], self.values[order]
        repeat = np.zeros(len(order), dtype=bool)
        repeat[order[1:]] = (rows[1:] == rows[:-1]) & (values[1:] == values[:-1])
        self.report_values(table, column, repeat, "= {value} " + problem)


def _show(value: float | int | None) -> str:
    """A value for a message: 3 for 3.0, else as Python prints it (nan, inf, 0.5)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
