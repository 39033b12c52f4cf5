"""Where the real datasets live, and line-numbered reading of their text files.

Real data (LETOR MQ2008, LightGBM's ranking sample, MovieLens 100K) is never copied into the
repository or the package. It is read from a data folder: the one passed explicitly (a
``data_dir`` argument or ``--data-dir``), else the folder named by ``$PRM_DATA_DIR``, else, when
prm runs from a checkout, ``../shared/data`` beside the repository root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from prm.data.tables import DataError

DATA_DIR_ENV = "PRM_DATA_DIR"


def _checkout_root() -> Path | None:
    """The repository root when prm is imported from its ``src/`` folder, else None."""
    src = Path(__file__).resolve().parents[2]  # <root>/src/prm/data/files.py
    root = src.parent
    return root if src.name == "src" and (root / "pyproject.toml").is_file() else None


CHECKOUT_ROOT = _checkout_root()


def default_data_dir() -> Path:
    """``$PRM_DATA_DIR`` if set, else ``<repo root>/../shared/data`` in a checkout; an error
    saying what to set for an installed package without ``$PRM_DATA_DIR``."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    if CHECKOUT_ROOT is not None:
        return CHECKOUT_ROOT.parent / "shared" / "data"
    raise DataError(
        f"no data folder: ${DATA_DIR_ENV} is not set, and prm runs from "
        f"{Path(__file__).parents[1]}, not from a checkout with ../shared/data. Set "
        f"{DATA_DIR_ENV} to the folder holding the datasets (mq2008/, lgbm_rank/, ml-100k/), or "
        "pass that folder explicitly (--data-dir)."
    )


def dataset_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder of dataset ``name``; a clear error naming the path looked at if missing."""
    root = default_data_dir() if data_dir is None else Path(data_dir)
    path = root / name
    if not path.is_dir():
        raise DataError(
            f"{path}: dataset folder not found. Put the {name!r} files there (see its README.md), "
            f"or point to another data folder with ${DATA_DIR_ENV} or data_dir (--data-dir)."
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
