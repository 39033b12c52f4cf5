"""The scripts in examples/ run as a user would run them, on the real data, kept small."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prm.data.check import check_data
from prm.data.files import DATA_DIR_ENV, default_data_dir

ROOT = Path(__file__).resolve().parents[1]
ML100K = default_data_dir() / "ml-100k"


@pytest.mark.skipif(
    not (ML100K / "u.data").is_file(),
    reason=f"{ML100K} not found (set {DATA_DIR_ENV} to the shared data folder)",
)
def test_movielens_100k_example_runs_to_a_served_answer(tmp_path: Path) -> None:
    script = ROOT / "examples" / "movielens_100k.py"
    args = [str(ML100K), "--out", str(tmp_path), "--max-users", "60", "--epochs", "1"]
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert check_data(tmp_path / "data") == []
    assert "ok: 1682 items, 60 users" in done.stdout
    assert json.loads((tmp_path / "prm" / "eval_test.json").read_text())["ndcg@10"] > 0
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    assert "curl -s http://127.0.0.1:" in done.stdout
    assert "new order (* = clicked in the log)" in done.stdout


def test_movielens_100k_example_says_what_to_do_without_the_data(tmp_path: Path) -> None:
    script = ROOT / "examples" / "movielens_100k.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "ml-100k.zip" in done.stderr and "PRM_DATA_DIR" in done.stderr
    assert not (tmp_path / "out").exists()
