"""What every re-ranker provides, so training, evaluation, export and serving treat them alike."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import Tensor, nn

from prm.data.batch import ListBatch, ListInputs

Loss = Callable[..., Tensor]


class Reranker(nn.Module):
    """``forward(inputs) -> (B, L)`` ranking scores (-inf at padding); ``click_logits`` is what
    the loss sees, which may add terms used only in training (a position-bias tower)."""

    # A list loss has no target in a list without a click, so by default those are skipped in
    # training and in the validation loss; a click model sets this to learn from them too.
    trains_on_lists_without_click = False

    def take_examination(self, examination: np.ndarray) -> None:
        """Use a measured examination curve (e_k / e_1 per rank, prm.data.examination):
        a re-ranker with a fixed position-bias tower holds it there; by default, nothing."""

    def click_logits(self, inputs: ListInputs) -> Tensor:
        return self(inputs)

    def loss(self, batch: ListBatch, loss_fn: Loss) -> Tensor:
        """The training objective; a model with a step-wise objective (Seq2Slate) overrides it.
        Taken on fp32 logits: a bf16 model's 8 bits are too few for a log-softmax's sums."""
        return loss_fn(self.click_logits(batch).float(), batch.labels, mask=batch.mask)
