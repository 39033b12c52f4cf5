"""The retraining loop: deployment shows the policy's order and logs clicks of that order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from prm.config import ExperimentConfig
from prm.data.batch import ListBatch
from prm.data.loaders import load_list_data
from prm.data.simulator import load_click_model
from prm.deployment import deploy, retraining_loop


class ReverseInitial(torch.nn.Module):
    """A policy that shows each list bottom-up."""

    def forward(self, batch: ListBatch) -> torch.Tensor:
        return batch.positions.float().masked_fill(~batch.mask, float("-inf"))


def test_deploy_logs_clicks_of_the_order_it_shows(tiny_data_dir: Path) -> None:
    requests = load_list_data(tiny_data_dir, splits=("test",)).splits["test"]
    click_model = load_click_model(tiny_data_dir)
    rng = np.random.default_rng(0)
    runs = [deploy(ReverseInitial(), requests, click_model, rng) for _ in range(40)]
    logs = runs[0]
    np.testing.assert_array_equal(logs.item_ids, requests.item_ids[:, ::-1])
    np.testing.assert_array_equal(logs.positions[0], np.arange(requests.list_length))
    clicks = np.mean([run.labels for run in runs], axis=0)
    expected = click_model.click_probabilities(logs.user_ids, logs.item_ids, logs.mask)
    # Rank 1 of the reversed list gets the clicks of its item shown first, not last.
    assert abs(clicks[:, 0].mean() - expected[:, 0].mean()) < 0.02
    assert clicks[:, 0].mean() > 2 * clicks[:, -1].mean()


def test_loop_reports_estimates_and_truth_per_round(
    tiny_config: ExperimentConfig, tmp_path: Path
) -> None:
    report = retraining_loop(tiny_config, tmp_path, rounds=2, progress=False)
    assert [row["round"] for row in report["rounds"]] == [1, 2]
    for row in report["rounds"]:
        low, high = row["estimated_clicks_dr_interval"]
        assert low <= row["estimated_clicks_dr"] <= high
        assert row["true_expected_clicks"] > 0 and row["logged_clicks_per_list"] > 0
    assert json.loads((tmp_path / "loop.json").read_text()) == report
    assert (tmp_path / "loop.png").stat().st_size > 0
    assert (tmp_path / "round2" / "prm" / "checkpoint.pt").is_file()
