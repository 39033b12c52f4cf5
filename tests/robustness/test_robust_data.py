# ruff: noqa: E501  (the tables of defects read best one per line)
"""Bad data folders: each defect of one table, run through every command that reads it. Each
must be refused with the file, the row (or list) and the column named, before anything is
written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from bad_input import Built, Case, copy_tree, edit_table, rewrite

ROW = 3  # the row every defect is put in


def _set(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    if name not in table.schema.names:
        return table.append_column(name, column)
    return table.set_column(table.schema.get_field_index(name), name, column)


def _values(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


def set_row(name: str, value, type_: pa.DataType | None = None) -> Callable[[pa.Table], pa.Table]:
    """Column ``name`` with row ``ROW`` set to ``value`` (the column cast to ``type_`` first)."""

    def change(table: pa.Table) -> pa.Table:
        values = _values(table, name)
        values[ROW] = value
        column = table.column(name) if type_ is None else table.column(name).cast(type_)
        return _set(table, name, pa.array(values, type=type_ or column.type))

    return change


def map_row(name: str, edit: Callable[[list], list], type_=None) -> Callable[[pa.Table], pa.Table]:
    """Column ``name`` (a list column) with row ``ROW``'s list replaced by ``edit(list)``."""

    def change(table: pa.Table) -> pa.Table:
        values = _values(table, name)
        values[ROW] = edit(list(values[ROW]))
        return _set(table, name, pa.array(values, type=type_ or table.column(name).type))

    return change


def as_type(name: str, type_: pa.DataType) -> Callable[[pa.Table], pa.Table]:
    return lambda table: _set(table, name, pc.cast(table.column(name), type_))


def drop(name: str) -> Callable[[pa.Table], pa.Table]:
    return lambda table: table.drop_columns([name])


def no_rows(table: pa.Table) -> pa.Table:
    return table.slice(0, 0)


def as_strings(name: str) -> Callable[[pa.Table], pa.Table]:
    return lambda table: _set(table, name, pa.array([str(v) for v in _values(table, name)]))


FLOAT_LIST = pa.list_(pa.float64())


@dataclass(frozen=True)
class Defect:
    name: str
    file: str  # in the data folder
    change: Callable[[pa.Table], pa.Table] | bytes | None  # None: the file is removed
    expect: tuple[str, ...]  # besides the file name


ITEMS = [
    Defect("float_item_id", "items.parquet", set_row("item_id", 3.7, pa.float64()), ("item_id",)),
    Defect("integral_float_item_id", "items.parquet", as_type("item_id", pa.float64()), ("item_id",)),
    Defect("string_item_id", "items.parquet", as_strings("item_id"), ("item_id",)),
    Defect("item_id_not_row", "items.parquet", set_row("item_id", 7), ("row 3", "item_id")),
    Defect("float_topic", "items.parquet", set_row("topic", 1.5, pa.float64()), ("topic",)),
    Defect("negative_topic", "items.parquet", set_row("topic", -2), ("row 3", "topic")),
    Defect("huge_topic", "items.parquet", set_row("topic", 10_000_000, pa.int64()), ("row 3", "topic")),
    Defect("nan_feature", "items.parquet", map_row("features", lambda v: [np.nan, *v[1:]]), ("row 3", "features")),
    Defect("inf_feature", "items.parquet", map_row("features", lambda v: [*v[:-1], np.inf]), ("row 3", "features")),
    Defect("overflow_feature", "items.parquet", map_row("features", lambda v: [1e39, *v[1:]], FLOAT_LIST), ("row 3", "features")),
    Defect("huge_feature", "items.parquet", map_row("features", lambda v: [1e30, *v[1:]], FLOAT_LIST), ("row 3", "features")),
    Defect("ragged_features", "items.parquet", map_row("features", lambda v: v[:-1]), ("row 3", "features")),
    Defect("no_features", "items.parquet", drop("features"), ("features",)),
    Defect("items_garbage", "items.parquet", b"PAR1 not a table", ("not a readable Parquet",)),
    Defect("items_missing", "items.parquet", None, ("not found",)),
]  # fmt: skip

USERS = [
    Defect("float_user_id", "users.parquet", set_row("user_id", 3.5, pa.float64()), ("user_id",)),
    Defect("string_user_id", "users.parquet", as_strings("user_id"), ("user_id",)),
    Defect("user_id_not_row", "users.parquet", set_row("user_id", 99), ("row 3", "user_id")),
    Defect("ragged_profile", "users.parquet", map_row("profile", lambda v: v[:-2]), ("row 3", "profile")),
    Defect("nan_profile", "users.parquet", map_row("profile", lambda v: [np.nan, *v[1:]]), ("row 3", "profile")),
    Defect("inf_profile", "users.parquet", map_row("profile", lambda v: [-np.inf, *v[1:]]), ("row 3", "profile")),
    Defect("huge_profile", "users.parquet", map_row("profile", lambda v: [1e30, *v[1:]], FLOAT_LIST), ("row 3", "profile")),
    Defect("float_history", "users.parquet", map_row("history", lambda v: [v[0] + 0.5, *v[1:]], FLOAT_LIST), ("history",)),
    Defect("history_out_of_range", "users.parquet", map_row("history", lambda v: [400, *v[1:]]), ("row 3", "history")),
    Defect("null_history", "users.parquet", set_row("history", None), ("row 3", "history")),
    Defect("no_history", "users.parquet", drop("history"), ("history",)),
]  # fmt: skip


def lists(split: str) -> list[Defect]:
    file = f"lists_{split}.parquet"
    return [
        Defect("float_item_ids", file, map_row("item_ids", lambda v: [v[0] + 0.7, *v[1:]], FLOAT_LIST), ("item_ids",)),
        Defect("integral_float_item_ids", file, as_type("item_ids", FLOAT_LIST), ("item_ids",)),
        Defect("float_user_id", file, set_row("user_id", 5.5, pa.float64()), ("user_id",)),
        Defect("string_user_id", file, as_strings("user_id"), ("user_id",)),
        Defect("string_list_id", file, as_strings("list_id"), ("list_id",)),
        Defect("duplicate_item", file, map_row("item_ids", lambda v: [v[1], *v[1:]]), ("row 3", "twice")),
        Defect("item_out_of_range", file, map_row("item_ids", lambda v: [400, *v[1:]]), ("row 3", "item")),
        Defect("negative_item", file, map_row("item_ids", lambda v: [-1, *v[1:]]), ("row 3", "item")),
        Defect("unknown_user", file, set_row("user_id", 300), ("row 3", "user_id")),
        Defect("empty_list", file, lambda t: map_row("clicks", lambda v: [])(map_row("item_ids", lambda v: [])(t)), ("row 3", "empty list")),
        Defect("clicks_length", file, map_row("clicks", lambda v: v[:-1]), ("row 3", "clicks")),
        Defect("click_of_2", file, map_row("clicks", lambda v: [2, *v[1:]]), ("row 3", "clicks")),
        Defect("click_nan", file, map_row("clicks", lambda v: [np.nan, *v[1:]], FLOAT_LIST), ("row 3", "clicks")),
        Defect("null_item_ids", file, set_row("item_ids", None), ("row 3", "item_ids")),
        Defect("no_clicks", file, drop("clicks"), ("clicks",)),
        Defect("no_rows", file, no_rows, ("no lists",)),
        Defect("garbage", file, b"\x00\x01 not parquet", ("not a readable Parquet",)),
        Defect("missing", file, None, ("not found",)),
    ]  # fmt: skip


def make_folder(built: Built, folder: Path, defect: Defect) -> Path:
    data = copy_tree(built.data, folder / "data")
    path = data / defect.file
    if defect.change is None:
        path.unlink()
    elif isinstance(defect.change, bytes):
        rewrite(path, defect.change)
    else:
        edit_table(path, defect.change)
    return data


def argv(command: str, built: Built, data: Path, out: Path) -> list[str]:
    config = ["--config", str(built.config), "--quiet"]
    if command == "check-data":
        return ["check-data", str(data)]
    if command == "pretrain":
        return ["pretrain", *config, "--data", str(data), "--out", str(out)]
    if command == "train":
        return ["train", *config, "--data", str(data), "--base", "--out", str(out)]
    if command == "train_pv":
        pv = ["--pv", str(built.pv)]
        return ["train", *config, "--data", str(data), *pv, "--out", str(out)]
    assert command == "evaluate"
    return ["evaluate", *config, "--data", str(data), "--run", str(out)]


def cases() -> list:
    """(command, defect) pairs: each table through the commands that read it."""
    out = []
    for defect in ITEMS + USERS:
        for command in ("check-data", "pretrain", "train", "evaluate"):
            out.append(pytest.param(command, defect, id=f"{command}-{defect.name}"))
    for defect in lists("train"):
        for command in ("check-data", "pretrain", "train"):
            if command == "check-data" and defect.name == "missing":
                continue  # a folder may hold any subset of the splits (docs/data.md)
            out.append(pytest.param(command, defect, id=f"{command}-train-{defect.name}"))
    for defect in lists("test"):
        out.append(pytest.param("evaluate", defect, id=f"evaluate-test-{defect.name}"))
    for defect in lists("valid")[:6]:
        out.append(pytest.param("train_pv", defect, id=f"train_pv-valid-{defect.name}"))
    return out


@pytest.mark.parametrize(("command", "defect"), cases())
def test_bad_data_is_refused(
    command: str, defect: Defect, built: Built, tmp_path: Path, refused
) -> None:
    data = make_folder(built, tmp_path, defect)
    if command == "evaluate":  # it writes into the run folder: a copy, watched
        out = copy_tree(built.base_run, tmp_path / "run")
        absent = (out / "eval_test.json",)
    else:
        out = tmp_path / "out"
        absent = (out,)
    refused(Case(tmp_path, argv(command, built, data, out), (defect.file, *defect.expect), absent))
