"""bf16 training with fp32 master weights (``train.precision: bf16``).

The step runs on a bf16 copy of the model, so activations stay bf16 from layer to layer instead
of being cast around each product as autocast does; the losses are taken in fp32
(``Reranker.loss``). Adam updates
the fp32 model, which validation scores and checkpoints hold, and its new weights are copied
into the bf16 copy after every step. On CPUs with bf16 units (AVX-512 BF16, AMX) the products
run several times faster than in fp32: 4 times at the PRM authors' size on a 2-core Xeon with
AMX (benchmarks/RESULTS.md, "Training speed against allRank").
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from prm.data.batch import ListBatch


class BF16Copy:
    """The bf16 working copy of ``master``, and the moves of weights and gradients between
    them."""

    def __init__(self, master: nn.Module) -> None:
        self.master = master
        self.module = copy.deepcopy(master).to(torch.bfloat16)
        pairs = zip(master.parameters(), self.module.parameters(), strict=True)
        self.trained = [(fp32, bf16) for fp32, bf16 in pairs if fp32.requires_grad]

    def load_master(self) -> None:
        """Take every weight and buffer of the master, and its mode, at the start of an epoch
        (the master may have been resumed or restored since)."""
        self.module.load_state_dict(self.master.state_dict())
        self.module.train(self.master.training)

    @staticmethod
    def inputs(batch: ListBatch) -> ListBatch:
        """The batch with its features and PV in bf16; labels and masks as they are."""
        return replace(batch, features=batch.features.bfloat16(), pv=batch.pv.bfloat16())

    def gradients_to_master(self) -> None:
        """The copy's gradients, in fp32, become the master's (which Adam reads)."""
        for fp32, bf16 in self.trained:
            fp32.grad = None if bf16.grad is None else bf16.grad.float()
            bf16.grad = None

    @torch.no_grad()
    def update_copy(self) -> None:
        """The master's weights after Adam's step, rounded into the copy."""
        for fp32, bf16 in self.trained:
            bf16.copy_(fp32)
