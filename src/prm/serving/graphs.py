"""The two computations a request needs, as modules over plain tensors.

Both the ONNX export and the PyTorch backend run these same modules, so the two backends
compute one thing and a parity test between them means something.

Shapes: ``B`` lists of ``L`` candidate slots, a history of ``H`` item ids per user.
"""

from __future__ import annotations

from torch import Tensor, nn

from prm.data.batch import ListInputs
from prm.pretrain.ctr import CTRModel

SCORE_INPUTS = ("features", "pv", "positions", "mask")
PV_INPUTS = ("profile", "history", "history_mask", "item_ids", "item_features")


class ScoreGraph(nn.Module):
    """A re-ranker with plain tensor inputs instead of a ListInputs, as ONNX needs them."""

    def __init__(self, reranker: nn.Module) -> None:
        super().__init__()
        self.reranker = reranker

    def forward(self, features: Tensor, pv: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """(B, L, d_feature), (B, L, d_pv), (B, L) int64, (B, L) bool -> (B, L) scores."""
        return self.reranker(ListInputs(features, pv, positions, mask))  # -inf at padding


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
