"""The randomized exploration bucket as off-policy evaluation reads it.

A bucket list was shown in an order the logging policy drew at random, so the click of an item
at a rank can stand in for the click it would get there under another ordering, weighted by
how likely the logging policy was to put it there (its propensity). Off-policy estimators
(:mod:`prm.evaluation.offpolicy`) need, per list, the request a re-ranker would have received
(the items in their initial order), where each item was shown, its click and its propensity.

On disk (``lists_explore.parquet`` or ``lists_explore/``, docs/data.md "The exploration
bucket") the rows are lists in shown order with the columns of any list log plus

- ``initial_ranks`` (list<int>, required here): each shown item's 0-based rank in the initial
  list, a permutation of 0..n-1;
- ``propensities`` (list<float>, optional): the probability that the logging policy showed
  this item at this rank, in (0, 1]. Without it every list is taken as shuffled uniformly
  (1/n at every slot of an n-item list).

A propensity of exactly 1 marks a slot the logging policy never randomized: an ordering that
moves its item is outside the logging support there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prm.data.batch import ListDataset
from prm.data.examination import EXPLORE
from prm.data.shards import lists_source, shard_paths
from prm.data.tables import DataError, padded_list_column, read_table

UNIFORM_TOLERANCE = 1e-6  # propensities this close to 1/n count as a uniform shuffle


@dataclass(frozen=True)
class ExplorationLog:
    """Bucket lists as requests (slots in initial order) with their logged display."""

    requests: ListDataset  # positions = initial rank; labels = each item's logged click
    shown_ranks: np.ndarray  # (N, L) int64: 0-based rank each slot's item was shown at
    propensities: np.ndarray  # (N, L) float64: P(logging policy shows the item there)
    uniform: bool  # every list shuffled uniformly, so every ordering is in the support

    def __len__(self) -> int:
        return len(self.requests)

    def subset(self, index: np.ndarray) -> ExplorationLog:
        """The lists at ``index``, e.g. a smaller budget or a resample."""
        return ExplorationLog(
            requests=self.requests.subset(index),
            shown_ranks=self.shown_ranks[index],
            propensities=self.propensities[index],
            uniform=self.uniform,
        )

    def fixed_slots(self) -> np.ndarray:
        """(N, L) bool: real slots whose item the logging policy never moved (propensity 1)."""
        return self.requests.mask & (self.propensities >= 1.0 - UNIFORM_TOLERANCE)


def exploration_log(
    shown: ListDataset, initial_ranks: np.ndarray, propensities: np.ndarray | None
) -> ExplorationLog:
    """The bucket from its lists in shown order (slot = shown rank, as ``load_lists`` reads
    them, PV attached if wanted) and the two bucket columns, padded alike."""
    mask = shown.mask
    lengths = mask.sum(axis=1)
    if propensities is None:
        propensities = np.where(mask, 1.0 / np.maximum(lengths, 1)[:, None], 0.0)
    keys = np.where(mask, initial_ranks, np.iinfo(np.int64).max)
    order = np.argsort(keys, axis=1, kind="stable")  # request slot -> shown slot (= rank)
    requests = shown.shown_in_order(order)
    uniform_value = 1.0 / np.maximum(lengths, 1)[:, None]
    uniform = bool(np.all(np.abs(propensities - uniform_value)[mask] < UNIFORM_TOLERANCE))
    return ExplorationLog(
        requests=requests,
        shown_ranks=np.where(requests.mask, order, 0).astype(np.int64),
        propensities=np.take_along_axis(propensities, order, axis=1),
        uniform=uniform,
    )


def read_randomization(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``initial_ranks`` and ``propensities`` (None when absent) of a folder's bucket, padded as
    ``load_lists`` pads its lists; errors name the file, the row and what is wrong."""
    source = lists_source(data_dir, EXPLORE)
    if not source.exists():
        raise DataError(
            f"{source}: no exploration bucket; IPS, pseudo-inverse and doubly robust estimates "
            "need lists shown in a randomized order (docs/data.md, 'The exploration bucket')"
        )
    ranks, propensities, lengths = [], [], []
    first_row = 0
    for path in shard_paths(source):
        table = read_table(path, {"initial_ranks": "list<int>: rank in the initial list"})
        part_ranks, part_lengths = padded_list_column(table, "initial_ranks", path, np.int64)
        item_ids, item_lengths = padded_list_column(table, "item_ids", path, np.int64)
        _check_ranks(path, part_ranks, part_lengths, item_lengths, first_row)
        ranks.append(part_ranks)
        lengths.append(part_lengths)
        if "propensities" in table.schema.names:
            values, value_lengths = padded_list_column(table, "propensities", path, np.float64)
            _check_propensities(path, values, value_lengths, item_lengths, first_row)
            propensities.append(values)
        elif propensities:
            raise DataError(f"{path}: column propensities missing (other parts have it)")
        first_row += len(part_lengths)
    length = max(int(n.max(initial=0)) for n in lengths)
    padded_ranks = np.concatenate([_pad(r, length) for r in ranks])
    if not propensities:
        return padded_ranks, None
    return padded_ranks, np.concatenate([_pad(p, length) for p in propensities])


def _pad(values: np.ndarray, length: int) -> np.ndarray:
    return np.pad(values, [(0, 0), (0, length - values.shape[1])])


def _check_lengths(
    path: Path, name: str, lengths: np.ndarray, n_items: np.ndarray, first_row: int
) -> None:
    differ = lengths != n_items
    if differ.any():
        row = int(np.flatnonzero(differ)[0])
        raise DataError(f"{path}: row {first_row + row}: {name} and item_ids differ in length")


def _check_ranks(
    path: Path, ranks: np.ndarray, lengths: np.ndarray, n_items: np.ndarray, first_row: int
) -> None:
    _check_lengths(path, "initial_ranks", lengths, n_items, first_row)
    real = np.arange(ranks.shape[1]) < lengths[:, None]
    sorted_ranks = np.sort(np.where(real, ranks, np.iinfo(np.int64).max), axis=1)
    bad = (real & (sorted_ranks != np.arange(ranks.shape[1]))).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: row {first_row + row}: initial_ranks must be a permutation of "
            f"0..{lengths[row] - 1}, got {ranks[row, : lengths[row]].tolist()}"
        )


def _check_propensities(
    path: Path, values: np.ndarray, lengths: np.ndarray, n_items: np.ndarray, first_row: int
) -> None:
    _check_lengths(path, "propensities", lengths, n_items, first_row)
    real = np.arange(values.shape[1]) < lengths[:, None]
    bad = real & ~((values > 0) & (values <= 1))  # also NaN
    if bad.any():
        row, slot = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{path}: row {first_row + row}, slot {slot}: propensity {float(values[row, slot])} "
            "is not in (0, 1]: it is the chance the logging policy gave this item at this rank, "
            "and it did show it there"
        )
