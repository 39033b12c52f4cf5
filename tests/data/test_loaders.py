from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prm.data.batch import ListDataset
from prm.data.loaders import load_list_data, load_lists
from prm.data.tables import DataError, load_items
from prm.evaluation.metrics import rank_order


def test_round_trip_matches_the_parquet_rows(tiny_data_dir: Path, tiny_config) -> None:
    data = load_list_data(tiny_data_dir)
    raw = pq.read_table(tiny_data_dir / "lists_valid.parquet").to_pydict()
    valid = data.splits["valid"]
    assert len(valid) == tiny_config.simulator.n_valid_lists
    assert valid.item_ids[5].tolist() == raw["item_ids"][5]
    assert valid.labels[5].tolist() == raw["clicks"][5]
    items = load_items(tiny_data_dir / "items.parquet")
    np.testing.assert_array_equal(valid.features[5], items.features[raw["item_ids"][5]])
    assert valid.positions[5].tolist() == list(range(tiny_config.simulator.list_length))
    assert data.catalog.item_features.shape[1] == valid.d_feature


def _write_lists(path: Path, item_ids: list, clicks: list, users: list | None = None) -> None:
    n = len(item_ids)
    pq.write_table(
        pa.table(
            {
                "list_id": pa.array(range(100, 100 + n), pa.int64()),
                "user_id": pa.array(users or [0] * n, pa.int32()),
                "item_ids": pa.array(item_ids, pa.list_(pa.int32())),
                "clicks": pa.array(clicks, pa.list_(pa.int8())),
            }
        ),
        path,
    )


def test_variable_length_lists_are_padded_and_masked(tiny_data_dir: Path, tmp_path: Path) -> None:
    items = load_items(tiny_data_dir / "items.parquet")
    path = tmp_path / "lists.parquet"
    _write_lists(path, [[3, 1, 2], [7], [4, 5]], [[0, 1, 0], [1], [0, 0]])
    data = load_lists(path, items, n_users=10)
    assert data.mask.tolist() == [[True] * 3, [True, False, False], [True, True, False]]
    assert (data.features[~data.mask] == 0).all()
    assert (data.labels[~data.mask] == 0).all()
    assert data.has_click().tolist() == [True, True, False]


@pytest.mark.parametrize(
    ("item_ids", "clicks", "users", "message"),
    [
        ([[1, 2], [3, 4]], [[0, 1], [0]], None, r"row 1 \(list_id 101\): item_ids and clicks"),
        ([[1, 2], [3, 10_000]], [[0, 1], [0, 0]], None, r"row 1 .*item id outside"),
        ([[1, 2], [3, 4]], [[0, 2], [0, 0]], None, r"row 0 .*clicks must be 0 or 1"),
        ([[1, 2], []], [[0, 1], []], None, r"row 1 .*empty list"),
        ([[1, 2], [3, 4]], [[0, 1], [0, 0]], [0, 99], r"row 1 .*unknown user_id"),
    ],
)
def test_malformed_rows_name_the_file_and_row(
    tiny_data_dir: Path, tmp_path: Path, item_ids, clicks, users, message
) -> None:
    items = load_items(tiny_data_dir / "items.parquet")
    path = tmp_path / "bad.parquet"
    _write_lists(path, item_ids, clicks, users)
    with pytest.raises(DataError, match=f"bad.parquet: {message}"):
        load_lists(path, items, n_users=10)


def test_missing_and_broken_files(tiny_data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere: data folder not found.*prm simulate"):
        load_list_data(tmp_path / "nowhere")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data_dir, copy)
    (copy / "lists_test.parquet").unlink()
    with pytest.raises(DataError, match="lists_test.parquet: file not found"):
        load_list_data(copy)
    (copy / "lists_test.parquet").write_text("list_id,user_id\n1,2\n")
    with pytest.raises(DataError, match="lists_test.parquet: not a readable Parquet file"):
        load_list_data(copy)
    pq.write_table(pa.table({"list_id": [1], "user_id": [0]}), copy / "lists_test.parquet")
    with pytest.raises(DataError, match="missing column.*item_ids"):
        load_list_data(copy)
    pq.write_table(
        pa.table({"list_id": [1], "user_id": [0], "item_ids": [[0, 1]]}),
        copy / "lists_test.parquet",
    )
    with pytest.raises(DataError, match="one label column, clicks .* or labels .*; found neither"):
        load_list_data(copy)


def test_dataset_batches_cover_every_list_once(tiny_data_dir: Path) -> None:
    import torch

    data: ListDataset = load_list_data(tiny_data_dir, splits=("valid",)).splits["valid"]
    seen = torch.cat(
        [b.list_ids for b in data.iter_batches(64, shuffle=True, generator=torch.Generator())]
    )
    assert sorted(seen.tolist()) == sorted(data.list_ids.tolist())


def test_shown_in_order_moves_every_slot_field_with_its_item() -> None:
    item_ids = np.array([[10, 11, 12, 13], [20, 21, 22, 0]])
    lists = ListDataset(
        features=item_ids[..., None].astype(np.float32) * np.ones(2, np.float32),
        pv=-item_ids[..., None].astype(np.float32),
        mask=np.array([[True] * 4, [True, True, True, False]]),
        labels=(item_ids % 2).astype(np.float32),
        positions=np.array([[0, 1, 2, 3], [0, 1, 2, 3]]),
        user_ids=np.array([7, 8]),
        list_ids=np.array([0, 1]),
        item_ids=item_ids,
    )
    scores = np.array([[0.1, 0.4, 0.3, 0.2], [0.0, 0.5, 0.9, 9.9]])  # 9.9 on a padded slot
    shown = lists.shown_in_order(rank_order(scores, lists.mask, lists.positions))
    np.testing.assert_array_equal(shown.item_ids, [[11, 12, 13, 10], [22, 21, 20, 0]])
    np.testing.assert_array_equal(shown.mask[1], [True, True, True, False])
    np.testing.assert_array_equal(shown.features[..., 1], shown.item_ids)
    np.testing.assert_array_equal(shown.pv[..., 0], -shown.item_ids)
    np.testing.assert_array_equal(shown.labels, shown.item_ids % 2)
    np.testing.assert_array_equal(shown.positions, [[0, 1, 2, 3], [0, 1, 2, 3]])
    np.testing.assert_array_equal(shown.user_ids, lists.user_ids)


def test_graded_labels_and_no_users_table(tiny_data_dir: Path, tmp_path: Path) -> None:
    """A LETOR-style folder: graded labels in place of clicks, no users.parquet. PRM-BASE's
    data loads; PV pre-training says what it lacks."""
    copy = tmp_path / "graded"
    shutil.copytree(tiny_data_dir, copy)
    (copy / "users.parquet").unlink()
    for split in ("train", "valid", "test"):
        table = pq.read_table(copy / f"lists_{split}.parquet")
        clicks = table.column("clicks").to_pylist()
        graded = pa.array([[3.0 * c for c in row] for row in clicks], pa.list_(pa.float32()))
        table = table.drop(["clicks"]).append_column("labels", graded)
        pq.write_table(table, copy / f"lists_{split}.parquet")
    data = load_list_data(copy, splits=("train", "valid"))
    assert data.catalog is None
    assert set(np.unique(data.splits["train"].labels)) == {0.0, 3.0}
    from prm.config import ExperimentConfig
    from prm.pretrain.training import pretrain

    with pytest.raises(DataError, match="needs users.parquet"):
        pretrain(ExperimentConfig(), data)
    table = pq.read_table(copy / "lists_valid.parquet")
    bad = table.column("labels").to_pylist()
    bad[2] = [-1.0] + bad[2][1:]
    column = table.schema.get_field_index("labels")
    table = table.set_column(column, "labels", pa.array(bad, pa.list_(pa.float32())))
    pq.write_table(table, copy / "lists_valid.parquet")
    with pytest.raises(DataError, match="row 2 .*labels must be finite, >= 0"):
        load_list_data(copy, splits=("valid",))
