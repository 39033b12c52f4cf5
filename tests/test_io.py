"""Atomic writes: nothing half-written, ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from prm.io import atomic_path, write_json


def test_written_file_has_the_umask_permissions(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_an_error_leaves_neither_the_file_nor_a_temporary(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []
