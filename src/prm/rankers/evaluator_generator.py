"""Evaluator-generator re-ranking: build the list rank by rank under a learned click model.

The permutation-based re-ranking that followed PRM (PRS, EG-Rerank, PIER, NAR4Rec) splits the
job in two. A **generator** proposes whole candidate lists; an **evaluator** scores each whole
list by the clicks it predicts for it, and the best one is shown. Here:

- the evaluator is :class:`~prm.models.evaluator.ContextClickModel`, trained on the logs;
- the generator is a beam search over placements (PRS's PMatch): each of ``beam_width``
  partial lists is extended by every remaining item, and the partial lists with the highest
  predicted clicks so far are kept. With ``beam_width`` 1 it is the greedy rule "fill each rank
  with the item most likely clicked there, given the items above";
- the finished beams and the initial order are the candidates; the evaluator's predicted
  clicks of each whole list (PRS's PRank, permutation-wise) choose among them.

Trained through the shared Trainer like every re-ranker: its loss is the evaluator's click
likelihood on the logged lists (lists without a click included), and ranking runs the search.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from prm.config import EvaluatorConfig
from prm.data.batch import ListBatch, ListInputs
from prm.models.base import Loss, Reranker
from prm.models.evaluator import ContextClickModel, in_display_order
from prm.models.layers import scan_steps
from prm.rankers.common import slots_in_order

TIE = 1e-5  # predicted clicks of a list closer than this are equal (float rounding)

# The state of the beam search between ranks, W beams of each list: predicted clicks so far
# (B, W), prefix sum and max of the placed items (B, W, d) x2, whether a real item was placed
# (B, W, 1), the unused slots (B, W, L), and the slot placed at each rank (B, W, L).
Beams = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


class GeneratorEvaluator(Reranker):
    """Beam search under the context-aware click model; scores are minus the chosen rank."""

    trains_on_lists_without_click = True  # a click model learns from every shown list

    def __init__(self, config: EvaluatorConfig, d_feature: int, d_pv: int) -> None:
        super().__init__()
        self.config = config
        self.evaluator = ContextClickModel(
            d_feature,
            d_pv,
            d_hidden=config.d_hidden,
            use_pv=config.use_pv,
            max_positions=config.max_positions,
            topic_columns=config.topic_columns,
        )

    def take_examination(self, examination: np.ndarray) -> None:
        """Start the evaluator's examination at the curve, to be learned from there, or held
        there with ``hold_examination``."""
        self.evaluator.start_examination_at(examination)
        self.evaluator.examination.weight.requires_grad_(not self.config.hold_examination)

    def loss(self, batch: ListBatch, loss_fn: Loss) -> Tensor:
        """The evaluator's click negative log-likelihood; ``loss_fn`` (a list loss) is unused."""
        return self.evaluator.nll(batch)

    def forward(self, inputs: ListInputs) -> Tensor:
        """(B, L) scores: -rank in the chosen list, -inf at padding."""
        order = self.generate(inputs)
        ranks = torch.arange(order.shape[1], device=order.device, dtype=torch.float32)
        scores = torch.empty(order.shape, device=order.device).scatter_(
            1, order, -ranks.expand(order.shape).contiguous()
        )
        return scores.masked_fill(~inputs.mask, float("-inf"))

    @torch.no_grad()
    def generate(self, inputs: ListInputs) -> Tensor:
        """(B, L) slot indices, top first: the candidate with the most predicted clicks.

        The search runs on the lists in their initial order, so that ties go to the item
        ranked higher there and the result does not depend on which slots hold the items.
        """
        initial = slots_in_order(inputs.positions, inputs.mask)  # (B, L) in initial order
        shown = in_display_order(inputs, initial)
        beams, alive = self.beam_search(shown)  # (B, W, L), (B, W), indices into ``shown``
        identity = torch.arange(initial.shape[1], device=initial.device).expand_as(initial)
        candidates = torch.cat([beams, identity[:, None]], dim=1)  # (B, W + 1, L)
        predicted = torch.stack(
            [
                self.evaluator.expected_clicks(in_display_order(shown, candidate))
                for candidate in candidates.unbind(1)
            ],
            dim=1,
        )  # (B, W + 1)
        # A beam is dead when a list had fewer orders to offer than the beam's width.
        usable = torch.cat([alive, torch.ones_like(alive[:, :1])], dim=1)
        predicted = predicted.masked_fill(~usable, -float("inf"))
        # Candidates within float rounding of the best are ties: the first (best beam) wins.
        near_best = predicted >= predicted.max(dim=1, keepdim=True).values - TIE
        best = near_best.float().argmax(dim=1)
        return initial.gather(1, candidates[torch.arange(best.shape[0]), best])

    @torch.no_grad()
    def beam_search(self, inputs: ListInputs) -> tuple[Tensor, Tensor]:
        """(B, W, L) the ``beam_width`` finished lists (slot indices, top first), best first,
        and (B, W) whether each is a real list (a list with fewer orders than W leaves dead
        beams). Padded slots are placed only after every real item."""
        appeal, w_sum, w_max, x = self.evaluator.item_terms(inputs)  # (B, L), (B, L, d) x3
        n, length = inputs.mask.shape
        width = self.config.beam_width
        ranks = torch.arange(length, device=x.device)
        examination = self.evaluator.log_examination(ranks).exp()  # (L,)
        rows = torch.arange(n, device=x.device)[:, None]  # (B, 1)

        # Only the first beam is live at the start, so the first step keeps W distinct items.
        total = torch.full((n, width), -float("inf"), device=x.device)
        total[:, 0] = 0.0
        beams: Beams = (
            total,
            x.new_zeros(n, width, x.shape[-1]),  # prefix sum of the placed items, (B, W, d)
            x.new_full((n, width, x.shape[-1]), torch.finfo(x.dtype).min),  # prefix max
            torch.zeros(n, width, 1, dtype=torch.bool, device=x.device),  # placed any real item
            torch.ones(n, width, length, dtype=torch.bool, device=x.device),  # slots unused
            torch.zeros(n, width, length, dtype=torch.int64, device=x.device),  # slot at rank
        )

        def place(beams: Beams, at: tuple[Tensor, Tensor]) -> tuple[Beams, Tensor]:
            """Fill rank ``rank`` of every beam: the W best extensions of the W beams."""
            rank, examined = at  # () int, () float: the rank and its examination e_rank
            total, prefix_sum, prefix_max, placed_any, unused, orders = beams
            real = inputs.mask[:, None, :]  # (B, 1, L); here, as scan takes no aliased inputs
            visible_max = torch.where(placed_any, prefix_max, 0.0)
            z = (
                appeal[:, None, :]
                + torch.einsum("bld,bwd->bwl", w_sum, prefix_sum)
                + torch.einsum("bld,bwd->bwl", w_max, visible_max)
            )  # (B, W, L)
            gain = torch.where(real, examined * torch.sigmoid(z), 0.0)
            real_left = (unused & real).any(dim=-1, keepdim=True)  # (B, W, 1)
            allowed = unused & (real | ~real_left)
            extended = torch.where(allowed, total[:, :, None] + gain, -float("inf"))
            # Slot-major, and first-index ties: among equal totals the item ranked higher in the
            # initial order wins, whatever the list's padded length.
            by_slot = extended.transpose(1, 2).flatten(1)  # (B, L * W)
            total, flat = top_first(by_slot, width)  # (B, W) each
            beam, slot = flat % width, flat // width  # (B, W) each
            prefix_sum, prefix_max = prefix_sum[rows, beam], prefix_max[rows, beam]
            placed_any, unused = placed_any[rows, beam], unused[rows, beam]
            orders = orders[rows, beam]
            chosen = x[rows, slot]  # (B, W, d)
            is_real = inputs.mask[rows, slot][..., None]  # (B, W, 1)
            prefix_sum = prefix_sum + torch.where(is_real, chosen, 0.0)
            prefix_max = torch.where(is_real, torch.maximum(prefix_max, chosen), prefix_max)
            placed_any = placed_any | is_real
            unused = unused & (ranks != slot[..., None])  # (B, W, L)
            orders = torch.where(ranks == rank, slot[..., None], orders)  # (B, W, L)
            return (total, prefix_sum, prefix_max, placed_any, unused, orders), total.clone()

        beams, _ = scan_steps(place, beams, (ranks, examination))
        total, orders = beams[0], beams[-1]
        return orders, torch.isfinite(total)


def top_first(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest of each row of ``values`` ((B, N), k <= N) and their (B, k) indices, largest
    first, equal values in index order: the first k of a stable descending sort.

    ONNX has no stable sort, so the k are picked one at a time, each the first index of the
    largest value not yet picked (-inf included).
    """
    taken = torch.zeros_like(values, dtype=torch.bool)  # (B, N)
    indices = []
    for _ in range(k):
        free = values.masked_fill(taken, -float("inf"))  # (B, N)
        best = free.max(dim=1, keepdim=True).values  # (B, 1)
        first = ((free == best) & ~taken).to(values.dtype).argmax(dim=1, keepdim=True)  # (B, 1)
        taken = taken.scatter(1, first, True)
        indices.append(first)
    index = torch.cat(indices, dim=1)  # (B, k)
    return values.gather(1, index), index
