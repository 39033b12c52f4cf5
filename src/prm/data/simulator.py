"""The embedded click simulator: users, items, an initial ranker and a list-aware click model.

Equations and their symbols are in docs/simulator.md; each function names the equation it
implements. Everything is vectorized over lists and deterministic given ``SimulatorConfig.seed``.
Observable data (what models may use) and the hidden truth (what only evaluation may use) are
written to separate files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from prm.config import SimulatorConfig, from_dict, to_dict
from prm.data.examination import EXPLORE
from prm.data.shards import ListWriter
from prm.io import atomic_path, write_json, write_parquet

SPLITS = ("train", "valid", "test")
CHUNK = 4096  # lists simulated at once; bounds memory at about CHUNK * L * n_topics floats
LIST_SCHEMA = pa.schema(
    [
        ("list_id", pa.int64()),
        ("user_id", pa.int32()),
        ("item_ids", pa.list_(pa.int32())),
        ("clicks", pa.list_(pa.int8())),
    ]
)
# The exploration bucket also records each shown item's rank in the initial list, so a target
# re-ranker can be run on the request it would have received (off-policy evaluation).
EXPLORE_SCHEMA = LIST_SCHEMA.append(pa.field("initial_ranks", pa.list_(pa.int16())))


@dataclass(frozen=True)
class World:
    """Users and items; ``taste``, ``saturation``, ``quality`` and ``lift`` are hidden."""

    item_topic: np.ndarray  # (n_items,) int
    item_dense: np.ndarray  # (n_items, d_item_dense) float32, observable
    quality: np.ndarray  # (n_items,) hidden quality q_i
    topic_popularity: np.ndarray  # (T,) pi
    taste: np.ndarray  # (n_users, T) hidden affinities theta_u
    saturation: np.ndarray  # (n_users,) hidden lambda_u
    profile: np.ndarray  # (n_users, d_profile) float32, observable
    history: np.ndarray  # (n_users, H) int, observable past clicks
    lift: np.ndarray  # (T, T) 0/1 symmetric: topic pairs that lift each other


@dataclass(frozen=True)
class ClickModel:
    """Expected clicks of any ordering (Eq. 7-9 of docs/simulator.md)."""

    world: World
    config: SimulatorConfig

    def attractiveness_logit(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        same_topic_above: np.ndarray,
        lifted: np.ndarray,
    ) -> np.ndarray:
        """Eq. 8: z = b + w_r theta_u[t_i] + w_q q_i - lambda_u n_same + w_l lift, elementwise."""
        c, w = self.config, self.world
        topic = w.item_topic[item_ids]
        relevance = w.taste[user_ids[:, None], topic]
        return (
            c.click_bias
            + c.relevance_weight * relevance
            + c.quality_weight * w.quality[item_ids]
            - w.saturation[user_ids][:, None] * same_topic_above
            + c.lift_weight * lifted
        )

    def examination(self, length: int) -> np.ndarray:
        """Eq. 7: probability that rank k (1-based) is looked at, 1 / k^eta."""
        return 1.0 / np.arange(1, length + 1) ** self.config.position_bias

    def click_probabilities(
        self, user_ids: np.ndarray, item_ids: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        """(N, L) click probability of each shown item; ``item_ids`` is in display order.

        Real items must come first in each row (padding at the end), as in every list we show.
        """
        same, lifted = self.list_context(item_ids, mask)
        z = self.attractiveness_logit(user_ids, item_ids, same, lifted)
        p = self.examination(item_ids.shape[1]) * _sigmoid(z)
        return np.where(mask, p, 0.0)

    def list_context(self, item_ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 8's context of each item in display order, (N, L) each: n, the number of real
        items above it with its topic, and whether one above it has a topic that lifts it."""
        topics = self.world.item_topic[item_ids]
        onehot = np.zeros((*item_ids.shape, self.config.n_topics), dtype=np.float32)
        np.put_along_axis(onehot, topics[..., None], mask[..., None].astype(np.float32), axis=2)
        above = np.cumsum(onehot, axis=1) - onehot  # (N, L, T) real items strictly above
        same = np.take_along_axis(above, topics[..., None], axis=2)[..., 0]
        lifted = np.take_along_axis((above > 0) @ self.world.lift, topics[..., None], axis=2)
        return same, lifted[..., 0] > 0

    def expected_clicks(
        self, user_ids: np.ndarray, item_ids: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        """Eq. 9: (N,) expected number of clicks of each list shown in the given order."""
        return self.click_probabilities(user_ids, item_ids, mask).sum(axis=1)

    def greedy_oracle(
        self, user_ids: np.ndarray, item_ids: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        """Eq. 10: (N, L) order (indices into each list) that fills rank k with the item of
        highest attractiveness given the items already placed above it.

        Examination does not depend on the item, so at each rank the greedy choice maximises
        that rank's click probability; it is a strong upper reference, not a proven optimum.
        """
        n, length = item_ids.shape
        topics = self.world.item_topic[item_ids]  # (N, L)
        rows = np.arange(n)
        counts = np.zeros((n, self.config.n_topics), dtype=np.float32)  # topics placed so far
        remaining = np.ones((n, length), dtype=bool)
        order = np.zeros((n, length), dtype=np.int64)
        for rank in range(length):
            same = np.take_along_axis(counts, topics, axis=1)
            lifted = np.take_along_axis((counts > 0) @ self.world.lift, topics, axis=1) > 0
            z = self.attractiveness_logit(user_ids, item_ids, same, lifted)
            # Padded slots come after every real item; placed slots are never taken again.
            key = np.where(remaining, np.where(mask, z, -1e30), -np.inf)
            best = np.argmax(key, axis=1)
            order[:, rank] = best
            counts[rows, topics[rows, best]] += mask[rows, best]
            remaining[rows, best] = False
        return order


def diversified_scores(
    score: np.ndarray, topics: np.ndarray, saturation: float | np.ndarray
) -> np.ndarray:
    """(N, L) ``score`` less ``saturation`` (scalar or (N, 1)) per same-topic item scoring higher.

    Sorting by it gives the order of the greedy rule (Eq. 10) without lift: greedy placement
    takes a topic's items in score order, so the items of its topic above a placed item are
    exactly the better ones. One pass over the set, then a sort: a permutation-equivariant
    re-ranker such as PRM can express the oracle's diversification.
    """
    same_topic = topics[:, :, None] == topics[:, None, :]
    better = score[:, None, :] > score[:, :, None]
    return score - saturation * (same_topic & better).sum(axis=2)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _categorical(rng: np.random.Generator, probs: np.ndarray, size: int) -> np.ndarray:
    """(rows, size) draws, row r from categorical ``probs[r]`` (inverse CDF)."""
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random((probs.shape[0], size))
    return (u[:, :, None] > cdf[:, None, :]).sum(axis=2)


def _within_topic(
    rng: np.random.Generator, world: World, topics: np.ndarray, weight_log: np.ndarray
) -> np.ndarray:
    """For each entry of ``topics``, an item of that topic drawn with prob. ∝ exp(weight_log)."""
    items = np.empty(topics.shape, dtype=np.int64)
    flat_topics, flat_items = topics.ravel(), items.ravel()
    for topic in range(len(world.topic_popularity)):
        members = np.flatnonzero(world.item_topic == topic)
        where = np.flatnonzero(flat_topics == topic)
        cdf = np.cumsum(np.exp(weight_log[members]))
        picks = np.searchsorted(cdf, rng.random(len(where)) * cdf[-1], side="right")
        flat_items[where] = members[np.minimum(picks, len(members) - 1)]
    return flat_items.reshape(topics.shape)


def make_world(config: SimulatorConfig, rng: np.random.Generator) -> World:
    """Eq. 1-5: topics, items, users with tastes, profiles and click histories."""
    c = config
    topic_popularity = rng.dirichlet(np.full(c.n_topics, 2.0))
    item_topic = rng.choice(c.n_topics, size=c.n_items, p=topic_popularity)
    # Every topic gets at least one item so histories and pools can draw from it.
    item_topic[: c.n_topics] = np.arange(c.n_topics)
    quality = rng.standard_normal(c.n_items)
    centroids = rng.standard_normal((c.n_topics, c.d_item_dense - 1))
    item_dense = np.concatenate(
        [
            centroids[item_topic] + 0.8 * rng.standard_normal((c.n_items, c.d_item_dense - 1)),
            (quality + 0.5 * rng.standard_normal(c.n_items))[:, None],
        ],
        axis=1,
    ).astype(np.float32)

    latent = rng.standard_normal((c.n_users, c.n_topics))
    taste = c.taste_scale * latent
    log_sat = rng.standard_normal(c.n_users)
    saturation = c.saturation_mean * np.exp(
        c.saturation_spread * log_sat - c.saturation_spread**2 / 2
    )
    projection = rng.standard_normal((c.n_topics, c.d_profile - 1)) / np.sqrt(c.n_topics)
    profile = np.concatenate(
        [
            latent @ projection * 2.0
            + c.profile_noise * rng.standard_normal((c.n_users, c.d_profile - 1)),
            (log_sat + c.profile_noise * rng.standard_normal(c.n_users))[:, None],
        ],
        axis=1,
    ).astype(np.float32)

    lift = np.zeros((c.n_topics, c.n_topics), dtype=np.float32)
    for _ in range(c.lift_pairs):
        a, b = rng.choice(c.n_topics, size=2, replace=False)
        lift[a, b] = lift[b, a] = 1.0

    world = World(
        item_topic=item_topic,
        item_dense=item_dense,
        quality=quality,
        topic_popularity=topic_popularity,
        taste=taste,
        saturation=saturation,
        profile=profile,
        history=np.zeros((c.n_users, c.history_length), dtype=np.int64),
        lift=lift,
    )
    history_topics = _categorical(rng, _softmax(taste), c.history_length)
    history = _within_topic(rng, world, history_topics, quality)
    return World(**{**world.__dict__, "history": history})


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def history_topic_counts(world: World, user_ids: np.ndarray) -> np.ndarray:
    """(N, T) how many of each user's history clicks fall on each topic (observable)."""
    history_topics = world.item_topic[world.history[user_ids]]
    counts = np.zeros((len(user_ids), len(world.topic_popularity)))
    np.add.at(counts, (np.arange(len(user_ids))[:, None], history_topics), 1.0)
    return counts


def history_log_share(world: World, user_ids: np.ndarray) -> np.ndarray:
    """Eq. 6: (N, T) log of each topic's smoothed share of the user's click history.

    What an upstream ranker can know of a taste: it learns from the same logs as the
    re-ranker, so it cannot read the hidden theta_u.
    """
    counts = history_topic_counts(world, user_ids)
    n_clicks, n_topics = world.history.shape[1], counts.shape[1]
    return np.log((counts + 1.0) / (n_clicks + n_topics))


def initial_lists(
    config: SimulatorConfig, world: World, user_ids: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Eq. 6: (N, L) item ids: retrieve a candidate pool, rank it point-wise, cut to L."""
    c = config
    draws = 2 * c.candidate_pool  # with replacement; duplicates are dropped below
    retrieval = 0.5 * _softmax(world.taste[user_ids]) + 0.5 * world.topic_popularity
    topics = _categorical(rng, retrieval, draws)
    pool = _within_topic(rng, world, topics, 0.5 * world.quality)
    # Keep the first occurrence of each item, then the first `candidate_pool` distinct ones.
    by_id = np.argsort(pool, axis=1, kind="stable")
    sorted_pool = np.take_along_axis(pool, by_id, axis=1)
    repeat_sorted = np.zeros_like(sorted_pool, dtype=bool)
    repeat_sorted[:, 1:] = sorted_pool[:, 1:] == sorted_pool[:, :-1]
    repeat = np.empty_like(repeat_sorted)
    np.put_along_axis(repeat, by_id, repeat_sorted, axis=1)
    in_pool = ~repeat & (np.cumsum(~repeat, axis=1) <= c.candidate_pool)
    if (in_pool.sum(axis=1) < c.list_length).any():
        raise RuntimeError("candidate pool smaller than list_length; raise candidate_pool")

    noisy_quality = world.item_dense[pool, -1]
    observed_taste = history_log_share(world, user_ids)
    score = (
        noisy_quality
        + c.initial_personalization * np.take_along_axis(observed_taste, world.item_topic[pool], 1)
        + c.initial_noise * rng.standard_normal(pool.shape)
    )
    score = np.where(in_pool, score, -np.inf)
    top = np.argsort(-score, axis=1, kind="stable")[:, : c.list_length]
    return np.take_along_axis(pool, top, axis=1)


def simulate_split(
    config: SimulatorConfig,
    world: World,
    n_lists: int,
    rng: np.random.Generator,
    progress: bool = True,
    desc: str = "",
    shuffle: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Logged data for one split, CHUNK lists at a time: users, initial lists, clicks, truth.

    ``shuffle`` shows each initial list in a uniformly random order (the exploration bucket).

    Memory holds one chunk, plus the split's user ids (8 bytes a list, drawn up front so a
    seed gives the same data as before chunked writing).
    """
    model = ClickModel(world, config)
    user_ids = rng.integers(0, config.n_users, size=n_lists)
    bar = tqdm(total=n_lists, desc=desc, disable=not progress, unit="list", unit_scale=True)
    for start in range(0, n_lists, CHUNK):
        users = user_ids[start : start + CHUNK]
        items = initial_lists(config, world, users, rng)
        chunk = {}
        if shuffle:
            initial = items
            items = rng.permuted(items, axis=1)
            # Items of a list are distinct: each shown item's slot in the initial list.
            chunk["initial_ranks"] = (items[:, :, None] == initial[:, None, :]).argmax(axis=2)
        mask = np.ones(items.shape, dtype=bool)
        probabilities = model.click_probabilities(users, items, mask)
        clicks = (rng.random(items.shape) < probabilities).astype(np.int8)
        oracle = np.take_along_axis(items, model.greedy_oracle(users, items, mask), axis=1)
        bar.update(len(users))
        yield chunk | {
            "user_ids": users,
            "item_ids": items,
            "clicks": clicks,
            "expected_initial": probabilities.sum(axis=1),
            "expected_oracle": model.expected_clicks(users, oracle, mask),
        }
    bar.close()


def _list_column(rows: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    """(N, L) array -> Arrow list column (lists may be variable length on read)."""
    n, length = rows.shape
    offsets = pa.array(np.arange(0, (n + 1) * length, length, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(rows.ravel(), type=value_type))


def simulate(config: SimulatorConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Write a full simulated dataset to ``out_dir`` and return its statistics.

    Files: ``items.parquet``, ``users.parquet``, ``lists_{train,valid,test,explore}.parquet``
    or, with ``config.shard_lists``, ``lists_<split>/part-*.parquet`` (observable; explore only
    with ``n_explore_lists`` > 0),
    ``truth/world.npz`` and ``truth/simulator.json`` (hidden, evaluation only), ``stats.json``.
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    splits = (*SPLITS, EXPLORE) if config.n_explore_lists else SPLITS
    seeds = _seed_streams(config)
    world = make_world(config, np.random.default_rng(seeds[0]))
    sizes = (config.n_train_lists, config.n_valid_lists, config.n_test_lists)
    n_by_split = dict(zip(splits, (*sizes, config.n_explore_lists), strict=False))
    stats: dict = {"config": to_dict(config), "splits": {}}
    list_offset = 0
    for split, seed in zip(splits, seeds[1:], strict=False):
        sums = dict.fromkeys(("clicks", "with_click", "initial", "oracle"), 0.0)
        chunks = simulate_split(
            config,
            world,
            n_by_split[split],
            np.random.default_rng(seed),
            progress,
            split,
            shuffle=split == EXPLORE,
        )
        schema = EXPLORE_SCHEMA if split == EXPLORE else LIST_SCHEMA
        with ListWriter(out_dir, split, config.shard_lists, schema) as writer:
            for chunk in chunks:
                n = len(chunk["user_ids"])
                columns = {
                    "list_id": np.arange(list_offset, list_offset + n, dtype=np.int64),
                    "user_id": chunk["user_ids"].astype(np.int32),
                    "item_ids": _list_column(chunk["item_ids"].astype(np.int32), pa.int32()),
                    "clicks": _list_column(chunk["clicks"], pa.int8()),
                }
                if "initial_ranks" in chunk:
                    ranks = chunk["initial_ranks"].astype(np.int16)
                    columns["initial_ranks"] = _list_column(ranks, pa.int16())
                table = pa.table(columns, schema=schema)
                writer.write(table)
                list_offset += n
                clicks = chunk["clicks"].sum(axis=1)
                sums["clicks"] += float(clicks.sum())
                sums["with_click"] += float((clicks > 0).sum())
                sums["initial"] += float(chunk["expected_initial"].sum())
                sums["oracle"] += float(chunk["expected_oracle"].sum())
        lists = max(n_by_split[split], 1)  # an empty split reports zeros
        stats["splits"][split] = {
            "lists": n_by_split[split],
            "mean_clicks": sums["clicks"] / lists,
            "share_lists_with_click": sums["with_click"] / lists,
            "mean_expected_clicks_initial": sums["initial"] / lists,
            "mean_expected_clicks_oracle": sums["oracle"] / lists,
        }
        if config.shard_lists:
            stats["splits"][split]["shards"] = writer.parts

    write_parquet(
        out_dir / "items.parquet",
        pa.table(
            {
                "item_id": pa.array(np.arange(config.n_items, dtype=np.int32)),
                "topic": pa.array(world.item_topic.astype(np.int16)),
                "features": _list_column(world.item_dense, pa.float32()),
            }
        ),
    )
    write_parquet(
        out_dir / "users.parquet",
        pa.table(
            {
                "user_id": pa.array(np.arange(config.n_users, dtype=np.int32)),
                "profile": _list_column(world.profile, pa.float32()),
                "history": _list_column(world.history.astype(np.int32), pa.int32()),
            }
        ),
    )
    save_truth(world, config, out_dir / "truth")
    stats["seconds"] = round(time.perf_counter() - started, 2)
    write_json(out_dir / "stats.json", stats)
    return stats


def _seed_streams(config: SimulatorConfig) -> list[np.random.SeedSequence]:
    """The world's stream, one per split (exploration last), and a spare for fresh lists.
    Spawned seeds depend on their index only: adding a stream leaves the others alone."""
    return np.random.SeedSequence(config.seed).spawn(1 + len(SPLITS) + 2)


def simulated_world(config: SimulatorConfig) -> tuple[World, np.random.Generator]:
    """The world `simulate` writes for ``config``, and a generator for fresh lists that no
    split of it uses (benchmarks that draw their own lists from the same world)."""
    seeds = _seed_streams(config)
    return make_world(config, np.random.default_rng(seeds[0])), np.random.default_rng(seeds[-1])


def save_truth(world: World, config: SimulatorConfig, truth_dir: Path) -> None:
    """The hidden world, so evaluation can compute expected clicks of any ordering."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(truth_dir / "world.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **world.__dict__)
    write_json(truth_dir / "simulator.json", to_dict(config))


def load_click_model(data_dir: str | Path) -> ClickModel:
    """The click model of a simulated dataset, from its ``truth/`` folder."""
    truth_dir = Path(data_dir) / "truth"
    world_path, config_path = truth_dir / "world.npz", truth_dir / "simulator.json"
    for path in (world_path, config_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: not found; expected counts need a simulated dataset (`prm simulate`)"
            )
    config = from_dict(SimulatorConfig, json.loads(config_path.read_text()))
    with np.load(world_path) as arrays:
        world = World(**{k: arrays[k] for k in arrays.files})
    return ClickModel(world, config)
