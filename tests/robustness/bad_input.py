"""Helpers of the robustness corpus: the one check every bad input must pass, exit code 2, a
message naming what is wrong and where, nothing written, and ways to make the inputs.

A failed check says which of the issue's classes the input fell in: ``TRACEBACK`` (an
exception escaped ``main``), ``SILENT`` (exit 0: a wrong result), ``MISLEADING`` (exit 2, but
the message does not name the problem) or ``WROTE`` (a file or folder was left behind).
"""

from __future__ import annotations

import os
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from prm.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"


@dataclass(frozen=True)
class Built:
    """Artifacts of the tiny config, each made by the CLI once per session."""

    data: Path  # simulated data folder
    pv: Path  # `prm pretrain` output: ctr_model.pt, pv_<split>.npy
    base_run: Path  # `prm train --base`: PRM-BASE, one epoch
    prm_run: Path  # `prm train --pv`: PRM, one epoch
    config: Path  # tiny.yaml with train.epochs 1


def copy_tree(source: Path, target: Path) -> Path:
    """A copy of ``source`` by hard links (cheap): replace a file with :func:`rewrite`, never
    write into one."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


def rewrite(path: Path, data: bytes | pa.Table) -> None:
    """Replace ``path`` (a hard link into a shared fixture) by a new file."""
    path.unlink(missing_ok=True)
    if isinstance(data, pa.Table):
        pq.write_table(data, path)
    else:
        path.write_bytes(data)


def edit_table(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    rewrite(path, change(pq.read_table(path)))


def write_config(folder: Path, changes: dict, base: Path = TINY) -> Path:
    """tiny.yaml with ``changes`` ({"train.lr": 0.1}; ``None`` deletes the key) as a file."""
    settings = yaml.safe_load(base.read_text())
    for dotted, value in changes.items():
        *sections, key = dotted.split(".")
        node = settings
        for section in sections:
            node = node.setdefault(section, {})
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


@dataclass
class Case:
    """One bad input: a command line whose inputs all live under ``folder``."""

    folder: Path
    argv: list[str]
    expect: tuple[str, ...]  # fragments the error output must hold (file, row, column, key)
    absent: tuple[Path, ...] = ()  # outputs that must not exist afterwards


def check_refused(case: Case, capsys: pytest.CaptureFixture) -> None:
    """Run ``case`` in process and fail, naming the outcome class, unless it exits 2 with every
    expected fragment in its output and changes nothing under its folder."""
    before = snapshot(case.folder)
    capsys.readouterr()
    try:
        code = main(case.argv)
    except SystemExit as exit_info:  # argparse
        code = exit_info.code
    except Exception:
        pytest.fail(f"TRACEBACK: {' '.join(case.argv)}\n{traceback.format_exc()}")
    captured = capsys.readouterr()
    output = captured.out + captured.err
    if code == 0:
        pytest.fail(f"SILENT: exit 0 for {' '.join(case.argv)}\n{output[-2000:]}")
    if code != 2:
        pytest.fail(f"EXIT {code}: {' '.join(case.argv)}\n{output[-2000:]}")
    missing = [fragment for fragment in case.expect if fragment not in output]
    if missing:
        pytest.fail(f"MISLEADING: {missing} not in the message:\n{output[-2000:]}")
    left = [str(path) for path in case.absent if path.exists()]
    after = snapshot(case.folder)
    changed = sorted(k for k in after.keys() | before.keys() if after.get(k) != before.get(k))
    if left or changed:
        pytest.fail(f"WROTE: {left + changed}\n{output[-2000:]}")
    assert "Traceback" not in output
