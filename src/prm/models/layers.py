"""The encoding layer's parts (multi-head self-attention, feed-forward network, encoder block)
and the position-bias tower that PRM and the CTR model share in training.

Shapes: ``B`` lists, ``L`` slots per list, ``d`` = ``d_model``, ``h`` heads of ``d_k = d / h``.
``mask`` is (B, L) bool, True at real items; padded items are never attended to.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` (covering its leading dims) is True: over everything,
    or along ``dim``; 0 where the mask is True nowhere, never NaN. Entries outside the mask are
    dropped with ``torch.where``, so a NaN or inf there is ignored."""
    mask = mask.reshape(mask.shape + (1,) * (values.dim() - mask.dim()))
    kept = torch.where(mask, values, torch.zeros_like(values))
    if dim is None:
        return kept.sum() / mask.sum().clamp(min=1)
    return kept.sum(dim) / mask.sum(dim).clamp(min=1)


def masked_log_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """(B, L) log softmax over the real items of each list; 0 (not -inf) at padded slots.

    Padded slots enter the softmax at the lowest finite logit, so they weigh nothing and a list
    with no real item stays finite; returning 0 there keeps ``labels * log_probs`` finite.
    """
    logits = torch.where(mask, scores, torch.finfo(scores.dtype).min)  # (B, L)
    return torch.where(mask, logits.log_softmax(dim=-1), 0.0)  # (B, L)


def mlp(
    d_in: int, hidden: tuple[int, ...], d_out: int | None = None, dropout: float | None = None
) -> nn.Sequential:
    """Linear -> ReLU (-> Dropout, when ``dropout`` is given) for each hidden width, then a
    linear output layer to ``d_out`` units when given."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(d_in, width), nn.ReLU()]
        if dropout is not None:
            layers.append(nn.Dropout(dropout))
        d_in = width
    if d_out is not None:
        layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


def scan_steps(step: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any) -> tuple[Any, Any]:
    """Run ``carry, y_t = step(carry, x_t)`` over dim 0 of every tensor in ``xs`` (a tensor or a
    tuple of them); returns the final carry and the y_t stacked along a new dim 0.

    Eager PyTorch runs a Python loop. Under ``torch.export`` a loop would be unrolled for the
    example's length, so torch's ``scan`` is used instead: ONNX writes it as one ``Scan`` node,
    and the exported graph takes lists of any length. ``step`` must not return its inputs
    unchanged (``scan`` rejects aliased outputs; a ``torch.where`` is a new tensor).
    """
    if torch.compiler.is_exporting():
        from torch._higher_order_ops.scan import scan

        with torch.no_grad():  # an exported graph only infers; scan's autograd is a prototype
            return scan(step, carry, xs)
    length = (xs[0] if isinstance(xs, tuple) else xs).shape[0]
    ys = []
    for t in range(length):
        x_t = tuple(x[t] for x in xs) if isinstance(xs, tuple) else xs[t]
        carry, y = step(carry, x_t)
        ys.append(y)
    if isinstance(ys[0], tuple):
        return carry, tuple(torch.stack(parts) for parts in zip(*ys, strict=True))
    return carry, torch.stack(ys)


def attendable_keys(mask: Tensor) -> Tensor:
    """(B, L) bool: the keys each query of a list may attend to.

    Real items only, except in a list with no real item: there every key is allowed. Softmax over
    an empty key set is 0/0 = NaN, which would spread through LayerNorm and into the gradients
    even though every output of such a list is masked later; attending to garbage is harmless.
    """
    return mask | ~mask.any(dim=-1, keepdim=True)


class Dropout(nn.Module):
    """``nn.Dropout``, except on bf16 activations (``--precision bf16``, the speed path).

    There the keep-masks come from 15-bit random lanes, four to each 64-bit draw: a quarter of
    the draws ``bernoulli_`` makes, which took a fifth of a CPU training step. The kept units
    are multiplied by 1 / (1 - p) held in bf16; so that this factor is exact (the output's
    expectation equal to the input), the drop rate moves to the nearest one whose factor bf16
    holds: 0.0986 for p = 0.1. fp32 keeps ``nn.Dropout``'s draws, so fp32 runs repeat results
    made before.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        if p >= 1:  # every unit dropped
            self.bf16_scale, self.bf16_threshold = 0.0, 32768
        else:
            # The kept units' factor, a bf16 number; lanes below the threshold are dropped, so
            # units are kept with probability 1 / factor, in steps of 1/32768.
            self.bf16_scale = float(torch.tensor(1 / (1 - p), dtype=torch.bfloat16))
            self.bf16_threshold = 32768 - round(32768 / self.bf16_scale)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.dtype != torch.bfloat16:
            return F.dropout(x, self.p, self.training)
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_()
        lanes = words.view(torch.int16)[: x.numel()].view(x.shape) & 0x7FFF  # uniform, 15 bits
        keep = lanes >= self.bf16_threshold
        return x * (keep.to(x.dtype) * self.bf16_scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MultiHeadSelfAttention(nn.Module):
    """MH(E) = Concat(head_1, ..., head_h) W^O with head_i = softmax(Q_i K_i^T / sqrt(d_k)) V_i.

    The fast path is PyTorch's fused ``scaled_dot_product_attention``; the explicit path computes
    the same weights by hand so they can be returned for plots. No dropout on the weights, so
    both paths agree in training mode too (the encoder block drops the output instead). bf16 on
    a CPU takes the explicit path, with the softmax in fp32: the CPU's fused bf16 kernel took
    6 times as long as it at L = 30 (benchmarks/train_vs_allrank.py --kernels).
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)  # W^Q, W^K, W^V of all heads at once
        self.out = nn.Linear(d_model, d_model)  # W^O

    def forward(
        self, x: Tensor, mask: Tensor, *, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """(B, L, d) outputs, and (B, h, L, L) attention weights if ``need_weights``."""
        batch, length, d_model = x.shape
        d_k = d_model // self.n_heads
        q, k, v = self.qkv(x).split(d_model, dim=-1)  # 3 x (B, L, d)
        q = q.view(batch, length, self.n_heads, d_k).transpose(1, 2)  # (B, h, L, d_k)
        k = k.view(batch, length, self.n_heads, d_k).transpose(1, 2)  # (B, h, L, d_k)
        v = v.view(batch, length, self.n_heads, d_k).transpose(1, 2)  # (B, h, L, d_k)
        keys = attendable_keys(mask)[:, None, None, :]  # (B, 1, 1, L)

        if need_weights or (x.dtype == torch.bfloat16 and x.device.type == "cpu"):
            logits = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (B, h, L, L)
            logits = logits.masked_fill(~keys, float("-inf"))
            weights = logits.softmax(dim=-1, dtype=torch.float32).to(v.dtype)  # (B, h, L, L)
            heads = weights @ v  # (B, h, L, d_k)
        else:
            weights = None
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)  # (B, h, L, d_k)

        heads = heads.transpose(1, 2).reshape(batch, length, d_model)  # (B, L, d)
        return self.out(heads), (weights if need_weights else None)


class FeedForward(nn.Module):
    """FFN(x) = ReLU(x W_1 + b_1) W_2 + b_2, applied to each item on its own."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.relu(self.up(x)))


class EncoderBlock(nn.Module):
    """One encoding block, post-norm as in the paper and Vaswani et al.:

    S' = LayerNorm(S + Dropout(MH(S)))
    F  = LayerNorm(S' + Dropout(FFN(S')))
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.attention = MultiHeadSelfAttention(d_model, n_heads)
        self.norm_attention = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def forward(
        self, x: Tensor, mask: Tensor, *, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """(B, L, d) -> (B, L, d), plus the (B, h, L, L) attention weights if ``need_weights``."""
        attended, weights = self.attention(x, mask, need_weights=need_weights)
        x = self.norm_attention(x + self.dropout(attended))
        x = self.norm_ffn(x + self.dropout(self.ffn(x)))
        return x, weights


class PositionBias(nn.Module):
    """A click-logit offset per shown rank: the position-bias tower of PAL (Guo et al., RecSys
    2019), trained beside a model on logged clicks and dropped when ranking.

    Logged clicks mix "the user likes the item" with "the item was shown high"; the tower takes
    the second so the model learns the first. It starts at zero (no bias); ``fix`` holds it at
    an examination curve measured elsewhere, e.g. on randomized lists (prm.data.examination).
    """

    def __init__(self, max_positions: int) -> None:
        super().__init__()
        self.offset = nn.Embedding(max_positions, 1)
        nn.init.zeros_(self.offset.weight)

    @torch.no_grad()
    def fix(self, examination: Tensor | np.ndarray) -> None:
        """Hold the offsets at log(examination) per rank instead of learning them."""
        values = torch.log(torch.as_tensor(examination, dtype=torch.float32))
        values = values[: len(self.offset.weight)]
        self.offset.weight[: len(values), 0] = values
        self.offset.weight.requires_grad_(False)

    def forward(self, positions: Tensor) -> Tensor:
        """Offsets of the given 0-based ranks, any shape -> the same shape."""
        return self.offset(positions).squeeze(-1)


def topic_counts(topics: Tensor, mask: Tensor) -> Tensor:
    """(B, L, T) one-hot topics -> (B, L, 1) log(1 + items of the list with the same topic)."""
    present = torch.where(mask[..., None], topics, 0.0)  # (B, L, T)
    per_topic = present.sum(dim=1, keepdim=True)  # (B, 1, T)
    return torch.log1p((present * per_topic).sum(-1, keepdim=True))  # (B, L, 1)
