"""PRM, the Personalized Re-ranking Model of Pei et al. (RecSys 2019), Section 4.

The paper's equations and the code that computes them, for one list of ``L`` items:

    Input layer     E' = [X; PV] + PE            InputLayer: concat, then add PE[position]
                    E  = E' W^E + b^E            InputLayer.project
    Encoding layer  S' = LN(S + Dropout(MH(S)))  layers.EncoderBlock, N_x = n_blocks times
                    F  = LN(S' + Dropout(FFN(S')))
    Output layer    Score = softmax(F W^F + b^F) OutputLayer gives the logits F W^F + b^F;
                                                 the softmax is in list_softmax and the loss
    Loss            L = -sum_i y_i log Score_i   training.losses.softmax_cross_entropy

PE is a learnable table indexed by each item's rank in the initial list. PRM-BASE is
``use_pv=False``: the personalized vectors PV are dropped from the input. With
``topic_columns`` > 0 (the first columns of X are a one-hot topic, as `prm`'s loaders write
them) X also gets one list-level feature, log(1 + the number of items of the list with the
item's topic): the list's composition, which attention could count but learns slowly
(docs/simulator.md, "What PV carries"). It is not personal, so PRM-BASE gets it too.

Shapes: ``B`` lists, ``L`` slots, ``d_in = d_feature + d_pv`` (or ``d_feature`` without PV),
``d`` = ``d_model``. Padded slots (``mask`` False) are never attended to and score -inf.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from prm.config import PRMConfig
from prm.data.batch import ListInputs
from prm.models.base import Reranker
from prm.models.layers import EncoderBlock, PositionBias, topic_counts


class InputLayer(nn.Module):
    """E = ([X; PV] + PE) W^E + b^E: item features, personalized vector and initial rank."""

    def __init__(self, config: PRMConfig, d_feature: int, d_pv: int) -> None:
        super().__init__()
        self.use_pv = config.use_pv
        self.use_pe = config.use_pe
        self.max_positions = config.max_positions
        self.topic_columns = config.topic_columns
        d_in = d_feature + (d_pv if config.use_pv else 0) + (config.topic_columns > 0)
        if self.use_pe:
            self.position = nn.Embedding(config.max_positions, d_in)  # PE
            nn.init.normal_(self.position.weight, std=0.02)  # small next to the features
        self.project = nn.Linear(d_in, config.d_model)  # W^E, b^E

    def forward(self, features: Tensor, pv: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """(B, L, d_feature), (B, L, d_pv), (B, L) int64, (B, L) bool -> (B, L, d)."""
        parts = [features, pv] if self.use_pv else [features]
        if self.topic_columns:
            parts.append(topic_counts(features[..., : self.topic_columns], mask))
        x = torch.cat(parts, dim=-1)  # (B, L, d_in)
        if self.use_pe:
            # Padded slots may hold any position; look up row 0 for them instead.
            positions = torch.where(mask, positions, torch.zeros_like(positions))  # (B, L)
            x = x + self.position(positions)  # (B, L, d_in)
        return self.project(x)  # (B, L, d)


class OutputLayer(nn.Module):
    """Logits F W^F + b^F, one per item; the paper's softmax over the list comes later."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, 1)  # W^F, b^F

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, d) -> (B, L)."""
        return self.linear(x).squeeze(-1)  # (B, L)


def list_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """(B, L) probabilities softmax(scores) over the real items of each list, 0 at padding.

    Padded slots get the lowest finite logit rather than -inf, so a list with no real item
    gives zeros instead of 0/0 = NaN.
    """
    logits = torch.where(mask, scores, torch.finfo(scores.dtype).min)  # (B, L)
    return torch.where(mask, logits.softmax(dim=-1), 0.0)  # (B, L)


class PRM(Reranker):
    """Input layer, ``n_blocks`` encoder blocks, output layer: one score per item of each list."""

    def __init__(self, config: PRMConfig, d_feature: int, d_pv: int) -> None:
        super().__init__()
        self.config = config
        self.d_feature = d_feature
        self.d_pv = d_pv
        self.input = InputLayer(config, d_feature, d_pv)
        self.blocks = nn.ModuleList(
            EncoderBlock(config.d_model, config.n_heads, config.d_ff, config.dropout)
            for _ in range(config.n_blocks)
        )
        self.output = OutputLayer(config.d_model)
        # Trained with the clicks, dropped when ranking (layers.PositionBias).
        self.position_bias = (
            PositionBias(config.max_positions) if config.position_bias_tower else None
        )

    def take_examination(self, examination: np.ndarray) -> None:
        """Hold the tower at ``examination`` when it is configured as fixed."""
        if self.position_bias is not None and self.config.position_bias != "learned":
            self.position_bias.fix(examination)

    def click_logits(self, inputs: ListInputs) -> Tensor:
        """(B, L) logits of the click softmax: ranking scores plus the position-bias tower."""
        scores = self(inputs)
        if self.position_bias is None:
            return scores
        positions = torch.where(inputs.mask, inputs.positions, torch.zeros_like(inputs.positions))
        return scores + self.position_bias(positions)  # (B, L)

    def forward(self, inputs: ListInputs) -> Tensor:
        """(B, L) score logits, -inf at padded slots so sorting and softmax skip them."""
        scores, _ = self._encode(inputs, need_weights=False)
        return scores

    def forward_with_attention(self, inputs: ListInputs) -> tuple[Tensor, list[Tensor]]:
        """Scores as ``forward``, and each block's (B, n_heads, L, L) attention weights."""
        scores, weights = self._encode(inputs, need_weights=True)
        return scores, weights

    @torch.no_grad()
    def rerank(self, inputs: ListInputs) -> Tensor:
        """(B, L) int64: slot indices by score, highest first; padded slots last, in slot order."""
        return torch.argsort(self(inputs), dim=-1, descending=True, stable=True)

    def _encode(self, inputs: ListInputs, *, need_weights: bool) -> tuple[Tensor, list[Tensor]]:
        self._check_inputs(inputs)
        mask = inputs.mask
        x = self.input(inputs.features, inputs.pv, inputs.positions, mask)  # (B, L, d)
        weights = []
        for block in self.blocks:
            x, block_weights = block(x, mask, need_weights=need_weights)  # (B, L, d)
            if block_weights is not None:
                weights.append(block_weights)
        scores = self.output(x)  # (B, L)
        return scores.masked_fill(~mask, float("-inf")), weights

    def _check_inputs(self, inputs: ListInputs) -> None:
        """Clear errors for inputs that would otherwise fail deep inside (or silently)."""
        if inputs.features.shape[-1] != self.d_feature:
            raise ValueError(
                f"features have d={inputs.features.shape[-1]}, PRM expects {self.d_feature}"
            )
        if self.config.use_pv and inputs.pv.shape[-1] != self.d_pv:
            raise ValueError(f"pv has d={inputs.pv.shape[-1]}, PRM expects d_pv={self.d_pv}")
        # The range check reads tensor values, which a traced or exported graph cannot branch on;
        # callers of an exported model must keep positions in range themselves.
        uses_positions = self.config.use_pe or self.config.position_bias_tower
        if not uses_positions or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        real = inputs.positions[inputs.mask]
        if real.numel() and (real.min() < 0 or real.max() >= self.config.max_positions):
            raise ValueError(
                f"initial positions must lie in [0, {self.config.max_positions}) "
                f"(PRMConfig.max_positions); got [{int(real.min())}, {int(real.max())}]"
            )
