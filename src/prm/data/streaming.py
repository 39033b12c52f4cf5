"""Training lists as each process sees them: its share of every global batch, held in memory or
streamed from Parquet shards through a bounded shuffle buffer.

Both sources yield ``(batch, weight)`` pairs. ``weight`` scales the process's mean loss so that
the mean over processes (what DDP's gradient averaging computes) is the mean over the global
batch, however its lists fall across processes. Every process yields the same number of
batches, as DDP requires; one left without a list in the last step gets one list at weight 0.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from queue import Full, Queue

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from prm.data.batch import Batches, ListBatch, ListDataset, concat_lists
from prm.data.loaders import LIST_COLUMNS, label_column, lists_dataset
from prm.data.shards import shard_paths
from prm.data.tables import DataError, ItemTable, open_parquet


class InMemoryLists:
    """The clicked lists of a :class:`ListDataset` (all of them with ``clicked_only=False``),
    batched exactly as one process would batch them, each global batch then cut into ``world``
    contiguous parts: training on several processes matches training on one up to float
    rounding (and dropout's random draws)."""

    def __init__(self, dataset: ListDataset, clicked_only: bool = True) -> None:
        self.dataset = dataset.subset(dataset.has_click()) if clicked_only else dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def steps(self, batch_size: int, world: int) -> int:
        return -(-len(self) // batch_size)

    def local_batches(
        self, batch_size: int, generator: torch.Generator, rank: int, world: int
    ) -> Batches:
        order = torch.randperm(len(self), generator=generator).numpy()
        for start in range(0, len(order), batch_size):
            rows = np.sort(order[start : start + batch_size])
            mine = np.array_split(rows, world)[rank]
            weight = len(mine) * world / len(rows)
            yield self.dataset.batch(mine if len(mine) else rows[:1]), weight


def _columns(dataset: ListDataset) -> dict[str, np.ndarray]:
    return {f.name: getattr(dataset, f.name) for f in fields(dataset)}


class ShuffleBuffer:
    """A pool of at most ``capacity`` lists through which a stream passes in random order.

    Once the pool is full, every arriving list pushes out one list drawn uniformly from the
    pool and the arrivals (the shuffle buffer of tf.data, vectorised over chunks); at the end
    the pool is emptied in random order. Memory: ``capacity`` lists, whatever the stream's length.
    """

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        if capacity < 1:
            raise ValueError(f"shuffle buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.rng = rng
        self._pool: dict[str, np.ndarray] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def shuffle(self, chunks: Iterable[ListDataset]) -> Iterator[ListDataset]:
        for chunk in chunks:
            pushed_out = self.push(chunk)
            if pushed_out is not None:
                yield pushed_out
        if self._count:
            yield self.drain()

    def push(self, chunk: ListDataset) -> ListDataset | None:
        """Add ``chunk``; the lists it pushes out, in random order, once the pool is full."""
        arriving = _columns(chunk)
        if not self._pool:
            self._pool = {
                name: np.empty((self.capacity, *values.shape[1:]), values.dtype)
                for name, values in arriving.items()
            }
        fill = min(self.capacity - self._count, len(chunk))
        for name, pool in self._pool.items():
            pool[self._count : self._count + fill] = arriving[name][:fill]
        self._count += fill
        arrivals = len(chunk) - fill
        if not arrivals:
            return None
        # Draw `arrivals` lists from pool + arrivals; arrivals that stay fill the freed slots.
        pick = self.rng.choice(self.capacity + arrivals, size=arrivals, replace=False)
        from_pool = pick < self.capacity
        picked_arrivals = fill + pick[~from_pool] - self.capacity  # rows of chunk
        staying = np.ones(len(chunk), dtype=bool)
        staying[:fill] = False
        staying[picked_arrivals] = False
        out = {}
        for name, pool in self._pool.items():
            values = arriving[name]
            out[name] = np.empty((arrivals, *pool.shape[1:]), pool.dtype)
            out[name][from_pool] = pool[pick[from_pool]]
            out[name][~from_pool] = values[picked_arrivals]
            pool[pick[from_pool]] = values[staying]
        return ListDataset(**out)

    def drain(self) -> ListDataset:
        """Everything left in the pool, in random order; the pool is then empty."""
        order = self.rng.permutation(self._count)
        self._count = 0
        return ListDataset(**{name: pool[order] for name, pool in self._pool.items()})


def _rebatch(chunks: Iterable[ListDataset], size: int) -> Iterator[ListDataset]:
    """Chunks of any size regrouped into runs of ``size`` lists (the last may be shorter)."""
    pending: list[ListDataset] = []
    count = 0
    for chunk in chunks:
        pending.append(chunk)
        count += len(chunk)
        if count < size:
            continue
        joined = concat_lists(pending)
        full = count // size * size
        for start in range(0, full, size):
            yield joined.subset(np.arange(start, start + size))
        pending, count = [joined.subset(np.arange(full, count))], count - full
    if count:
        yield concat_lists(pending)


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group of a shard: the unit the stream shuffles and divides."""

    path: Path
    index: int
    first_row: int  # its first list's row number in the file, for error messages
    clicked: int  # lists with at least one click


def _has_click(clicks: pa.ChunkedArray) -> np.ndarray:
    """(N,) bool from a list column of labels: the rows holding a positive value."""
    column = clicks.combine_chunks()
    offsets = column.offsets.to_numpy()
    positive = column.values.to_numpy(zero_copy_only=False) > 0
    before = np.concatenate([[0], np.cumsum(positive)])
    return before[offsets[1:]] > before[offsets[:-1]]


def _parquet_file(path: Path) -> pq.ParquetFile:
    file = open_parquet(path)
    missing = sorted(set(LIST_COLUMNS) - set(file.schema_arrow.names))
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    label_column(file.schema_arrow.names, path)
    return file


def _read_columns(file: pq.ParquetFile, path: Path) -> list[str]:
    """The columns a stream reads: the list columns and the file's label column."""
    return [*LIST_COLUMNS, label_column(file.schema_arrow.names, path)]


def _scan(paths: list[Path]) -> tuple[list[RowGroup], int]:
    """Every row group's clicked-list count and the longest list, from the clicks column only."""
    groups, longest = [], 0
    for path in paths:
        file = _parquet_file(path)
        first_row = 0
        for index in range(file.num_row_groups):
            label = label_column(file.schema_arrow.names, path)
            clicks = file.read_row_group(index, columns=[label]).column(label)
            lengths = np.diff(clicks.combine_chunks().offsets.to_numpy())
            longest = max(longest, int(lengths.max(initial=0)))
            groups.append(RowGroup(path, index, first_row, int(_has_click(clicks).sum())))
            first_row += len(lengths)
    return groups, longest


class ListStream:
    """A split's clicked lists read from Parquet shards during training, never all at once.

    Opening scans the ``clicks`` column once (list lengths, which lists have a click). Each
    epoch shuffles the row groups, gives process ``rank`` a contiguous ``1/world`` share of the
    clicked lists in that order (so it reads only its own row groups), and passes its share
    through a :class:`ShuffleBuffer`. Memory holds the buffer, one piece of ``read_lists`` lists,
    the batches being assembled, and one row group's column chunks inside Arrow.

    Lists carry no personalized vector (``d_pv`` is 0): PV caches are in-memory arrays.
    """

    def __init__(
        self,
        source: str | Path,
        items: ItemTable,
        n_users: int | None,
        *,
        buffer_lists: int,
        read_lists: int = 4096,
    ) -> None:
        self.source = Path(source)
        self.items = items
        self.n_users = n_users
        self.buffer_lists = buffer_lists
        self.read_lists = read_lists
        self.row_groups, self.list_length = _scan(shard_paths(self.source))
        self._clicked = sum(group.clicked for group in self.row_groups)

    def __len__(self) -> int:
        return self._clicked

    @property
    def d_feature(self) -> int:
        return self.items.features.shape[1]

    @property
    def d_pv(self) -> int:
        return 0

    def steps(self, batch_size: int, world: int) -> int:
        share = -(-len(self) // world)
        return -(-share // _local_size(batch_size, world))

    def local_batches(
        self, batch_size: int, generator: torch.Generator, rank: int, world: int
    ) -> Batches:
        """Batches of ``ceil(batch_size / world)`` lists from this process's share."""
        if len(self) < world:
            raise ValueError(f"{self.source}: {len(self)} clicked lists for {world} processes")
        size = _local_size(batch_size, world)
        order = torch.randperm(len(self.row_groups), generator=generator).tolist()
        seed = int(torch.randint(2**62, (1,), generator=generator))
        groups = [self.row_groups[i] for i in order]
        bounds = len(self) * np.arange(world + 1) // world  # rank r: [bounds[r], bounds[r+1])
        shares = np.diff(bounds)
        buffer = ShuffleBuffer(
            min(self.buffer_lists, int(shares[rank])), np.random.default_rng([seed, rank])
        )
        lists = self._read(groups, int(bounds[rank]), int(bounds[rank + 1]))
        batches = _rebatch(buffer.shuffle(lists), size)
        last = None
        for step in range(self.steps(batch_size, world)):
            in_step = int(np.clip(shares - step * size, 0, size).sum())
            batch = next(batches, None)
            if batch is None:  # this process's share ran out one step early
                yield last.batch(np.arange(1)), 0.0
                continue
            last = batch
            yield batch.batch(np.arange(len(batch))), len(batch) * world / in_step

    def _read(self, groups: list[RowGroup], start: int, stop: int) -> Iterator[ListDataset]:
        """Clicked lists ``start`` to ``stop`` of the stream that ``groups`` make, in order."""
        position = 0  # clicked lists before the current row group
        for group in groups:
            begin, end = max(start - position, 0), min(stop - position, group.clicked)
            position += group.clicked
            if begin >= end:
                continue
            seen, row = 0, group.first_row  # clicked lists of this group read so far
            file = _parquet_file(group.path)
            pieces = file.iter_batches(
                batch_size=self.read_lists,
                row_groups=[group.index],
                columns=_read_columns(file, group.path),
            )
            for piece in pieces:
                lists = lists_dataset(
                    pa.Table.from_batches([piece]),
                    self.items,
                    self.n_users,
                    group.path,
                    length=self.list_length,
                    first_row=row,
                )
                row += len(lists)
                clicked = lists.subset(lists.has_click())
                keep = np.arange(max(begin - seen, 0), min(end - seen, len(clicked)))
                seen += len(clicked)
                if len(keep):
                    yield clicked.subset(keep)
                if seen >= end:
                    break


def _local_size(batch_size: int, world: int) -> int:
    return -(-batch_size // world)


def map_tensors(batch: ListBatch, fn: Callable[[torch.Tensor], torch.Tensor]) -> ListBatch:
    """``fn`` applied to every tensor of ``batch`` (pinning, asynchronous copies)."""
    return ListBatch(**{f.name: fn(getattr(batch, f.name)) for f in fields(batch)})


def to_device(batch: ListBatch, device: torch.device) -> ListBatch:
    """Copy to ``device``; from pinned memory to a GPU the copy does not block the host."""
    return map_tensors(batch, lambda t: t.to(device, non_blocking=True))


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def prefetch(batches: Batches, device: torch.device, depth: int = 2) -> Batches:
    """``batches`` assembled ``depth`` ahead in a background thread (NumPy gathers and Parquet
    decoding release the GIL), so loading overlaps the step; pinned when bound for a GPU."""
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            if device.type == "cuda":
                torch.cuda.set_device(device)  # pin through this process's GPU, not GPU 0
            for batch, weight in batches:
                if device.type == "cuda":
                    batch = map_tensors(batch, torch.Tensor.pin_memory)
                if not put((batch, weight)):
                    return
            put(_END)
        except BaseException as error:  # re-raised in the consumer
            put(_Failure(error))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()  # a producer waiting on a full queue sees it within 0.1 s
        thread.join()
