"""prm as a user installs it: the wheel built from this checkout, installed in a fresh venv
outside of it, runs a tiny demo from its shipped configs and finds data only where told.

Offline: the wheel is built without build isolation, and the venv sees this interpreter's
site-packages (torch and the other dependencies) through a ``.pth`` line, which does not run
that folder's own ``.pth`` files, so the checkout's ``src/`` (the editable install) stays out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import prm

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run a command with neither PYTHONPATH nor PRM_DATA_DIR inherited; fail with its output."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PRM_DATA_DIR")}
    args = [str(arg) for arg in args]
    return subprocess.run(args, cwd=cwd, env={**base, **env}, capture_output=True, text=True)


def ok(done: subprocess.CompletedProcess) -> str:
    """The command's stdout, after checking that it succeeded."""
    assert done.returncode == 0, f"{done.args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel of this checkout installed; returns its bin/ folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy, so the checkout gets no build/ or dist/ and parallel runs don't race.
    source = tmp / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", source / "src", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "configs", source / "configs")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip"]
    quiet = ["--quiet", "--no-deps", "--no-index"]
    ok(run([*pip, "wheel", *quiet, "--no-build-isolation", "-w", tmp / "dist", source], tmp))
    (wheel,) = (tmp / "dist").glob("prm-*.whl")

    env = tmp / "venv"
    ok(run([sys.executable, "-m", "venv", "--without-pip", env], tmp))
    python = env / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(ok(run([python, "-c", purelib], tmp)).strip())
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "_prm_test_deps.pth").write_text("".join(f"{path}\n" for path in sorted(deps)))
    ok(run([*pip, "--python", python, "install", *quiet, wheel], tmp))
    return env / "bin"


def test_installed_wheel_runs_the_tiny_demo(venv: Path, tmp_path: Path) -> None:
    where = ok(run([venv / "python", "-c", "import prm; print(prm.__file__)"], tmp_path))
    assert Path(where.strip()).is_relative_to(venv.parent), where  # the wheel, not src/
    assert not Path(where.strip()).is_relative_to(ROOT), where
    assert ok(run([venv / "prm", "--version"], tmp_path)).strip() == f"prm {prm.__version__}"

    # `--config tiny` names the config shipped in the wheel; nothing here but the output.
    out = ok(run([venv / "prm", "demo", "--config", "tiny", "--out", "out", "--quiet"], tmp_path))
    assert (tmp_path / "out" / "results.json").is_file()
    assert "expected_clicks" in out


def test_installed_wheel_finds_data_only_where_told(venv: Path, tmp_path: Path) -> None:
    benchmark = [venv / "prm", "benchmark", "mq2008", "--quick", "--quiet"]
    # No $PRM_DATA_DIR and no checkout: an error saying what to set, and nothing written.
    done = run(benchmark, tmp_path)
    assert done.returncode == 2 and "PRM_DATA_DIR is not set" in done.stderr, done.stderr
    # $PRM_DATA_DIR and --data-dir are where it looks (both empty here, so both name the path).
    done = run(benchmark, tmp_path, PRM_DATA_DIR=str(tmp_path / "env"))
    assert f"{tmp_path / 'env' / 'mq2008'}: dataset folder not found" in done.stderr, done.stderr
    done = run([*benchmark, "--data-dir", tmp_path / "given"], tmp_path)
    assert f"{tmp_path / 'given' / 'mq2008'}: dataset folder not found" in done.stderr
    assert not any(tmp_path.iterdir())
