"""`prm check-data` and `prm.data.check`: a clean folder passes, each broken rule is named by
file, row and column, every violation is listed, and nothing is written."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prm.cli.main import main
from prm.data.check import Violation, check_data

INT_LIST = pa.list_(pa.int64())
FLOAT_LIST = pa.list_(pa.float32())


@pytest.fixture
def data(tiny_data_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny simulated folder, to corrupt."""
    copy = tmp_path / "data"
    shutil.copytree(tiny_data_dir, copy)
    return copy


def set_cell(
    path: Path, column: str, row: int, value: object, type: pa.DataType | None = None
) -> None:
    """Rewrite one cell of a Parquet file (``type`` changes the column's type)."""
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[row] = value
    array = pa.array(values, type=type or table.schema.field(column).type)
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, array), path)


def retype(path: Path, column: str, type: pa.DataType) -> None:
    table = pq.read_table(path)
    array = table.column(column).cast(type)
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, array), path)


def drop_column(path: Path, column: str) -> None:
    pq.write_table(pq.read_table(path).drop_columns([column]), path)


def first_list(path: Path, row: int, column: str = "item_ids") -> list:
    return pq.read_table(path).column(column)[row].as_py()


def dup_item(path: Path, row: int) -> None:
    items = first_list(path, row)
    set_cell(path, "item_ids", row, [items[0], *items[1:-1], items[0]])


def shorten(path: Path, column: str, row: int) -> None:
    set_cell(path, column, row, first_list(path, row, column)[:-1])


def add_propensities(path: Path, row: int, value: float) -> None:
    table = pq.read_table(path)
    lengths = [len(items) for items in table.column("item_ids").to_pylist()]
    values = [[1.0 / n] * n for n in lengths]
    values[row][0] = value
    pq.write_table(table.append_column("propensities", pa.array(values, FLOAT_LIST)), path)


def swap_ranks(path: Path, row: int) -> None:
    ranks = first_list(path, row, "initial_ranks")
    set_cell(path, "initial_ranks", row, [ranks[0], ranks[0], *ranks[2:]])


ITEMS, USERS = "items.parquet", "users.parquet"
TRAIN, VALID, TEST, EXPLORE = (f"lists_{s}.parquet" for s in ("train", "valid", "test", "explore"))

# (name, corruption of the folder, file, row, column, words in the problem)
CASES: list[tuple[str, Callable[[Path], None], str, int | None, str | None, str]] = [
    (
        "item id not row number",
        lambda d: set_cell(d / ITEMS, "item_id", 5, 99),
        ITEMS,
        5,
        "item_id",
        "row number 5",
    ),
    ("topic missing", lambda d: drop_column(d / ITEMS, "topic"), ITEMS, None, "topic", "missing"),
    (
        "negative topic",
        lambda d: set_cell(d / ITEMS, "topic", 4, -1),
        ITEMS,
        4,
        "topic",
        "negative",
    ),
    (
        "NaN feature",
        lambda d: set_cell(d / ITEMS, "features", 3, [math.nan] * 8),
        ITEMS,
        3,
        "features",
        "nan",
    ),
    (
        "inf feature",
        lambda d: set_cell(d / ITEMS, "features", 7, [0.0, math.inf] + [0.0] * 6),
        ITEMS,
        7,
        "features",
        "features[1] is inf",
    ),
    (
        "ragged features",
        lambda d: shorten(d / ITEMS, "features", 2),
        ITEMS,
        2,
        "features",
        "most rows have",
    ),
    (
        "float item ids",
        lambda d: retype(d / ITEMS, "item_id", pa.float64()),
        ITEMS,
        None,
        "item_id",
        "expected int",
    ),
    (
        "user id not row number",
        lambda d: set_cell(d / USERS, "user_id", 1, 0),
        USERS,
        1,
        "user_id",
        "row number 1",
    ),
    (
        "ragged profile",
        lambda d: shorten(d / USERS, "profile", 10),
        USERS,
        10,
        "profile",
        "most rows have",
    ),
    (
        "NaN profile",
        lambda d: set_cell(d / USERS, "profile", 0, [math.nan] * 8),
        USERS,
        0,
        "profile",
        "nan",
    ),
    (
        "unknown history item",
        lambda d: set_cell(d / USERS, "history", 2, [10**6]),
        USERS,
        2,
        "history",
        "no such item_id",
    ),
    (
        "click of 2",
        lambda d: set_cell(d / TRAIN, "clicks", 3, [2] + [0] * 9),
        TRAIN,
        3,
        "clicks",
        "must be 0 or 1",
    ),
    (
        "NaN click",
        lambda d: set_cell(d / TRAIN, "clicks", 4, [math.nan] + [0.0] * 9, FLOAT_LIST),
        TRAIN,
        4,
        "clicks",
        "nan",
    ),
    (
        "duplicate item in a list",
        lambda d: dup_item(d / VALID, 6),
        VALID,
        6,
        "item_ids",
        "appears twice",
    ),
    (
        "unknown item in a list",
        lambda d: set_cell(d / TEST, "item_ids", 8, [400] * 10),
        TEST,
        8,
        "item_ids",
        "no such item_id",
    ),
    (
        "unknown user",
        lambda d: set_cell(d / TRAIN, "user_id", 9, 300),
        TRAIN,
        9,
        "user_id",
        "unknown user_id 300",
    ),
    (
        "empty list",
        lambda d: (set_cell(d / TRAIN, "item_ids", 1, []), set_cell(d / TRAIN, "clicks", 1, [])),
        TRAIN,
        1,
        "item_ids",
        "empty",
    ),
    (
        "clicks shorter than items",
        lambda d: shorten(d / TRAIN, "clicks", 2),
        TRAIN,
        2,
        "clicks",
        "9 values for 10 item_ids",
    ),
    (
        "null item id",
        lambda d: set_cell(d / TRAIN, "item_ids", 3, [None] * 10, INT_LIST),
        TRAIN,
        3,
        "item_ids",
        "null",
    ),
    ("null list", lambda d: set_cell(d / TRAIN, "clicks", 5, None), TRAIN, 5, "clicks", "null"),
    (
        "float list ids",
        lambda d: retype(d / TRAIN, "list_id", pa.float64()),
        TRAIN,
        None,
        "list_id",
        "expected int",
    ),
    (
        "float item ids in lists",
        lambda d: retype(d / TRAIN, "item_ids", FLOAT_LIST),
        TRAIN,
        None,
        "item_ids",
        "list<int>",
    ),
    (
        "string user ids",
        lambda d: retype(d / VALID, "user_id", pa.string()),
        VALID,
        None,
        "user_id",
        "expected int",
    ),
    (
        "not Parquet",
        lambda d: (d / TEST).write_bytes(b"PAR1 not really"),
        TEST,
        None,
        None,
        "not a readable Parquet",
    ),
    (
        "ranks not a permutation",
        lambda d: swap_ranks(d / EXPLORE, 5),
        EXPLORE,
        5,
        "initial_ranks",
        "not a permutation",
    ),
    (
        "ranks missing",
        lambda d: drop_column(d / EXPLORE, "initial_ranks"),
        EXPLORE,
        None,
        "initial_ranks",
        "missing",
    ),
    (
        "zero propensity",
        lambda d: add_propensities(d / EXPLORE, 1, 0.0),
        EXPLORE,
        1,
        "propensities",
        "not in (0, 1]",
    ),
]


@pytest.mark.parametrize(
    ("corrupt", "file", "row", "column", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_violation_names_file_row_and_column(
    data: Path,
    corrupt: Callable[[Path], None],
    file: str,
    row: int | None,
    column: str | None,
    words: str,
) -> None:
    corrupt(data)
    violations = check_data(data)
    matching = [
        v
        for v in violations
        if v.file.name == file and v.row == row and v.column == column and words in v.problem
    ]
    assert matching, "\n".join(map(str, violations)) or "no violations"


def test_a_clean_folder_passes(tiny_data_dir: Path) -> None:
    assert check_data(tiny_data_dir) == []


def test_every_violation_is_listed(data: Path) -> None:
    set_cell(data / ITEMS, "features", 0, [math.nan] * 8)
    dup_item(data / TRAIN, 10)
    table = pq.read_table(data / VALID)
    twos = pa.array([[2] * len(c) for c in table.column("clicks").to_pylist()], INT_LIST)
    pq.write_table(
        table.set_column(table.schema.get_field_index("clicks"), "clicks", twos), data / VALID
    )
    violations = check_data(data)
    by_file = {
        name: [v for v in violations if v.file.name == name] for name in (ITEMS, TRAIN, VALID)
    }
    assert len(by_file[ITEMS]) == 1 and len(by_file[TRAIN]) == 1
    assert [v.row for v in by_file[VALID]] == list(range(table.num_rows))
    assert "(and 9 more in this row)" in by_file[VALID][0].problem


def test_message_reads_file_row_list_id_column(data: Path) -> None:
    list_id = pq.read_table(data / TRAIN).column("list_id")[3].as_py()
    set_cell(data / TRAIN, "clicks", 3, [0, 0, 5] + [0] * 7)
    (violation,) = check_data(data)
    assert violation == Violation(
        data / TRAIN, "clicks[2] is 5, must be 0 or 1", row=3, column="clicks", list_id=list_id
    )
    assert str(violation) == (
        f"{data / TRAIN}: row 3 (list_id {list_id}): column clicks: clicks[2] is 5, must be 0 or 1"
    )


def test_shard_folders_name_the_part_file(data: Path) -> None:
    table = pq.read_table(data / TRAIN)
    (data / TRAIN).unlink()
    folder = data / "lists_train"
    folder.mkdir()
    pq.write_table(table.slice(0, 300), folder / "part-00000.parquet")
    pq.write_table(table.slice(300), folder / "part-00001.parquet")
    assert check_data(data) == []
    set_cell(folder / "part-00001.parquet", "user_id", 4, -1)
    (violation,) = check_data(data)
    assert (violation.file, violation.row) == (folder / "part-00001.parquet", 4)


def test_users_and_any_split_may_be_absent_but_not_every_split(data: Path) -> None:
    (data / USERS).unlink()
    (data / VALID).unlink()
    assert check_data(data) == []  # PRM-BASE and the baselines need no users; a command
    for split in (TRAIN, TEST):  # reading a missing split says so itself
        (data / split).unlink()
    (violation,) = check_data(data)
    assert "no list log" in violation.problem


def test_graded_labels_in_place_of_clicks(data: Path) -> None:
    table = pq.read_table(data / TRAIN)
    graded = pa.array([[2.0 * c for c in row] for row in table.column("clicks").to_pylist()])
    pq.write_table(table.drop(["clicks"]).append_column("labels", graded), data / TRAIN)
    assert check_data(data) == []
    set_cell(data / TRAIN, "labels", 3, [-1.0] + [0.0] * 9)
    (violation,) = check_data(data)
    assert (violation.row, violation.column) == (3, "labels") and ">= 0" in violation.problem


def test_missing_folder(tmp_path: Path) -> None:
    (violation,) = check_data(tmp_path / "nowhere")
    assert "not found" in violation.problem


def snapshot(folder: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*"))}


def test_cli_exit_code_2_lists_violations_and_writes_nothing(
    data: Path, capsys: pytest.CaptureFixture
) -> None:
    table = pq.read_table(data / TRAIN)
    twos = pa.array([[2] * len(c) for c in table.column("clicks").to_pylist()], INT_LIST)
    pq.write_table(
        table.set_column(table.schema.get_field_index("clicks"), "clicks", twos), data / TRAIN
    )
    drop_column(data / ITEMS, "topic")
    before = snapshot(data)
    assert main(["check-data", str(data), "--show", "20"]) == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 21  # 20 violations, then the count left out
    assert lines[0] == f"{data / ITEMS}: column topic: column missing"
    assert lines[-1] == f"... and {1 + table.num_rows - 20} more (--show 0 lists all)"
    assert f"{1 + table.num_rows} violation(s) in 2 file(s)" in err
    assert snapshot(data) == before


def test_cli_clean_folder_prints_a_summary(
    tiny_data_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(tiny_data_dir)
    assert main(["check-data", str(tiny_data_dir)]) == 0
    out = capsys.readouterr().out
    assert "ok: 400 items, 300 users" in out
    assert "train 600, valid 200, test 200, explore 200" in out
    assert snapshot(tiny_data_dir) == before
