"""Attention heatmaps: one panel per block and head, from the CLI and the library."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pyarrow.parquet as pq

from prm.cli.main import main
from prm.serving.explain import plot_attention
from prm.serving.predictor import Predictor


def test_explain_writes_a_heatmap_and_the_new_order(served, tmp_path: Path, capsys) -> None:
    lists = served.data / "lists_test.parquet"
    row = pq.read_table(lists).slice(3, 1).to_pylist()[0]
    out = tmp_path / "attention.png"
    args = ["explain", "--model", str(served.bundle), "--lists", str(lists)]
    args += ["--list-id", str(row["list_id"]), "--out", str(out)]
    assert main([*args, "--items", str(served.data / "items.parquet")]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["initial_item_ids"] == row["item_ids"]
    assert sorted(summary["reranked_item_ids"]) == sorted(row["item_ids"])
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[1] > image.shape[0]  # two heads side by side


def test_attention_rows_are_distributions_over_the_list(torch_predictor: Predictor) -> None:
    mask = np.arange(6) < np.array([[6], [4]])  # (2, 6), the second list padded
    inputs = torch_predictor.known_user_lists(np.array([0, 1]), np.arange(12).reshape(2, 6), mask)
    weights = torch_predictor.backend.attention(inputs, torch_predictor.pv(inputs))
    assert len(weights) == 1 and weights[0].shape == (2, 2, 6, 6)  # tiny: 1 block, 2 heads
    np.testing.assert_allclose(weights[0].sum(-1), 1.0, atol=1e-5)
    assert (weights[0][1, :, :, 4:] == 0).all()  # padded items are never attended to


def test_plot_attention_draws_any_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = [rng.dirichlet(np.ones(50), size=(3, 50)) for _ in range(2)]  # 2 blocks, 3 heads
    plot_attention(weights, [f"item {i}" for i in range(50)], tmp_path / "grid.png", title="t")
    image = matplotlib.image.imread(tmp_path / "grid.png")
    assert image.shape[1] > image.shape[0]  # three columns, two rows


def test_an_unknown_list_id_exits_2(served, tmp_path: Path, capsys) -> None:
    args = ["explain", "--model", str(served.bundle), "--list-id", "-5"]
    args += ["--lists", str(served.data / "lists_test.parquet"), "--out", str(tmp_path / "a.png")]
    assert main(args) == 2
    assert "0 rows with list_id -5" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()
