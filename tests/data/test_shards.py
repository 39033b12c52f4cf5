"""Sharded list logs: written by the simulator, read whole or streamed through a shuffle buffer."""

from __future__ import annotations

import threading
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from prm.config import SimulatorConfig
from prm.data.batch import ListDataset
from prm.data.loaders import load_list_data, load_lists
from prm.data.shards import ListWriter
from prm.data.simulator import LIST_SCHEMA, simulate
from prm.data.streaming import ListStream, ShuffleBuffer, prefetch
from prm.data.tables import DataError, ItemTable

SMALL = SimulatorConfig(
    n_users=200, n_items=300, n_topics=5, list_length=8, candidate_pool=20,
    n_train_lists=700, n_valid_lists=50, n_test_lists=50,
)  # fmt: skip
ITEMS = ItemTable(topic=np.arange(50) % 4, dense=np.ones((50, 2), dtype=np.float32))


def _write_lists(data_dir: Path, n: int, shard_lists: int, seed: int = 0) -> None:
    """``n`` random lists of 2 to 6 distinct items (items 0..49, users 0..9) written in chunks
    of 100."""
    rng = np.random.default_rng(seed)
    with ListWriter(data_dir, "train", shard_lists, LIST_SCHEMA) as writer:
        for start in range(0, n, 100):
            lengths = rng.integers(2, 7, size=min(100, n - start))
            writer.write(
                pa.table(
                    {
                        "list_id": np.arange(start, start + len(lengths)),
                        "user_id": rng.integers(0, 10, size=len(lengths)).astype(np.int32),
                        "item_ids": [
                            rng.choice(50, size=k, replace=False).tolist() for k in lengths
                        ],
                        "clicks": [(rng.random(k) < 0.3).astype(np.int8).tolist() for k in lengths],
                    },
                    schema=LIST_SCHEMA,
                )
            )


def _stream(data_dir: Path, **kwargs) -> ListStream:
    return ListStream(data_dir / "lists_train", ITEMS, n_users=10, **kwargs)


def test_sharded_and_single_file_splits_hold_the_same_lists(tmp_path: Path) -> None:
    simulate(SMALL, tmp_path / "single", progress=False)
    stats = simulate(replace(SMALL, shard_lists=256), tmp_path / "sharded", progress=False)
    parts = sorted(p.name for p in (tmp_path / "sharded" / "lists_train").iterdir())
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert stats["splits"]["train"]["shards"] == 3
    assert not (tmp_path / "sharded" / "lists_train.parquet").exists()
    single, sharded = (load_list_data(tmp_path / name) for name in ("single", "sharded"))
    for split in ("train", "valid", "test"):
        a, b = single.splits[split], sharded.splits[split]
        for name in ("features", "mask", "labels", "positions", "user_ids", "list_ids"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    # Rewriting the same folder unsharded removes the shards: one form per split on disk.
    simulate(SMALL, tmp_path / "sharded", progress=False)
    assert not (tmp_path / "sharded" / "lists_train").exists()


def test_shuffle_buffer_holds_at_most_its_capacity_and_loses_nothing() -> None:
    buffer = ShuffleBuffer(capacity=50, rng=np.random.default_rng(0))
    ids = np.arange(1000)
    chunks = [_ids_dataset(ids[i : i + 70]) for i in range(0, 1000, 70)]
    out = []
    for chunk in chunks:
        pushed_out = buffer.push(chunk)
        assert len(buffer) <= 50
        if pushed_out is not None:
            out.append(pushed_out.list_ids)
    out.append(buffer.drain().list_ids)
    seen = np.concatenate(out)
    assert sorted(seen.tolist()) == ids.tolist()
    assert not np.array_equal(seen, ids)
    assert len(buffer) == 0


def _ids_dataset(ids: np.ndarray) -> ListDataset:
    n = len(ids)
    return ListDataset(
        features=np.zeros((n, 2, 1), np.float32),
        pv=np.zeros((n, 2, 0), np.float32),
        mask=np.ones((n, 2), bool),
        labels=np.zeros((n, 2), np.float32),
        positions=np.zeros((n, 2), np.int64),
        user_ids=ids,
        list_ids=ids,
        item_ids=np.zeros((n, 2), np.int64),
    )


@pytest.mark.parametrize("world", [1, 3])
def test_stream_covers_every_clicked_list_once_per_epoch(tmp_path: Path, world: int) -> None:
    _write_lists(tmp_path, 1000, shard_lists=300)
    stream = _stream(tmp_path, buffer_lists=40, read_lists=64)
    whole = load_lists(tmp_path / "lists_train", ITEMS, n_users=10)
    clicked = sorted(whole.list_ids[whole.has_click()].tolist())
    assert len(stream) == len(clicked)
    assert stream.list_length == 6
    orders = []
    for epoch in range(2):
        # Every process's shuffle generator is in the same state, as in the trainer.
        per_rank = [
            list(stream.local_batches(64, torch.Generator().manual_seed(epoch), rank, world))
            for rank in range(world)
        ]
        assert {len(batches) for batches in per_rank} == {stream.steps(64, world)}
        seen = []
        for step in zip(*per_rank, strict=True):
            lists = sum(len(batch.list_ids) for batch, weight in step if weight)
            for batch, weight in step:
                assert batch.features.shape[1:] == (6, ITEMS.features.shape[1])
                if weight:
                    assert weight == pytest.approx(len(batch.list_ids) * world / lists)
                    seen += batch.list_ids.tolist()
        assert sorted(seen) == clicked
        orders.append(seen)
    assert orders[0] != orders[1]


def test_stream_errors_name_the_shard_and_its_row(tmp_path: Path) -> None:
    _write_lists(tmp_path, 500, shard_lists=200)
    bad_items = ItemTable(topic=ITEMS.topic[:40], dense=ITEMS.dense[:40])  # ids 40..49 unknown
    stream = ListStream(tmp_path / "lists_train", bad_items, n_users=10, buffer_lists=10)
    with pytest.raises(DataError, match=r"part-0000\d.parquet: row \d+ \(list_id \d+\): item id"):
        list(stream.local_batches(32, torch.Generator(), 0, 1))


def _peak_bytes_of_one_epoch(data_dir: Path) -> int:
    stream = _stream(data_dir, buffer_lists=200, read_lists=100)
    tracemalloc.start()
    for _batch in stream.local_batches(50, torch.Generator(), 0, 1):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_stream_memory_stays_flat_as_the_data_grow_tenfold(tmp_path: Path) -> None:
    """NumPy's allocations (traced by tracemalloc) while streaming one epoch: the buffer and a
    few pieces, not the data. benchmarks/streaming_memory.py measures the process's RSS."""
    _write_lists(tmp_path / "small", 2_000, shard_lists=500)
    _write_lists(tmp_path / "large", 20_000, shard_lists=500)
    small, large = (_peak_bytes_of_one_epoch(tmp_path / name) for name in ("small", "large"))
    in_memory = load_lists(tmp_path / "large" / "lists_train", ITEMS, n_users=10)
    held = sum(getattr(in_memory, name).nbytes for name in ("features", "labels", "item_ids"))
    assert large < 2 * small  # ten times the lists, not ten times the memory
    assert large < held / 5


def test_prefetch_passes_batches_in_order_and_reraises_producer_errors() -> None:
    batch = _ids_dataset(np.arange(3)).batch(np.arange(3))
    pairs = [(batch, float(i)) for i in range(5)]
    assert [w for _, w in prefetch(iter(pairs), torch.device("cpu"))] == [0, 1, 2, 3, 4]

    def failing():
        yield batch, 1.0
        raise DataError("bad shard")

    with pytest.raises(DataError, match="bad shard"):
        list(prefetch(failing(), torch.device("cpu")))
    endless = prefetch(((batch, 1.0) for _ in iter(int, 1)), torch.device("cpu"), depth=1)
    next(endless)
    endless.close()  # a consumer leaving early stops the producer thread
    assert "prefetch" not in {thread.name for thread in threading.enumerate()}
