"""`prm explain`: PRM's self-attention over one list, one heatmap per block and head.

The paper visualises these weights to show that PRM relates items across the whole list
(e.g. items of one topic attend to each other). Row ``i`` of a heatmap is how much item ``i``
(a query, in initial order) draws on each item of the list (the keys); each row sums to 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from prm.data.tables import DataError, load_items, padded_list_column  # noqa: E402
from prm.io import atomic_path  # noqa: E402
from prm.serving.batch import COLUMNS, rerank_chunk  # noqa: E402
from prm.serving.predictor import Predictor, TorchBackend  # noqa: E402

MAX_TICK_LABELS = 40  # longer lists label every k-th item so the labels stay legible


def plot_attention(
    weights: list[np.ndarray], labels: list[str], path: str | Path, *, title: str = ""
) -> None:
    """Write a PNG grid of heatmaps: one row per block, one column per head.

    ``weights`` holds one (n_heads, n, n) array per block for one list of ``n`` real items;
    ``labels`` names the ``n`` items in their initial order.
    """
    n_blocks, (n_heads, n, _) = len(weights), weights[0].shape
    side = min(1.2 + 0.16 * n, 7.0)  # inches per panel: readable at 10 items, bounded at 100
    figure, axes = plt.subplots(
        n_blocks, n_heads, figsize=(side * n_heads + 1.0, side * n_blocks), squeeze=False
    )
    vmax = max(float(block.max()) for block in weights)
    step = -(-n // MAX_TICK_LABELS)  # ceil(n / MAX_TICK_LABELS)
    ticks = np.arange(0, n, step)
    for b, block in enumerate(weights):
        for h in range(n_heads):
            axis = axes[b, h]
            image = axis.imshow(block[h], cmap="viridis", vmin=0.0, vmax=vmax)
            axis.set_title(f"block {b + 1}, head {h + 1}", fontsize=9)
            axis.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=6)
            axis.set_yticks(ticks, [labels[i] for i in ticks], fontsize=6)
            axis.set_xlabel("key: attended item", fontsize=8)
            if h == 0:
                axis.set_ylabel("query: item (initial order)", fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    if title:
        figure.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def explain_list(
    predictor: Predictor,
    lists_path: str | Path,
    list_id: int,
    out_path: str | Path,
    *,
    items_path: str | Path | None = None,
) -> dict[str, Any]:
    """Plot the attention of one list of a ``lists_*.parquet`` log and return its re-ranking.

    Needs the PyTorch backend (ONNX graphs do not return attention weights). Axis labels are
    item ids, with their topics when ``items_path`` (an ``items.parquet``) is given.
    """
    if not isinstance(predictor.backend, TorchBackend):
        raise ValueError("attention weights need the torch backend: load_predictor(..., 'torch')")
    lists_path = Path(lists_path)
    if not lists_path.is_file():
        raise DataError(f"{lists_path}: file not found")
    table = pq.read_table(lists_path, columns=list(COLUMNS))
    table = table.filter(pc.equal(table.column("list_id"), list_id))
    if len(table) != 1:
        raise DataError(f"{lists_path}: {len(table)} rows with list_id {list_id}, expected 1")
    reranked = rerank_chunk(predictor, table, lists_path, 0, batch_size=1).to_pylist()[0]

    user_ids = table.column("user_id").to_numpy().astype(np.int64)
    item_ids, _ = padded_list_column(table, "item_ids", lists_path, np.int64)  # (1, n)
    inputs = predictor.known_user_lists(user_ids, item_ids, np.ones(item_ids.shape, bool))
    weights = [block[0] for block in predictor.backend.attention(inputs, predictor.pv(inputs))]

    ids = item_ids[0].tolist()
    if items_path is None:
        labels = [str(i) for i in ids]
    else:
        topic = load_items(items_path).topic
        if len(topic) != predictor.catalog.n_items:
            raise DataError(
                f"{items_path}: {len(topic)} items, the model's catalog has "
                f"{predictor.catalog.n_items}; pass the items.parquet it was trained on"
            )
        labels = [f"{i} t{topic[i]}" for i in ids]
    title = f"PRM self-attention: list {list_id}, user {int(user_ids[0])}, {predictor.version}"
    plot_attention(weights, labels, out_path, title=title)
    return {
        "list_id": list_id,
        "user_id": int(user_ids[0]),
        "initial_item_ids": ids,
        "reranked_item_ids": reranked["item_ids"],
        "scores": reranked["scores"],
    }
