"""Where a split's lists live on disk: one Parquet file, or a folder of part files (shards).

``lists_<split>.parquet`` and ``lists_<split>/part-00000.parquet, part-00001.parquet, ...`` hold
the same rows; shards let a split far larger than memory be written and read piece by piece,
and let each training process read its own share.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from prm.io import atomic_path

PART_GLOB = "part-*.parquet"


def lists_source(data_dir: str | Path, split: str) -> Path:
    """The shard folder ``lists_<split>/`` if present, else ``lists_<split>.parquet``."""
    folder = Path(data_dir) / f"lists_{split}"
    return folder if folder.is_dir() else folder.with_name(f"lists_{split}.parquet")


def shard_paths(source: str | Path) -> list[Path]:
    """A folder's part files in order; any other path as itself, for its reader to check."""
    source = Path(source)
    if not source.is_dir():
        return [source]
    parts = sorted(source.glob(PART_GLOB))
    if not parts:
        raise FileNotFoundError(f"{source}: folder holds no {PART_GLOB} files")
    return parts


class ListWriter:
    """Appends tables as row groups to ``lists_<split>.parquet``, or to part files of at most
    ``shard_lists`` rows each, so memory holds one table at a time whatever the split's size.

    Each file appears under its final name only once complete; older forms of the same split
    (the other layout, or surplus parts of a larger earlier run) are removed first. A split
    with no rows still gets one empty file, so it reads back as an empty split.
    """

    def __init__(
        self, data_dir: str | Path, split: str, shard_lists: int, schema: pa.Schema
    ) -> None:
        if shard_lists < 0:
            raise ValueError(f"shard_lists must be >= 0, got {shard_lists}")
        data_dir = Path(data_dir)
        self.single = data_dir / f"lists_{split}.parquet"
        self.folder = data_dir / f"lists_{split}"
        self.shard_lists = shard_lists
        self.schema = schema
        self.single.unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.parts = 0
        self._rows_in_file = 0
        self._file: ExitStack | None = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None:
                self._open()
            room = self.shard_lists - self._rows_in_file if self.shard_lists else table.num_rows
            head, table = table.slice(0, room), table.slice(room)
            self._writer.write_table(head)
            self._rows_in_file += head.num_rows
            if self.shard_lists and self._rows_in_file == self.shard_lists:
                self._close()

    def _open(self) -> None:
        path = self.folder / f"part-{self.parts:05d}.parquet" if self.shard_lists else self.single
        self._file = ExitStack()
        self._writer = pq.ParquetWriter(self._file.enter_context(atomic_path(path)), self.schema)
        self.parts += 1
        self._rows_in_file = 0

    def _close(self, error: BaseException | None = None) -> None:
        """Finish the open file; after an error its temporary file is removed instead."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        if error is None:
            self._file.close()
        else:
            self._file.__exit__(type(error), error, error.__traceback__)

    def __enter__(self) -> ListWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None and self.parts == 0:
            self._open()
        self._close(error)
