"""bf16 training (train.precision: bf16): a bf16 copy of the model takes the step, Adam updates
the fp32 model, which validation and checkpoints hold."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from prm.data.loaders import load_list_data
from prm.data.streaming import InMemoryLists
from prm.registry import RERANKERS, ModelSpec
from prm.training.checkpoint import CHECKPOINT_KEYS, load_checkpoint
from prm.training.trainer import CHECKPOINT, Trainer


def _trainer(config, data, run_dir: Path, kind: str, precision: str) -> Trainer:
    train = data.splits["train"]
    model_config = replace(config.model, use_pv=False) if kind == "prm" else {}
    spec = ModelSpec.of(kind, model_config, train.d_feature, 0)
    train_config = replace(config.train, precision=precision, epochs=2, patience=10)
    examination = data.examination if kind == "generator_evaluator" else None
    return Trainer(spec, train_config, run_dir, progress=False, examination=examination)


@pytest.fixture(scope="module")
def data(tiny_data_dir: Path):
    return load_list_data(tiny_data_dir, splits=("train", "valid"))


def test_bf16_steps_fp32_master_weights_and_checkpoints_them(tiny_config, data, tmp_path):
    trainer = _trainer(tiny_config, data, tmp_path, "prm", "bf16")
    state = trainer.fit(data.splits["train"], data.splits["valid"])

    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    copy = trainer.bf16.module
    assert all(p.dtype == torch.bfloat16 for p in copy.parameters())
    # After the last step the copy holds the stepped master weights, rounded to bf16.
    last = load_checkpoint(tmp_path / CHECKPOINT, CHECKPOINT_KEYS)["weights"]
    for name, weight in copy.state_dict().items():
        assert last[name].dtype == torch.float32
        torch.testing.assert_close(weight, last[name].bfloat16(), rtol=0, atol=0)
    assert all(np.isfinite(value) for row in state.history for value in row.values())


def test_bf16_learns_as_fp32_does(tiny_config, data, tmp_path):
    """Both fall from the same initial loss by a similar amount (tiny data: a loose bound)."""
    losses = {}
    for precision in ("fp32", "bf16"):
        trainer = _trainer(tiny_config, data, tmp_path / precision, "prm", precision)
        initial = trainer.validate(data.splits["valid"])["loss"]
        trainer.fit(data.splits["train"], data.splits["valid"])
        losses[precision] = (initial, trainer.validate(data.splits["valid"])["loss"])
    (start_32, end_32), (start_16, end_16) = losses["fp32"], losses["bf16"]
    assert start_16 == start_32  # validation scores the fp32 model in both
    assert end_32 < start_32 and end_16 < start_16
    assert abs((start_16 - end_16) - (start_32 - end_32)) < 0.5 * (start_32 - end_32)


@pytest.mark.parametrize("kind", sorted(set(RERANKERS) - {"prm"}))
def test_every_reranker_trains_in_bf16(kind, tiny_config, data, tmp_path):
    trainer = _trainer(tiny_config, data, tmp_path, kind, "bf16")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_epoch(InMemoryLists(data.splits["train"]), 1)
    after = list(trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(p.dtype == torch.float32 and p.isfinite().all() for p in after)
