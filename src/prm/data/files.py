"""Where the real datasets live, and line-numbered reading of their text files.

Real data (LETOR MQ2008, LightGBM's ranking sample, MovieLens 100K) is never copied into the
repository: it is read from a data folder, by default ``../shared/data`` beside the repository
root, or the folder named by the ``PRM_DATA_DIR`` environment variable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from prm.data.loaders import DataError

DATA_DIR_ENV = "PRM_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[3]


def default_data_dir() -> Path:
    """``$PRM_DATA_DIR`` if set, else ``<repo root>/../shared/data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or REPO_ROOT.parent / "shared" / "data")


def dataset_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder of dataset ``name``; a clear error naming the path looked at if missing."""
    root = default_data_dir() if data_dir is None else Path(data_dir)
    path = root / name
    if not path.is_dir():
        raise DataError(
            f"{path}: dataset folder not found. Put the {name!r} files there (see its README.md), "
            f"or point to another data folder with ${DATA_DIR_ENV} or the data_dir argument."
        )
    return path


def line_error(path: Path, line_no: int, reason: str) -> DataError:
    """The ``file:line: reason`` error of a malformed text line (1-based line numbers)."""
    return DataError(f"{path}:{line_no}: {reason}")


def numbered_lines(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield ``(line_no, line)`` of a text file one line at a time, skipping blank lines."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding=encoding) as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                yield line_no, line
