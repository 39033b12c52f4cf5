"""List losses: edge cases over every loss at once, then each loss against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from prm.models.layers import masked_log_softmax, masked_mean
from prm.training.losses import LOSSES, Loss, approx_ndcg, list_mle, softmax_cross_entropy

ALL_LOSSES = pytest.mark.parametrize("loss", list(LOSSES.values()), ids=list(LOSSES))
MINUS_INF = float("-inf")


def loss_and_grad(
    loss: Loss, scores: list[list[float]], labels: list[list[float]], mask: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss value and d loss / d scores."""
    scores = torch.as_tensor(scores, dtype=torch.float32).requires_grad_()
    value = loss(
        scores,
        torch.as_tensor(labels, dtype=torch.float32),
        mask=torch.as_tensor(mask, dtype=torch.bool),
    )
    (grad,) = torch.autograd.grad(value, scores)
    return value.detach(), grad


@ALL_LOSSES
def test_an_all_masked_batch_gives_zero_and_zero_gradient(loss: Loss) -> None:
    value, grad = loss_and_grad(
        loss, [[MINUS_INF] * 3, [0.0, 1.0, 2.0]], [[0, 0, 0]] * 2, [[0] * 3] * 2
    )
    assert value == 0
    assert (grad == 0).all()


@ALL_LOSSES
def test_lists_without_a_positive_contribute_nothing(loss: Loss) -> None:
    scores = [[0.3, -1.0, 2.0, MINUS_INF], [1.0, 0.5, -0.5, 0.0]]
    labels = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    mask = [[1, 1, 1, 0], [1, 1, 1, 1]]
    value, grad = loss_and_grad(loss, scores, labels, mask)
    alone, alone_grad = loss_and_grad(loss, scores[:1], labels[:1], mask[:1])
    torch.testing.assert_close(value, alone)
    torch.testing.assert_close(grad[:1], alone_grad)
    assert (grad[1] == 0).all()


@ALL_LOSSES
def test_a_one_item_list_is_finite(loss: Loss) -> None:
    value, grad = loss_and_grad(loss, [[1.5, MINUS_INF]], [[1.0, 0.0]], [[1, 0]])
    assert torch.isfinite(value)
    assert torch.isfinite(grad).all()


@ALL_LOSSES
def test_ties_in_scores_and_labels_are_finite(loss: Loss) -> None:
    value, grad = loss_and_grad(
        loss, [[0.5] * 4, [0.5] * 4], [[1.0] * 4, [1, 1, 0, 0]], [[1] * 4] * 2
    )
    assert torch.isfinite(value)
    assert torch.isfinite(grad).all()


@ALL_LOSSES
@pytest.mark.parametrize("padding_score", [MINUS_INF, 1e30, 0.0, float("nan")])
def test_padded_slots_get_zero_gradient_and_change_nothing(
    loss: Loss, padding_score: float
) -> None:
    scores = [[0.3, padding_score, -1.0, 2.0, padding_score]]
    labels = [[1.0, 0.0, 0.0, 2.0, 0.0]]
    mask = [[1, 0, 1, 1, 0]]
    value, grad = loss_and_grad(loss, scores, labels, mask)
    real = [[0.3, -1.0, 2.0]], [[1.0, 0.0, 2.0]], [[1, 1, 1]]
    unpadded, unpadded_grad = loss_and_grad(loss, *real)
    torch.testing.assert_close(value, unpadded)
    torch.testing.assert_close(grad[:, [0, 2, 3]], unpadded_grad)
    assert (grad[:, [1, 4]] == 0).all()


@ALL_LOSSES
def test_gradients_are_finite_for_extreme_scores(loss: Loss) -> None:
    value, grad = loss_and_grad(loss, [[1e4, -1e4, 0.0, 3e4]], [[0.0, 1.0, 1.0, 0.0]], [[1] * 4])
    assert torch.isfinite(value)
    assert torch.isfinite(grad).all()


@ALL_LOSSES
def test_better_orders_have_lower_loss(loss: Loss) -> None:
    labels, mask = [[2.0, 1.0, 0.0]], [[1, 1, 1]]
    good, _ = loss_and_grad(loss, [[3.0, 2.0, 1.0]], labels, mask)
    bad, _ = loss_and_grad(loss, [[1.0, 2.0, 3.0]], labels, mask)
    assert good < bad


def test_softmax_cross_entropy_by_hand() -> None:
    """Two clicks of three items: y = (1/2, 0, 1/2); a second list with one click of two."""
    scores = torch.tensor([[1.0, 2.0, 3.0], [0.5, -0.5, MINUS_INF]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    log_z = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    first = -(0.5 * (1 - log_z) + 0.5 * (3 - log_z))
    second = -(-0.5 - math.log(math.exp(0.5) + math.exp(-0.5)))
    expected = torch.tensor((first + second) / 2)
    torch.testing.assert_close(softmax_cross_entropy(scores, labels, mask=mask), expected)


def test_list_mle_by_hand() -> None:
    """Labels (1, 0, 2) order the items 3, 1, 2; their scores are then 3, 1, 2."""
    scores = torch.tensor([[1.0, 2.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0, 2.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    e = math.exp
    expected = (math.log(e(3) + e(1) + e(2)) - 3) + (math.log(e(1) + e(2)) - 1) + 0
    torch.testing.assert_close(list_mle(scores, labels, mask=mask), torch.tensor(expected))


def test_list_mle_breaks_ties_by_slot_or_at_random() -> None:
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).expand(64, 4)
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).expand(64, 4)
    mask = torch.ones(64, 4, dtype=torch.bool)
    e = math.exp
    by_slot = (math.log(e(0) + e(1) + e(2) + e(3)) - 0) + (math.log(e(1) + e(2) + e(3)) - 1)
    by_slot += math.log(e(2) + e(3)) - 2
    torch.testing.assert_close(list_mle(scores, labels, mask=mask), torch.tensor(by_slot))

    def shuffled(seed: int) -> torch.Tensor:
        return list_mle(scores, labels, mask=mask, generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(shuffled(0), shuffled(0))
    assert shuffled(0) != shuffled(1)  # 64 lists, 8 tie orders: the draws differ
    assert shuffled(0) != torch.tensor(by_slot)


def test_approx_ndcg_tends_to_minus_ndcg_at_low_temperature() -> None:
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0, MINUS_INF]])
    labels = torch.tensor([[0.0, 2.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    # Ranks by score: items 0, 2, 1, 3 -> gains 0, 1, 3, 0 at ranks 1..4.
    dcg = 1 / math.log2(3) + 3 / math.log2(4)
    ideal = 3 / math.log2(2) + 1 / math.log2(3)
    value = approx_ndcg(scores, labels, mask=mask, temperature=1e-3)
    torch.testing.assert_close(value, torch.tensor(-dcg / ideal))
    smooth = approx_ndcg(scores, labels, mask=mask, temperature=1.0)
    assert smooth != value


def test_masked_mean_ignores_masked_entries_even_nan() -> None:
    values = torch.tensor([1.0, float("nan"), 3.0, MINUS_INF])
    mask = torch.tensor([True, False, True, False])
    torch.testing.assert_close(masked_mean(values, mask), torch.tensor(2.0))
    assert masked_mean(values, torch.zeros(4, dtype=torch.bool)) == 0


def test_masked_log_softmax_runs_over_real_items_only() -> None:
    scores = torch.tensor([[1.0, MINUS_INF, 2.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]], dtype=torch.bool)
    out = masked_log_softmax(scores, mask)
    torch.testing.assert_close(out[0, [0, 2]], torch.tensor([1.0, 2.0]).log_softmax(-1))
    assert (out[0, 1] == 0) and (out[1] == 0).all()
