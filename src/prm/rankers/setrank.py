"""SetRank of Pang et al., "SetRank: Learning a Permutation-Invariant Ranking Model for
Information Retrieval" (SIGIR 2020), Section 4, without the optional ordinal embedding.

    Representation   E = X W^E + b^E                 (X, or [X; PV] with ``use_pv``)
    Encoding         MSAB(E) = LN(H + rFF(H)),  H = LN(E + MultiHead(E, E, E)),  N_b blocks
    Ranking          s = rFF(MSAB^N_b(E))

MSAB is exactly PRM's post-norm encoder block, so it is reused; what makes this SetRank is that
no position enters anywhere: permuting the items of a list permutes their scores the same way
(permutation equivariance), so the initial ranking cannot bias the result. The induced variant
(IMSAB, attention through m inducing points) is not implemented; it only matters for lists far
longer than the ones re-ranked here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from prm.data.batch import ListInputs
from prm.models.base import Reranker
from prm.models.layers import EncoderBlock
from prm.rankers.common import input_size, item_inputs, mask_padding


@dataclass(frozen=True)
class SetRankConfig:
    d_model: int = 64
    n_heads: int = 2
    n_blocks: int = 2  # N_b stacked MSABs
    d_ff: int = 128
    dropout: float = 0.1
    use_pv: bool = True


class SetRank(Reranker):
    """Item representation, ``n_blocks`` multi-head self-attention blocks, a linear scorer."""

    def __init__(self, config: SetRankConfig, d_feature: int, d_pv: int) -> None:
        super().__init__()
        self.config = config
        self.represent = nn.Linear(input_size(d_feature, d_pv, config.use_pv), config.d_model)
        self.blocks = nn.ModuleList(
            EncoderBlock(config.d_model, config.n_heads, config.d_ff, config.dropout)
            for _ in range(config.n_blocks)
        )
        self.score = nn.Linear(config.d_model, 1)

    def forward(self, inputs: ListInputs) -> Tensor:
        """(B, L) scores, -inf at padded slots."""
        x = self.represent(item_inputs(inputs, self.config.use_pv))  # (B, L, d)
        for block in self.blocks:
            x, _ = block(x, inputs.mask)  # (B, L, d)
        return mask_padding(self.score(x).squeeze(-1), inputs.mask)  # (B, L)
