"""The two computations a request needs, as modules over plain tensors.

Both the ONNX export and the PyTorch backend run these same modules, so the two backends
compute one thing and a parity test between them means something.

Shapes: ``B`` lists of ``L`` candidate slots, a history of ``H`` item ids per user.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prm.data.batch import ListBatch
from prm.pretrain.ctr import CTRModel

SCORE_INPUTS = ("features", "pv", "positions", "mask")
PV_INPUTS = ("profile", "history", "history_mask", "item_ids", "item_features")


def list_batch(features: Tensor, pv: Tensor, positions: Tensor, mask: Tensor) -> ListBatch:
    """The ListBatch a re-ranker scores; ids and labels play no part in scoring, so zeros."""
    unused = torch.zeros_like(positions)  # (B, L)
    return ListBatch(
        features=features,
        pv=pv,
        mask=mask,
        labels=unused.float(),
        positions=positions,
        user_ids=unused[:, 0],
        list_ids=unused[:, 0],
        item_ids=unused,
    )


class ScoreGraph(nn.Module):
    """A re-ranker with tensor inputs instead of a ListBatch: (features, pv, positions, mask)."""

    def __init__(self, reranker: nn.Module) -> None:
        super().__init__()
        self.reranker = reranker

    def forward(self, features: Tensor, pv: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """(B, L, d_feature), (B, L, d_pv), (B, L) int64, (B, L) bool -> (B, L) scores."""
        return self.reranker(list_batch(features, pv, positions, mask))  # -inf at padding


class PVGraph(nn.Module):
    """PV of every candidate from the raw user inputs, so users unknown to the tables work."""

    def __init__(self, ctr: CTRModel) -> None:
        super().__init__()
        self.ctr = ctr

    def forward(
        self,
        profile: Tensor,
        history: Tensor,
        history_mask: Tensor,
        item_ids: Tensor,
        item_features: Tensor,
    ) -> Tensor:
        """(B, d_profile), (B, H), (B, H) bool, (B, L), (B, L, d_item) -> (B, L, d_pv)."""
        batch, length = item_ids.shape

        def per_item(user_field: Tensor) -> Tensor:  # (B, ...) -> (B * L, ...)
            expanded = user_field.unsqueeze(1).expand(batch, length, *user_field.shape[1:])
            return expanded.flatten(0, 1)

        pv = self.ctr.hidden_raw(
            per_item(profile),  # (B * L, d_profile)
            per_item(history),  # (B * L, H)
            per_item(history_mask),  # (B * L, H)
            item_ids.flatten(),  # (B * L,)
            item_features.flatten(0, 1),  # (B * L, d_item)
        )  # (B * L, d_pv)
        return pv.unflatten(0, (batch, length))  # (B, L, d_pv)
