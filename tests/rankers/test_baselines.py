"""Every registered re-ranker (PRM and the baselines of issue 4) on the same batches: shapes,
padding, gradients, a planted list-wise task, and one run of the real trainer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from list_batches import random_list_batch

from prm.config import ConfigError, TrainConfig
from prm.data.batch import ListBatch, ListDataset
from prm.models.base import Reranker
from prm.rankers.gsf import GSF, GSFConfig
from prm.registry import RERANKERS, ModelSpec
from prm.training.checkpoint import load_checkpoint
from prm.training.losses import softmax_cross_entropy
from prm.training.trainer import CHECKPOINT, Trainer

D_FEATURE, D_PV = 4, 3

# Tiny versions of every registered kind; a new kind must add one here to be tested.
TINY = {
    "prm": {"d_model": 16, "n_heads": 2, "n_blocks": 1, "d_ff": 32, "max_positions": 16},
    "dlcm": {"d_hidden": 16, "d_local": 4},
    "seq2slate": {"d_hidden": 16},
    "setrank": {"d_model": 16, "n_heads": 2, "n_blocks": 1, "d_ff": 32},
    "gsf": {"hidden": [32, 16]},
    "midnn": {"hidden": [32, 16]},
    "generator_evaluator": {"d_hidden": 16, "beam_width": 2, "max_positions": 16},
}
KINDS = sorted(RERANKERS)


def spec(kind: str, **overrides: object) -> ModelSpec:
    return ModelSpec(kind, {**TINY[kind], **overrides}, D_FEATURE, D_PV)


def build(kind: str, seed: int = 0, **overrides: object) -> Reranker:
    torch.manual_seed(seed)
    return spec(kind, **overrides).build().eval()


def training_loss(model: Reranker, batch: ListBatch) -> torch.Tensor:
    """What the trainer minimises: ``Reranker.loss`` with the shared softmax cross-entropy."""
    return model.loss(batch, softmax_cross_entropy)


def make_batch(lengths: list[int], length: int, *, seed: int = 0) -> ListBatch:
    """Random padded lists, the click is the real item with the largest first feature."""
    return random_list_batch(
        lengths, length, d_feature=D_FEATURE, d_pv=D_PV, seed=seed, click="largest_first_feature"
    )


def random_lengths(n: int, low: int, high: int, seed: int) -> list[int]:
    return torch.randint(
        low, high + 1, (n,), generator=torch.Generator().manual_seed(seed)
    ).tolist()


def test_every_registered_kind_has_a_tiny_config() -> None:
    assert set(TINY) == set(RERANKERS)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_config_keys_are_rejected(kind: str) -> None:
    with pytest.raises(ConfigError, match="bogus"):
        spec(kind, bogus=1)


@pytest.mark.parametrize("kind", KINDS)
def test_scores_are_minus_inf_exactly_at_padding(kind: str) -> None:
    batch = make_batch([4, 1, 6], 6)
    model = build(kind)
    for scores in (model(batch), model.click_logits(batch)):
        assert scores.shape == (3, 6)
        assert torch.isfinite(scores[batch.mask]).all()
        assert torch.isneginf(scores[~batch.mask]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_padded_slots_change_no_real_score(kind: str) -> None:
    """Real items scattered among padded slots full of garbage score exactly as before."""
    batch = make_batch([5, 3, 1], 5)
    model = build(kind)
    g = torch.Generator().manual_seed(1)
    wide = 9
    slots = torch.stack([torch.randperm(wide, generator=g)[:5].sort().values for _ in range(3)])
    garbage = {
        "features": torch.randn(3, wide, D_FEATURE, generator=g) * 10,
        "pv": torch.randn(3, wide, D_PV, generator=g) * 10,
        "mask": torch.zeros(3, wide, dtype=torch.bool),
        "labels": torch.zeros(3, wide),
        "positions": torch.randint(-100, 100, (3, wide), generator=g),
        "item_ids": torch.zeros(3, wide, dtype=torch.long),
    }
    for name, field in garbage.items():
        for row in range(3):
            field[row, slots[row]] = getattr(batch, name)[row]
    padded = dataclasses.replace(batch, **garbage)
    for score in (model, model.click_logits):
        scores, padded_scores = score(batch), score(padded)
        moved = padded_scores.gather(1, slots)  # (B, 5): the same items, at their new slots
        torch.testing.assert_close(moved[batch.mask], scores[batch.mask])
        assert torch.isneginf(padded_scores[~padded.mask]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_are_finite_with_an_all_masked_list(kind: str) -> None:
    batch = make_batch([3, 0, 5], 5)
    model = build(kind).train()
    loss = training_loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(grad).all() for grad in grads)
    model.eval()
    assert torch.isneginf(model(batch)[1]).all()


# The evaluator-generator's click model reads each item with the items above it only, so "the
# largest in the whole list" is not a thing it can learn (tests/models/test_evaluator.py
# checks that it fits the clicks it can explain).
SET_SCORERS = [kind for kind in KINDS if kind != "generator_evaluator"]


@pytest.mark.parametrize("kind", SET_SCORERS)
def test_learns_a_planted_list_wise_task(kind: str) -> None:
    """Clicked = the item with the largest first feature in its list; lists of 2 to 8 items,
    so random top-1 accuracy is mean(1/n) ~ 0.23."""
    model = build(kind).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(250):
        batch = make_batch(random_lengths(64, 2, 8, seed=step), 8, seed=step)
        loss = training_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test = make_batch(random_lengths(512, 2, 8, seed=-1), 8, seed=-1)
    with torch.no_grad():
        top = model(test).argmax(dim=-1)  # (B,)
    accuracy = test.labels.gather(1, top[:, None]).mean().item()
    chance = (1 / test.mask.sum(dim=-1).float()).mean().item()
    assert accuracy > chance + 0.4, (kind, accuracy, chance)


def permute_slots(batch: ListBatch, order: torch.Tensor, *, keep_positions: bool) -> ListBatch:
    """The batch with its slots reordered by ``order``; the initial ranks travel with the
    items, or with ``keep_positions`` stay with the slots (items shown at other ranks)."""
    fields = ["features", "pv", "mask", "labels", "positions", "item_ids"]
    moved = {f: getattr(batch, f)[:, order] for f in fields}
    if keep_positions:
        moved["positions"] = batch.positions
    return dataclasses.replace(batch, **moved)


@pytest.mark.parametrize("kind", KINDS)
def test_scores_follow_the_items_not_the_slots(kind: str) -> None:
    """Initial order comes from ``positions``: storing the same lists in other slots only
    moves the scores."""
    batch = make_batch([6, 4, 2], 6)
    model = build(kind)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    moved = permute_slots(batch, order, keep_positions=False)
    torch.testing.assert_close(model(moved), model(batch)[:, order])


@pytest.mark.parametrize("kind", ["dlcm", "seq2slate"])
def test_rnn_rankers_read_the_initial_order(kind: str) -> None:
    batch = make_batch([6, 6], 6)
    model = build(kind)
    reranked = permute_slots(batch, torch.tensor([3, 0, 5, 1, 4, 2]), keep_positions=True)
    assert not torch.equal(
        model.click_logits(reranked).sort().values, model.click_logits(batch).sort().values
    )


def test_setrank_ignores_the_initial_order() -> None:
    batch = make_batch([6, 4, 2], 6)
    model = build("setrank")
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    reranked = permute_slots(batch, order, keep_positions=True)
    torch.testing.assert_close(model(reranked), model(batch)[:, order])


def test_seq2slate_places_every_real_item_exactly_once() -> None:
    batch = make_batch([5, 1, 3], 5)
    scores = build("seq2slate")(batch)
    for row, n in enumerate(batch.mask.sum(dim=-1).tolist()):
        placed = sorted(scores[row][batch.mask[row]].tolist(), reverse=True)
        assert placed == [-float(step) for step in range(n)]


def test_seq2slate_loss_contains_the_shared_first_step_loss() -> None:
    """The per-step loss is the first step's softmax CE plus non-negative later steps."""
    batch = make_batch([5, 4, 3], 5)
    batch = dataclasses.replace(batch, labels=(batch.features[..., 1] > 0).float() * batch.mask)
    model = build("seq2slate")
    first = softmax_cross_entropy(model.click_logits(batch), batch.labels, mask=batch.mask)
    assert model.loss(batch) >= first - 1e-6


@pytest.mark.parametrize("group_size", [1, 2, 3])
def test_gsf_groups_handle_lists_shorter_than_a_group(group_size: int) -> None:
    batch = make_batch([1, 2, 5], 5)
    model = build("gsf", group_size=group_size)
    for mode in (model.eval(), model.train()):
        scores = mode(batch)
        assert torch.isfinite(scores[batch.mask]).all()
        assert torch.isneginf(scores[~batch.mask]).all()


def test_gsf_shuffles_only_in_training() -> None:
    batch = make_batch([6, 6], 6)
    model = GSF(GSFConfig(hidden=(8,), dropout=0.0), D_FEATURE, D_PV)
    torch.testing.assert_close(model.eval()(batch), model(batch), rtol=0, atol=0)
    assert not torch.equal(model.train()(batch), model(batch))


def tiny_dataset(n: int, seed: int) -> ListDataset:
    batch = make_batch(random_lengths(n, 2, 8, seed=seed), 8, seed=seed)
    arrays = {f.name: getattr(batch, f.name).numpy() for f in dataclasses.fields(batch)}
    return ListDataset(**arrays)


@pytest.mark.parametrize("kind", ["dlcm", "seq2slate"])
def test_trains_with_the_shared_trainer_and_reloads(kind: str, tmp_path: Path) -> None:
    config = TrainConfig(epochs=2, batch_size=32, lr=1e-2, patience=5)
    trainer = Trainer(spec(kind), config, tmp_path, progress=False)
    model = trainer.model
    valid = tiny_dataset(64, seed=2)
    state = trainer.fit(tiny_dataset(256, seed=1), valid)
    assert [row["epoch"] for row in state.history] == [1, 2]
    assert json.loads((tmp_path / "metrics.json").read_text())["best_epoch"] >= 1
    reloaded = ModelSpec.from_dict(load_checkpoint(tmp_path / CHECKPOINT)["model_spec"]).build()
    reloaded.load_state_dict(model.state_dict())
    batch = valid.batch(np.arange(16))
    torch.testing.assert_close(reloaded.eval()(batch), model.eval()(batch))
