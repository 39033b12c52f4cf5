"""Position bias measured on the simulator's randomized exploration lists."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from prm.config import PRMConfig, SimulatorConfig
from prm.data.batch import ListDataset
from prm.data.examination import examination_from_randomized, require_examination
from prm.data.loaders import load_list_data
from prm.data.simulator import simulate
from prm.models.prm import PRM
from prm.training.losses import softmax_cross_entropy

SMALL = SimulatorConfig(
    n_users=200, n_items=300, n_topics=5, list_length=8, candidate_pool=20,
    n_train_lists=300, n_valid_lists=50, n_test_lists=50, n_explore_lists=400,
)  # fmt: skip


def lists_with_clicks(labels: np.ndarray) -> ListDataset:
    n, length = labels.shape
    return ListDataset(
        features=np.zeros((n, length, 2), np.float32),
        pv=np.zeros((n, length, 0), np.float32),
        mask=np.ones((n, length), bool),
        labels=labels.astype(np.float32),
        positions=np.broadcast_to(np.arange(length), (n, length)).copy(),
        user_ids=np.zeros(n, np.int64),
        list_ids=np.arange(n),
        item_ids=np.zeros((n, length), np.int64),
    )


def test_estimate_recovers_the_examination_of_random_lists() -> None:
    rng = np.random.default_rng(0)
    examination = 1.0 / np.arange(1, 11)
    relevance = rng.uniform(0.2, 0.8, size=(100_000, 10))  # independent of the rank
    clicks = rng.random(relevance.shape) < examination * relevance
    estimate = examination_from_randomized(lists_with_clicks(clicks))
    np.testing.assert_allclose(estimate, examination, rtol=0.06)


def test_exploration_lists_leave_the_other_splits_alone(tmp_path: Path) -> None:
    simulate(SMALL, tmp_path / "with", progress=False)
    simulate(replace(SMALL, n_explore_lists=0), tmp_path / "without", progress=False)
    for name in ("lists_train.parquet", "lists_valid.parquet", "lists_test.parquet"):
        assert pq.read_table(tmp_path / "with" / name).equals(
            pq.read_table(tmp_path / "without" / name)
        ), name
    assert not (tmp_path / "without" / "lists_explore.parquet").exists()
    assert load_list_data(tmp_path / "without").examination is None
    examination = load_list_data(tmp_path / "with").examination
    assert examination.shape == (SMALL.list_length,) and examination[0] == 1.0
    assert examination[-1] < examination[0]  # lower ranks are looked at less
    with pytest.raises(ValueError, match="n_explore_lists"):
        require_examination(None, "training data")


def test_fixed_tower_does_not_train() -> None:
    config = PRMConfig(d_model=8, n_heads=2, n_blocks=1, d_ff=16, position_bias_tower=True)
    model = PRM(config, d_feature=2, d_pv=0)
    model.position_bias.fix(torch.tensor([1.0, 0.5, 0.25]))
    before = model.position_bias.offset.weight.detach().clone()
    np.testing.assert_allclose(before[:3, 0].numpy(), np.log([1.0, 0.5, 0.25]), rtol=1e-6)
    labels = np.zeros((4, 3))
    labels[:, 2] = 1
    batch = lists_with_clicks(labels).batch(np.arange(4))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.loss(batch, softmax_cross_entropy).backward()
    optimizer.step()
    assert torch.equal(model.position_bias.offset.weight, before)
