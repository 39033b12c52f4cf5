"""The evaluator: a context-aware click model that predicts the clicks of any ordering.

PRM scores a set; what a shown list earns depends on the order, because each item's click
chance depends on the items shown above it (a repeated topic bores, a complementary one lifts)
and on how far down it sits. The evaluator models exactly that, for a list in display order:

    P(click at rank k) = e_k · σ(z_k)
    z_k = a(r_k) + g(r_k) · Σ_d a_d x_kd S_kd + x_kᵀ B M_k
    S_k = Σ_{j<k} x_j,  M_k = max_{j<k} x_j,  r_k = MLP([x_k ; PV_k])

- ``e_k`` in (0, 1], the **examination** of rank k, learned beside the rest (PAL, Guo et al.
  2019, in product form: a click needs the rank to be seen and the item to attract), stored
  as log e_k so that it learns as fast as the rest;
- ``a(r_k)``, the item's own appeal for this user (features X and the personalized vector PV,
  and with ``topic_columns`` how many items of the whole list share its topic: retrieval
  that knows the user's taste leaves it in the list's composition);
- the **prefix context**: the sum S_k and the max M_k of the features of the items above,
  read against the item's own features. The first term is a similarity with the items above,
  feature by feature (weights a_d), scaled per item and user by g(r_k) >= 0: with a one-hot
  category among the features it counts the same-category items above (saturation, stronger
  for some users). The second, a full bilinear form on the max, can say which categories
  shown above lift or hurt this one. Neither can count the items above as such (B's rows are
  centred, and a one-hot category sums to 1 per item), so the effect of the rank itself is
  left to the examination.

Nothing in it is specific to the simulator: it reads item features, PV and the prefix, so it
fits any click log. Trained on logged lists (slot order = shown order, ``positions`` = shown
rank) with the Bernoulli log-likelihood of every shown item. The confound between logged rank
and appeal (the ranker put what it liked on top) is what the examination term must not absorb;
a randomized exploration bucket, where rank is independent of appeal, can be added to the
training lists to identify it (``prm.pipeline``, docs/simulator.md "The evaluator").

Shapes: ``B`` lists, ``L`` slots, ``d_x`` item features, ``h`` = ``d_hidden``.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prm.data.batch import ListBatch, ListInputs, slots_by_rank
from prm.models.layers import scan_steps, topic_counts

# Adam moves each weight by about the learning rate per step, and one rank's examination gets
# one weight; scaled by this factor it moves as fast as the appeal's many weights together
# (measured: unscaled, it had moved a third of the way to the truth after five epochs).
InputsT = TypeVar("InputsT", bound=ListInputs)

EXAMINATION_STEP = 10.0


def prefix_max(x: Tensor) -> Tensor:
    """(B, L, d) -> the running max over dim 1 (inclusive), (B, L, d).

    ``cummax`` has no ONNX operator, so an export runs it as a scan over the list instead.
    """
    if not torch.compiler.is_exporting():
        return x.cummax(dim=1).values

    def step(highest: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        highest = torch.maximum(highest, x_t)  # (B, d)
        return highest, highest.clone()

    _, running = scan_steps(step, x[:, 0].clone(), x.transpose(0, 1))  # (L, B, d)
    return running.transpose(0, 1)  # (B, L, d)


def exclusive_prefix(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(B, L, d) features -> the sum and the max over the real slots strictly above each slot,
    (B, L, d) each; zeros where nothing is above."""
    x = torch.where(mask[..., None], x, 0.0)
    total = x.cumsum(dim=1) - x  # (B, L, d)
    running_max = prefix_max(torch.where(mask[..., None], x, torch.finfo(x.dtype).min))
    # Shifted down one slot; cut from a (B, L + 1, d) so that export sees no length L - 1.
    above = torch.cat([torch.zeros_like(x[:, :1]), running_max], dim=1)  # (B, L + 1, d)
    shifted = above[:, : x.shape[1]]  # (B, L, d)
    return total, torch.where(shifted == torch.finfo(x.dtype).min, 0.0, shifted)


class ContextClickModel(nn.Module):
    """Click probabilities of a list in display order: examination times attraction given the
    items above (module docstring)."""

    def __init__(
        self,
        d_feature: int,
        d_pv: int,
        *,
        d_hidden: int = 64,
        use_pv: bool = True,
        max_positions: int = 128,
        topic_columns: int = 0,
    ) -> None:
        super().__init__()
        self.use_pv = use_pv
        self.topic_columns = topic_columns
        d_in = d_feature + (d_pv if use_pv else 0) + (topic_columns > 0)
        self.represent = nn.Sequential(
            nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_hidden), nn.ReLU()
        )
        self.appeal = nn.Linear(d_hidden, 1)
        self.context_scale = nn.Linear(d_hidden, 1)  # g, through a softplus
        self.similarity = nn.Parameter(torch.zeros(d_feature))  # a_d
        self.pair_max = nn.Parameter(torch.zeros(d_feature, d_feature))  # B
        # Start with every rank seen (e = 0.95) and items rarely clicked (σ(z) ≈ 0.08): the
        # product has a flat region where σ(z) saturates at 1 and the examination alone fits
        # the clicks, with no gradient left for the appeal; clicks are rare, so the fit should
        # approach from below.
        nn.init.constant_(self.appeal.bias, -2.5)
        # log e_k = EXAMINATION_STEP * weight, clamped to <= 0 (see EXAMINATION_STEP)
        self.examination = nn.Embedding(max_positions, 1)
        nn.init.constant_(self.examination.weight, math.log(0.95) / EXAMINATION_STEP)

    @torch.no_grad()
    def start_examination_at(self, examination: Tensor | np.ndarray) -> None:
        """Start the examination per rank at a measured relative curve (e.g. the exploration
        bucket's click-rate ratios, prm.data.examination), the top rank seen with probability
        0.95. Still learned."""
        values = torch.as_tensor(examination, dtype=torch.float32)
        values = values[: self.examination.num_embeddings].clamp(1e-4, 1.0)
        self.examination.weight[: len(values), 0] = torch.log(0.95 * values) / EXAMINATION_STEP

    def item_terms(self, inputs: ListInputs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """What does not depend on the order: appeal (B, L), the weights on the prefix sum and
        on the prefix max (B, L, d_x) each, and the masked features (B, L, d_x). The context
        term of a slot is then ``w_sum · S + w_max · M``."""
        features = torch.where(inputs.mask[..., None], inputs.features, 0.0)
        parts = [features, inputs.pv] if self.use_pv else [features]
        if self.topic_columns:  # the list's composition, as PRM's input layer has it
            parts.append(topic_counts(features[..., : self.topic_columns], inputs.mask))
        x = torch.cat(parts, dim=-1)
        r = self.represent(torch.where(inputs.mask[..., None], x, 0.0))  # (B, L, h)
        scale = F.softplus(self.context_scale(r))  # g, (B, L, 1)
        w_sum = scale * features * self.similarity  # g a_d x_kd, (B, L, d_x)
        # Rows of B centred: a shift common to every feature above would count the distinct
        # categories above, a proxy of the rank.
        pair_max = self.pair_max - self.pair_max.mean(dim=1, keepdim=True)
        w_max = features @ pair_max  # x_kᵀ B, (B, L, d_x)
        return self.appeal(r).squeeze(-1), w_sum, w_max, features

    @torch.no_grad()
    def relative_examination(self, length: int) -> np.ndarray:
        """(length,) e_k / e_1 for ranks 1..length: the position bias it measured, in the
        form of prm.data.examination (a PAL tower can be fixed at it)."""
        log_e = self.log_examination(torch.arange(length))
        return (log_e - log_e[0]).exp().numpy()

    def attraction_logits(self, inputs: ListInputs) -> Tensor:
        """(B, L) z_k of each slot, the list shown in slot order."""
        appeal, w_sum, w_max, features = self.item_terms(inputs)
        prefix_sum, prefix_max = exclusive_prefix(features, inputs.mask)
        return appeal + (w_sum * prefix_sum).sum(-1) + (w_max * prefix_max).sum(-1)

    def log_examination(self, positions: Tensor) -> Tensor:
        """log e_k of 0-based ranks, any shape -> the same shape."""
        ranks = positions.clamp(0, self.examination.num_embeddings - 1)
        return (EXAMINATION_STEP * self.examination(ranks).squeeze(-1)).clamp(max=0.0)

    def log_click_probabilities(self, inputs: ListInputs) -> Tensor:
        """(B, L) log P(click) of each slot in slot order, shown at ``inputs.positions``."""
        positions = torch.where(inputs.mask, inputs.positions, torch.zeros_like(inputs.positions))
        return self.log_examination(positions) + F.logsigmoid(self.attraction_logits(inputs))

    def click_probabilities(self, inputs: ListInputs) -> Tensor:
        """(B, L) P(click) of each slot, 0 at padding."""
        return torch.where(inputs.mask, self.log_click_probabilities(inputs).exp(), 0.0)

    def expected_clicks(self, inputs: ListInputs) -> Tensor:
        """(B,) the predicted clicks of each list shown in slot order."""
        return self.click_probabilities(inputs).sum(-1)

    def nll(self, batch: ListBatch) -> Tensor:
        """Mean Bernoulli negative log-likelihood of the shown items' clicks, each list read in
        the order of its ``positions`` (the logged ranks), whatever slots hold its items."""
        batch = in_display_order(batch, shown_order(batch))
        # In fp32 when the model runs in bf16, where 1 - 1e-6 rounds to 1 and log1p(-1) = -inf.
        log_p = self.log_click_probabilities(batch).float()
        log_not = torch.log1p(-log_p.exp().clamp(max=1 - 1e-6))
        clicked = batch.labels > 0
        per_slot = -torch.where(clicked & batch.mask, log_p, log_not)
        # A batch of empty lists has nothing to fit: 0, not the NaN of an empty mean.
        return (per_slot * batch.mask).sum() / batch.mask.sum().clamp(min=1)


def shown_order(inputs: ListInputs) -> Tensor:
    """(B, L) slot indices in the order of ``positions`` (the rank each was shown at),
    padding last."""
    return slots_by_rank(inputs.positions, inputs.mask)


def in_display_order(inputs: InputsT, order: Tensor) -> InputsT:
    """The lists with their slots in ``order`` ((B, L) slot indices, top first) and each
    slot's position its rank there: how the evaluator sees a list shown in that order."""

    def gather(values: Tensor) -> Tensor:
        index = order.reshape(order.shape + (1,) * (values.dim() - 2)).expand_as(values)
        return values.gather(1, index)

    per_slot = {
        f.name: gather(getattr(inputs, f.name))
        for f in fields(inputs)
        if f.name != "positions" and getattr(inputs, f.name).dim() >= 2
    }
    ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return replace(inputs, **per_slot, positions=ranks)
