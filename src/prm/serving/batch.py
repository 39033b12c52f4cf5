"""`prm rerank`: re-rank a Parquet list log offline, in chunks, as the service would.

Input rows are those of ``lists_*.parquet`` (``list_id``, ``user_id``, ``item_ids`` in the
initial order; ``clicks`` is ignored). Users and items are looked up in the bundle's catalog.
Output rows: ``list_id``, ``user_id``, ``item_ids`` in the new order and their ``scores``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from prm.data.tables import DataError, open_parquet, padded_list_column, require_ints
from prm.io import atomic_path
from prm.serving.predictor import Predictor

OUTPUT_SCHEMA = pa.schema(
    [
        ("list_id", pa.int64()),
        ("user_id", pa.int64()),
        ("item_ids", pa.list_(pa.int64())),
        ("scores", pa.list_(pa.float32())),
    ]
)
COLUMNS = ("list_id", "user_id", "item_ids")


def _check(path: Path, bad: np.ndarray, first_row: int, list_ids: np.ndarray, reason: str) -> None:
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: row {first_row + row} (list_id {int(list_ids[row])}): {reason}")


def rerank_chunk(
    predictor: Predictor, table: pa.Table, path: Path, first_row: int, batch_size: int
) -> pa.Table:
    """One chunk of input rows re-ranked: the output table of :data:`OUTPUT_SCHEMA`."""
    catalog = predictor.catalog
    for name in ("list_id", "user_id"):
        nulls = table.column(name).is_null().to_numpy(zero_copy_only=False)
        if nulls.any():
            row = first_row + int(np.flatnonzero(nulls)[0])
            raise DataError(f"{path}: row {row}: {name} is null")
    require_ints(table, path, "list_id", "user_id", "item_ids")  # 252.7 is not item 252
    list_ids = table.column("list_id").to_numpy().astype(np.int64)
    user_ids = table.column("user_id").to_numpy().astype(np.int64)
    item_ids, lengths = padded_list_column(table, "item_ids", path, np.int64)  # (N, L), (N,)
    mask = np.arange(item_ids.shape[1]) < lengths[:, None]  # (N, L)
    _check(path, lengths == 0, first_row, list_ids, "empty list")
    _check(
        path,
        lengths > predictor.max_list_length,
        first_row,
        list_ids,
        f"over {predictor.max_list_length} items, the longest list this model serves",
    )
    _check(
        path,
        (user_ids < 0) | (user_ids >= catalog.n_users),
        first_row,
        list_ids,
        f"unknown user_id (the catalog has 0..{catalog.n_users - 1})",
    )
    _check(
        path,
        (mask & ((item_ids < 0) | (item_ids >= catalog.n_items))).any(axis=1),
        first_row,
        list_ids,
        f"unknown item id (the catalog has 0..{catalog.n_items - 1})",
    )
    # Padded slots get distinct negative values, so only real ids can repeat once sorted.
    ordered = np.sort(np.where(mask, item_ids, -1 - np.arange(item_ids.shape[1])), axis=1)
    _check(
        path,
        (ordered[:, 1:] == ordered[:, :-1]).any(axis=1),
        first_row,
        list_ids,
        "duplicate item id",
    )

    scores = np.empty(item_ids.shape, np.float32)
    for start in range(0, len(table), batch_size):
        rows = slice(start, start + batch_size)
        inputs = predictor.known_user_lists(user_ids[rows], item_ids[rows], mask[rows])
        scores[rows] = predictor.score(inputs)
    order = np.argsort(-scores, axis=1, kind="stable")  # (N, L), padding (-inf) last
    real = np.take_along_axis(mask, order, axis=1)  # (N, L), True in the first n_i slots
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())
    return pa.table(
        {
            "list_id": list_ids,
            "user_id": user_ids,
            "item_ids": pa.ListArray.from_arrays(
                offsets, np.take_along_axis(item_ids, order, axis=1)[real]
            ),
            "scores": pa.ListArray.from_arrays(
                offsets, np.take_along_axis(scores, order, axis=1)[real]
            ),
        },
        schema=OUTPUT_SCHEMA,
    )


def rerank_parquet(
    predictor: Predictor,
    lists_path: str | Path,
    out_path: str | Path,
    *,
    chunk_size: int = 8192,
    batch_size: int = 256,
    progress: bool = True,
) -> int:
    """Re-rank every list of ``lists_path`` into ``out_path``; returns the number of lists.

    Reads and writes ``chunk_size`` rows at a time and scores ``batch_size`` lists per model
    call, so memory stays flat however long the log. The output appears only when complete.
    """
    lists_path = Path(lists_path)
    source = open_parquet(lists_path)
    missing = [name for name in COLUMNS if name not in source.schema_arrow.names]
    if missing:
        raise DataError(f"{lists_path}: missing column(s) {', '.join(missing)}")

    done = 0
    with (
        atomic_path(out_path) as tmp,
        pq.ParquetWriter(tmp, OUTPUT_SCHEMA) as writer,
        tqdm(total=source.metadata.num_rows, unit="list", disable=not progress) as bar,
    ):
        for chunk in source.iter_batches(batch_size=chunk_size, columns=list(COLUMNS)):
            table = pa.Table.from_batches([chunk])
            writer.write_table(rerank_chunk(predictor, table, lists_path, done, batch_size))
            done += len(table)
            bar.update(len(table))
    return done
