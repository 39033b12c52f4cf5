"""Where real data is looked for: an explicit folder, else $PRM_DATA_DIR, else the checkout's."""

from __future__ import annotations

from pathlib import Path

import pytest

from prm.data import files
from prm.data.files import DATA_DIR_ENV, dataset_dir, default_data_dir
from prm.data.tables import DataError


def test_data_folder_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    root = Path(__file__).resolve().parents[2]
    assert root == files.CHECKOUT_ROOT
    assert default_data_dir() == root.parent / "shared" / "data"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    (tmp_path / "given" / "mq2008").mkdir(parents=True)
    assert dataset_dir("mq2008", tmp_path / "given") == tmp_path / "given" / "mq2008"
    with pytest.raises(DataError, match=f"env/mq2008: dataset folder not found.*{DATA_DIR_ENV}"):
        dataset_dir("mq2008")


def test_installed_without_data_folder_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(files, "CHECKOUT_ROOT", None)  # as from a wheel
    with pytest.raises(DataError, match=f"no data folder: \\${DATA_DIR_ENV} is not set.*Set "):
        dataset_dir("mq2008")
