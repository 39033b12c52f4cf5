"""The context-aware click model and the evaluator-generator re-ranker, against brute force."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest
import torch
from list_batches import random_list_batch

from prm.config import EvaluatorConfig
from prm.models.evaluator import (
    ContextClickModel,
    exclusive_prefix,
    in_display_order,
    shown_order,
)
from prm.rankers.evaluator_generator import GeneratorEvaluator
from prm.registry import ModelSpec


def test_exclusive_prefix_sums_and_maxes_only_real_items_above() -> None:
    x = torch.tensor([[[1.0, -2.0], [3.0, -5.0], [9.0, 9.0], [-1.0, 0.5]]])
    mask = torch.tensor([[True, True, False, True]])
    total, largest = exclusive_prefix(x, mask)
    assert total[0].tolist() == [[0, 0], [1, -2], [4, -7], [4, -7]]
    assert largest[0].tolist() == [[0, 0], [1, -2], [3, -2], [3, -2]]


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn at random, so the context terms are far from their zero start."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model.eval()


def brute_force_probabilities(model: ContextClickModel, batch, row: int) -> np.ndarray:
    """P(click) of each slot of one list from the equations, slot by slot, in NumPy."""
    appeal, w_sum, w_max, x = (t[row].detach().numpy() for t in model.item_terms(batch))
    n = int(batch.mask[row].sum())
    out = []
    for k in range(n):
        above = x[:k]
        total = above.sum(0) if k else np.zeros(x.shape[1])
        largest = above.max(0) if k else np.zeros(x.shape[1])
        z = appeal[k] + w_sum[k] @ total + w_max[k] @ largest
        e = np.exp(model.log_examination(batch.positions[row, k]).item())
        out.append(e / (1 + np.exp(-z)))
    return np.array(out)


def test_click_probabilities_follow_the_equations() -> None:
    batch = random_list_batch([4, 3], 4, d_feature=3, d_pv=2, seed=1)
    model = randomized(ContextClickModel(3, 2, d_hidden=8))
    probabilities = model.click_probabilities(batch).detach().numpy()
    for row in range(2):
        n = int(batch.mask[row].sum())
        expected = brute_force_probabilities(model, batch, row)
        np.testing.assert_allclose(probabilities[row, :n], expected, rtol=1e-5)
        assert (probabilities[row, n:] == 0).all()


def test_nll_is_the_bernoulli_likelihood_of_the_shown_items() -> None:
    batch = random_list_batch([3, 2], 3, d_feature=2, d_pv=0, seed=2)
    model = randomized(ContextClickModel(2, 0, d_hidden=4), seed=3)
    p = model.click_probabilities(batch).detach()
    y = batch.labels
    terms = -(y * p.log() + (1 - y) * (1 - p).log())
    expected = terms[batch.mask].mean()
    assert model.nll(batch).item() == pytest.approx(expected.item(), rel=1e-5)


def test_nll_of_a_bf16_model_stays_finite_where_a_click_is_near_certain(monkeypatch) -> None:
    """In bf16, 1 - 1e-6 is 1: the likelihood is taken in fp32 (``--precision bf16``)."""
    batch = random_list_batch([3, 2], 3, d_feature=2, d_pv=0, seed=2)
    model = ContextClickModel(2, 0, d_hidden=4).bfloat16()
    near_certain = torch.full(batch.mask.shape, -1e-7, dtype=torch.bfloat16, requires_grad=True)
    monkeypatch.setattr(model, "log_click_probabilities", lambda inputs: near_certain)
    nll = model.nll(batch)
    nll.backward()
    assert torch.isfinite(nll) and torch.isfinite(near_certain.grad).all()


def test_in_display_order_moves_every_field_and_renumbers_ranks() -> None:
    batch = random_list_batch([3], 3, d_feature=2, d_pv=1)
    shown = in_display_order(batch, torch.tensor([[2, 0, 1]]))
    assert shown.item_ids[0].tolist() == batch.item_ids[0, [2, 0, 1]].tolist()
    assert torch.equal(shown.features[0], batch.features[0, [2, 0, 1]])
    assert shown.positions[0].tolist() == [0, 1, 2]


def generator(beam_width: int, seed: int = 0) -> GeneratorEvaluator:
    config = EvaluatorConfig(d_hidden=8, beam_width=beam_width)
    return randomized(ModelSpec.of("generator_evaluator", config, 3, 2).build(), seed)


@pytest.mark.parametrize("seed", range(5))
def test_generated_list_is_a_permutation_no_worse_than_greedy_or_initial(seed: int) -> None:
    batch = random_list_batch([3, 5, 5], 5, d_feature=3, d_pv=2, seed=seed)
    wide, greedy = generator(4, seed), generator(1, seed)
    order = wide.generate(batch)
    for row, n in enumerate([3, 5, 5]):
        assert sorted(order[row, :n].tolist()) == list(range(n))  # real items first
    evaluator = wide.evaluator

    def clicks(o: torch.Tensor) -> torch.Tensor:
        return evaluator.expected_clicks(in_display_order(batch, o))

    chosen = clicks(order)
    assert (chosen >= clicks(greedy.generate(batch)) - 1e-6).all()
    assert (chosen >= clicks(shown_order(batch)) - 1e-6).all()


def test_a_beam_of_six_finds_the_best_of_all_orders_of_three_items() -> None:
    """Six partial lists hold every two-item prefix of a three-item list: exhaustive."""
    batch = random_list_batch([3] * 8, 3, d_feature=3, d_pv=2, seed=7)
    model = generator(6, seed=7)
    chosen = model.evaluator.expected_clicks(in_display_order(batch, model.generate(batch)))
    every = torch.stack(
        [
            model.evaluator.expected_clicks(in_display_order(batch, torch.tensor(p).expand(8, 3)))
            for p in permutations(range(3))
        ],
        1,
    )
    torch.testing.assert_close(chosen, every.max(1).values)


def test_scores_sort_into_the_generated_order() -> None:
    batch = random_list_batch([4, 2], 4, d_feature=3, d_pv=2, seed=4)
    model = generator(2)
    scores = model(batch)
    assert torch.isinf(scores[1, 2:]).all()
    order = scores.argsort(dim=1, descending=True, stable=True)
    assert torch.equal(order[0], model.generate(batch)[0])


def test_loss_trains_the_evaluator_toward_the_clicks() -> None:
    batch = random_list_batch([5] * 64, 5, d_feature=3, d_pv=2, click="largest_first_feature")
    model = generator(1)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = model.loss(batch, None).item()
    for _ in range(100):
        optimizer.zero_grad()
        model.loss(batch, None).backward()
        optimizer.step()
    assert model.loss(batch, None).item() < 0.8 * before


@pytest.mark.parametrize("hold", [False, True])
def test_examination_is_learned_or_held_at_its_start(hold: bool) -> None:
    model = GeneratorEvaluator(EvaluatorConfig(d_hidden=8, hold_examination=hold), 4, 2)
    curve = 1 / np.arange(1, 129)
    model.take_examination(curve)
    start = model.evaluator.relative_examination(10)
    np.testing.assert_allclose(start, curve[:10], rtol=1e-5)
    batch = random_list_batch([6, 10], 10, d_feature=4, d_pv=2)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        model.loss(batch, None).backward()
        optimizer.step()
    moved = not np.allclose(model.evaluator.relative_examination(10), start)
    assert moved != hold
