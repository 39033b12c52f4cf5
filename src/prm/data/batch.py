"""The padded lists every model reads: :class:`ListInputs` to score, :class:`ListBatch` to train.

``mask`` is True at real items. Padded slots hold zeros in every field and are excluded from
softmax, attention, loss and metrics by that mask alone, never by a sentinel label.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol, Self

import numpy as np
import torch


@dataclass(frozen=True)
class ListInputs:
    """What a re-ranker reads to score ``B`` lists padded to length ``L``: no targets, no ids."""

    features: torch.Tensor  # (B, L, d_feature) float32: item features X
    pv: torch.Tensor  # (B, L, d_pv) float32: personalized vectors; d_pv = 0 when absent
    positions: torch.Tensor  # (B, L) int64: initial rank, 0-based
    mask: torch.Tensor  # (B, L) bool: True at real items

    def to(self, device: torch.device | str) -> Self:
        return type(self)(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass(frozen=True)
class ListBatch(ListInputs):
    """A batch for training and evaluation: the inputs plus the targets and the ids."""

    labels: torch.Tensor  # (B, L) float32: clicks (or graded relevance), 0 at padding
    user_ids: torch.Tensor  # (B,) int64
    list_ids: torch.Tensor  # (B,) int64
    item_ids: torch.Tensor  # (B, L) int64: 0 at padding

    @property
    def inputs(self) -> ListInputs:
        return ListInputs(self.features, self.pv, self.positions, self.mask)


def slots_by_rank(ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L) slot indices sorted by ``ranks`` ((B, L), lowest first), padded slots last;
    equal ranks keep slot order."""
    keys = torch.where(mask, ranks, torch.iinfo(ranks.dtype).max)
    return keys.argsort(dim=-1, stable=True)


@dataclass(frozen=True)
class ListDataset:
    """NumPy arrays of ``N`` padded lists, the in-memory form of a split.

    Field meanings and shapes are those of :class:`ListBatch`, with ``N`` in place of ``B``.
    """

    features: np.ndarray
    pv: np.ndarray
    positions: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    user_ids: np.ndarray
    list_ids: np.ndarray
    item_ids: np.ndarray

    def __post_init__(self) -> None:
        n, length = self.mask.shape
        for name, expected in [
            ("features", (n, length)),
            ("pv", (n, length)),
            ("labels", (n, length)),
            ("positions", (n, length)),
            ("item_ids", (n, length)),
            ("user_ids", (n,)),
            ("list_ids", (n,)),
        ]:
            shape = getattr(self, name).shape[: len(expected)]
            if shape != expected:
                raise ValueError(f"ListDataset.{name} has shape {shape}, expected {expected}")

    @classmethod
    def from_arrays(
        cls,
        features: Sequence[np.ndarray] | np.ndarray,
        labels: Sequence[np.ndarray] | np.ndarray,
        *,
        pv: Sequence[np.ndarray] | np.ndarray | None = None,
        user_ids: Sequence[int] | np.ndarray | None = None,
        list_ids: Sequence[int] | np.ndarray | None = None,
        item_ids: Sequence[np.ndarray] | np.ndarray | None = None,
    ) -> ListDataset:
        """Lists from in-memory arrays, items of each list in their initial order: per list a
        (n_i, d) feature array and (n_i,) labels (clicks or graded relevance), or (N, L, d) and
        (N, L) arrays of equal-length lists. ``pv`` as ``features``; ids default to 0..N-1
        (lists), 0 (users) and 0..n_i-1 (items)."""
        feature_rows = [np.asarray(f, np.float32) for f in features]
        n = len(feature_rows)
        if len(labels) != n:
            raise ValueError(f"labels: {len(labels)} lists, features has {n}")
        padded, mask = pad_lists(feature_rows)
        label_rows = [np.asarray(y, np.float32) for y in labels]
        for i, (x, y) in enumerate(zip(feature_rows, label_rows, strict=True)):
            if x.ndim != 2 or y.shape != (len(x),):
                raise ValueError(
                    f"list {i}: features must be (n, d) and labels (n,), got {x.shape} and "
                    f"{y.shape}"
                )
            if not (np.isfinite(x).all() and np.isfinite(y).all()):
                raise ValueError(f"list {i}: features or labels hold NaN or inf")
        length = mask.shape[1]
        pv_rows = (
            [np.zeros((len(x), 0), np.float32) for x in feature_rows]
            if pv is None
            else [np.asarray(v, np.float32) for v in pv]
        )
        items = (
            [np.arange(len(x)) for x in feature_rows]
            if item_ids is None
            else [np.asarray(i, np.int64) for i in item_ids]
        )
        return cls(
            features=padded,
            pv=pad_lists(pv_rows, length)[0],
            mask=mask,
            labels=pad_lists([y[:, None] for y in label_rows], length)[0][..., 0],
            positions=np.broadcast_to(np.arange(length), mask.shape) * mask,
            user_ids=np.zeros(n, np.int64) if user_ids is None else np.asarray(user_ids),
            list_ids=np.arange(n) if list_ids is None else np.asarray(list_ids),
            item_ids=pad_lists([i[:, None] for i in items], length, dtype=np.int64)[0][..., 0],
        )

    @classmethod
    def from_pandas(
        cls,
        frame: Any,
        *,
        feature_columns: Sequence[str],
        label_column: str = "click",
        list_column: str = "list_id",
        position_column: str | None = None,
        user_column: str | None = None,
        item_column: str | None = None,
        pv_columns: Sequence[str] | None = None,
    ) -> ListDataset:
        """Lists from a long table, one row per shown item (a pandas DataFrame, or anything
        whose ``frame[column].to_numpy()`` gives a column). ``list_column`` groups the rows
        into lists, kept in the order of their first row; within a list, items stand in the
        order of ``position_column`` (the initial rank), else of the rows. Every row of a list
        must name the same user."""

        def column(name: str) -> np.ndarray:
            return np.asarray(frame[name].to_numpy())

        list_keys = column(list_column)
        _, first_row, which = np.unique(list_keys, return_index=True, return_inverse=True)
        list_start = first_row[which]  # (rows,) the first row of each row's list
        rank = column(position_column) if position_column else np.arange(len(list_keys))
        rows = np.lexsort((rank, list_start))  # by list (first appearance), then by rank
        cuts = np.flatnonzero(np.diff(list_start[rows])) + 1
        groups = np.split(rows, cuts) if len(rows) else []
        for group in groups:
            if position_column and len(np.unique(rank[group])) < len(group):
                raise ValueError(
                    f"{position_column}: list {list_keys[group[0]]} has a position twice"
                )
            if user_column and len(np.unique(column(user_column)[group])) > 1:
                raise ValueError(f"{user_column}: list {list_keys[group[0]]} has two users")

        def per_list(names: Sequence[str]) -> list[np.ndarray]:
            values = np.stack([column(name) for name in names], axis=1).astype(np.float32)
            return [values[group] for group in groups]

        heads = np.array([group[0] for group in groups], dtype=np.int64)
        list_ids = list_keys[heads]
        return cls.from_arrays(
            per_list(feature_columns),
            [column(label_column).astype(np.float32)[group] for group in groups],
            pv=per_list(pv_columns) if pv_columns else None,
            user_ids=column(user_column)[heads].astype(np.int64) if user_column else None,
            list_ids=list_ids.astype(np.int64) if list_ids.dtype.kind in "iu" else None,
            item_ids=[column(item_column)[group] for group in groups] if item_column else None,
        )

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def list_length(self) -> int:
        return self.mask.shape[1]

    @property
    def d_feature(self) -> int:
        return self.features.shape[2]

    @property
    def d_pv(self) -> int:
        return self.pv.shape[2]

    def subset(self, index: np.ndarray) -> ListDataset:
        """The lists at ``index`` (integer or boolean), as a new dataset."""
        return ListDataset(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def shown_in_order(self, order: np.ndarray) -> ListDataset:
        """The lists with their slots in ``order`` ((N, L) slot indices, top first, as
        ``evaluation.metrics.rank_order`` gives), each slot's position now its rank there: how
        a list is logged once a re-ranker has shown it in that order."""

        def reorder(values: np.ndarray) -> np.ndarray:
            index = order.reshape(order.shape + (1,) * (values.ndim - 2))  # (N, L, 1, ...)
            return np.take_along_axis(values, index, axis=1)

        return replace(
            self,
            features=reorder(self.features),
            pv=reorder(self.pv),
            mask=reorder(self.mask),
            labels=reorder(self.labels),
            positions=np.broadcast_to(np.arange(self.list_length), self.mask.shape).copy(),
            item_ids=reorder(self.item_ids),
        )

    def with_pv(self, pv: np.ndarray) -> ListDataset:
        return replace(self, pv=np.asarray(pv, dtype=np.float32))

    def with_labels(self, labels: np.ndarray) -> ListDataset:
        return replace(self, labels=np.asarray(labels, dtype=np.float32))

    def has_click(self) -> np.ndarray:
        """(N,) bool: lists with at least one positive label at a real item."""
        return ((self.labels > 0) & self.mask).any(axis=1)

    def batch(self, index: np.ndarray) -> ListBatch:
        """Tensors for the lists at ``index``."""
        return ListBatch(
            features=torch.from_numpy(np.ascontiguousarray(self.features[index], np.float32)),
            pv=torch.from_numpy(np.ascontiguousarray(self.pv[index], np.float32)),
            positions=torch.from_numpy(np.ascontiguousarray(self.positions[index], np.int64)),
            mask=torch.from_numpy(np.ascontiguousarray(self.mask[index], bool)),
            labels=torch.from_numpy(np.ascontiguousarray(self.labels[index], np.float32)),
            user_ids=torch.from_numpy(np.ascontiguousarray(self.user_ids[index], np.int64)),
            list_ids=torch.from_numpy(np.ascontiguousarray(self.list_ids[index], np.int64)),
            item_ids=torch.from_numpy(np.ascontiguousarray(self.item_ids[index], np.int64)),
        )

    def iter_batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[ListBatch]:
        """Batches in order, or in a permutation drawn from ``generator`` (for resumability)."""
        n = len(self)
        order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
        for start in range(0, n, batch_size):
            yield self.batch(np.sort(order[start : start + batch_size]))


Batches = Iterator[tuple[ListBatch, float]]


class TrainingLists(Protocol):
    """What the trainer needs of its training data: the lists with a click, batch by batch."""

    def steps(self, batch_size: int, world: int) -> int:
        """Batches per epoch, the same for every process."""
        ...

    def local_batches(
        self, batch_size: int, generator: torch.Generator, rank: int, world: int
    ) -> Batches:
        """This process's part of each global batch of ``batch_size`` lists, and its weight."""
        ...


def pad_lists(
    rows: list[np.ndarray], length: int | None = None, fill: float = 0, dtype: type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Stack variable-length rows (each (n_i, ...) ) into (N, L, ...) plus a (N, L) mask."""
    length = max((len(r) for r in rows), default=0) if length is None else length
    trailing = rows[0].shape[1:] if rows else ()
    out = np.full((len(rows), length, *trailing), fill, dtype=dtype)
    mask = np.zeros((len(rows), length), dtype=bool)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
        mask[i, : len(row)] = True
    return out, mask


def same_topic_above(topics: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, L) float32: how many real items above each slot (in slot order) share its topic."""
    length = topics.shape[1]
    above = np.tri(length, length, -1, dtype=bool)  # [i, j]: slot j is above slot i
    out = np.empty(topics.shape, dtype=np.float32)
    for start in range(0, len(topics), 4096):
        t, m = topics[start : start + 4096], mask[start : start + 4096]
        same = (t[:, :, None] == t[:, None, :]) & above & m[:, None, :]
        out[start : start + 4096] = same.sum(axis=2) * m
    return out


def concat_lists(parts: list[ListDataset]) -> ListDataset:
    """The lists of ``parts`` one after another, padded to one length (the longest)."""
    if len(parts) == 1:
        return parts[0]
    length = max(part.list_length for part in parts)

    def padded(part: ListDataset, name: str) -> np.ndarray:
        values = getattr(part, name)
        if name in ("user_ids", "list_ids") or part.list_length == length:
            return values
        width = [(0, 0)] * values.ndim
        width[1] = (0, length - part.list_length)
        return np.pad(values, width)

    names = [f.name for f in fields(ListDataset)]
    return ListDataset(**{n: np.concatenate([padded(p, n) for p in parts]) for n in names})
