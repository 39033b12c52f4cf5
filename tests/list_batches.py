"""Random padded ListBatches for model tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from typing import Literal

import torch

from prm.data.batch import ListBatch


def random_list_batch(
    lengths: list[int],
    length: int,
    *,
    d_feature: int,
    d_pv: int,
    seed: int = 0,
    click: Literal["random", "largest_first_feature"] = "random",
) -> ListBatch:
    """Lists of the given lengths padded with zeros to ``length``, one click each: a random real
    item, or the real item with the largest first feature (a fact about the list, not the item)."""
    g = torch.Generator().manual_seed(seed)
    n = len(lengths)
    mask = torch.arange(length) < torch.tensor(lengths)[:, None]  # (B, L)
    features = torch.randn(n, length, d_feature, generator=g) * mask[..., None]
    if click == "random":
        clicked = (torch.rand(n, generator=g) * torch.tensor(lengths)).long()  # (B,)
    else:
        clicked = features[..., 0].masked_fill(~mask, float("-inf")).argmax(dim=-1)  # (B,)
    labels = (torch.arange(length) == clicked[:, None]) & mask  # (B, L)
    ids = torch.arange(n)
    return ListBatch(
        features=features,
        pv=torch.randn(n, length, d_pv, generator=g) * mask[..., None],
        mask=mask,
        labels=labels.float(),
        positions=torch.arange(length).expand(n, length) * mask,
        user_ids=ids,
        list_ids=ids,
        item_ids=(torch.arange(length) + 1).expand(n, length) * mask,
    )
