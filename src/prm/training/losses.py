"""List losses as pure functions ``(scores, labels, *, mask) -> scalar``.

``scores`` and ``labels`` are (B, L) float, ``mask`` is (B, L) bool, True at real items. Scores
at padded slots may be anything, -inf included (PRM puts -inf there): every loss reads them
only through ``torch.where``, so they get exactly zero gradient and never meet a 0 * inf.

Each loss is averaged over the lists with at least one positive label at a real item; a list
without one says nothing about which order is better and contributes nothing. A batch with no
such list gives 0, not NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from prm.models.layers import masked_log_softmax, masked_mean


def _has_positive(labels: Tensor, mask: Tensor) -> Tensor:
    """(B,) bool: lists with a positive label at a real item, the ones a loss averages over."""
    return ((labels > 0) & mask).any(dim=-1)


def softmax_cross_entropy(scores: Tensor, labels: Tensor, *, mask: Tensor) -> Tensor:
    """PRM's loss: L = -sum_i y_i log softmax(s)_i, with y normalised to sum to 1 per list.

    The softmax runs over the real items only. Shapes: (B, L), (B, L), (B, L) -> ().
    """
    targets = torch.where(mask, labels, 0.0)  # (B, L)
    targets = targets / targets.sum(dim=-1, keepdim=True).clamp(min=1e-12)  # (B, L)
    per_list = -(targets * masked_log_softmax(scores, mask)).sum(dim=-1)  # (B,)
    return masked_mean(per_list, _has_positive(labels, mask))


def list_mle(
    scores: Tensor, labels: Tensor, *, mask: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """ListMLE (Xia et al., 2008): the negative log Plackett-Luce likelihood of the label order.

    With pi the real items sorted by label, highest first, and n their number,
        L = sum_{k=1..n} ( log sum_{j=k..n} exp(s_pi(j)) - s_pi(k) ).
    Equal labels keep slot order, or a random order drawn from ``generator`` when given.
    Shapes: (B, L), (B, L), (B, L) -> ().
    """
    slots = torch.arange(labels.shape[-1], device=labels.device).expand_as(labels)  # (B, L)
    if generator is not None:
        noise = torch.rand(labels.shape, generator=generator, device=generator.device)
        slots = noise.to(labels.device).argsort(dim=-1)  # (B, L): random slot order
    # Stable sort of the (possibly shuffled) slots by label; padded slots go last.
    keys = torch.where(mask, labels, float("-inf")).gather(-1, slots)  # (B, L)
    order = slots.gather(-1, keys.argsort(dim=-1, descending=True, stable=True))  # (B, L)
    real = mask.gather(-1, order)  # (B, L)
    lowest = torch.finfo(scores.dtype).min
    sorted_scores = torch.where(real, scores.gather(-1, order), lowest)  # (B, L)
    # log sum_{j >= k} exp(s_pi(j)): a cumulative logsumexp from the end of the list.
    tail = sorted_scores.flip(-1).logcumsumexp(dim=-1).flip(-1)  # (B, L)
    per_list = torch.where(real, tail - sorted_scores, 0.0).sum(dim=-1)  # (B,)
    return masked_mean(per_list, _has_positive(labels, mask))


def approx_ndcg(
    scores: Tensor, labels: Tensor, *, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Negative ApproxNDCG (Qin et al., 2010): NDCG with each rank replaced by a smooth one,

        rank_i ~ 1 + sum_{j != i} sigmoid((s_j - s_i) / temperature),
        ApproxNDCG = (1 / IDCG) sum_i (2^y_i - 1) / log2(1 + rank_i).

    A lower temperature gives ranks closer to the true ones and steeper gradients.
    Shapes: (B, L), (B, L), (B, L) -> ().
    """
    finite = torch.where(mask, scores, 0.0)  # (B, L)
    diffs = (finite[:, None, :] - finite[:, :, None]) / temperature  # (B, L, L): [b, i, j]
    others = mask[:, None, :] & ~torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    ranks = 1 + torch.where(others, torch.sigmoid(diffs), 0.0).sum(dim=-1)  # (B, L)
    gains = torch.where(mask, 2.0**labels - 1, 0.0)  # (B, L)
    dcg = (gains / torch.log2(1 + ranks)).sum(dim=-1)  # (B,)
    ideal_gains = gains.sort(dim=-1, descending=True).values  # (B, L)
    ideal_ranks = torch.arange(1, labels.shape[-1] + 1, dtype=scores.dtype, device=scores.device)
    ideal = (ideal_gains / torch.log2(1 + ideal_ranks)).sum(dim=-1)  # (B,)
    return masked_mean(-dcg / ideal.clamp(min=1e-12), _has_positive(labels, mask))


Loss = Callable[..., Tensor]

LOSSES: dict[str, Loss] = {
    "softmax_ce": softmax_cross_entropy,
    "list_mle": list_mle,
    "approx_ndcg": approx_ndcg,
}
