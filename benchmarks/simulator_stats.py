"""Where the oracle's gain comes from: simple orderings scored by the true click model.

    .venv/bin/python benchmarks/simulator_stats.py [--config configs/demo.yaml] [--lists 10000]

Prints a markdown table of expected clicks per list and the share of the greedy oracle's gain
over the initial ranking, for orderings that each use one kind of hidden knowledge, and for
two that use only what a re-ranker observes (a plug-in estimate of taste from the click
history and of quality from the noisy feature), to show how much the observables allow.
"""

from __future__ import annotations

import argparse

import numpy as np

from prm.config import ExperimentConfig, SimulatorConfig, load_config
from prm.data.simulator import (
    ClickModel,
    World,
    diversified_scores,
    history_topic_counts,
    initial_lists,
    make_world,
)


def history_taste(config: SimulatorConfig, world: World, users: np.ndarray) -> np.ndarray:
    """(N, T) MAP estimate of each user's taste from the topics of their history clicks.

    History topics are drawn from softmax(theta_u) with prior theta_u ~ N(0, s^2 I) (Eq. 3, 5),
    so the log-posterior is sum_t c_t theta_t - H logsumexp(theta) - |theta|^2 / (2 s^2);
    it is concave, and gradient ascent finds its maximum.
    """
    counts = history_topic_counts(world, users)
    taste = np.zeros_like(counts)
    for _ in range(300):
        shown = np.exp(taste - taste.max(axis=1, keepdims=True))
        shown /= shown.sum(axis=1, keepdims=True)
        taste += 0.05 * (counts - config.history_length * shown - taste / config.taste_scale**2)
    return taste


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="experiment config; defaults if omitted")
    parser.add_argument("--lists", type=int, default=10_000)
    args = parser.parse_args()
    config = (load_config(args.config) if args.config else ExperimentConfig()).simulator
    rng = np.random.default_rng(config.seed)
    world = make_world(config, rng)
    model = ClickModel(world, config)
    users = rng.integers(0, config.n_users, args.lists)
    items = initial_lists(config, world, users, rng)
    mask = np.ones(items.shape, dtype=bool)
    no_context = np.zeros(items.shape)

    def clicks_when_sorted_by(key: np.ndarray) -> float:
        order = np.argsort(-key, axis=1, kind="stable")
        return float(model.expected_clicks(users, np.take_along_axis(items, order, 1), mask).mean())

    oracle = np.take_along_axis(items, model.greedy_oracle(users, items, mask), 1)
    # Observable plug-in: E[q | x] = x / (1 + 0.5^2) for x = q + 0.5 eps (Eq. 2).
    topics = world.item_topic[items]
    observed = (
        config.relevance_weight
        * np.take_along_axis(history_taste(config, world, users), topics, axis=1)
        + config.quality_weight * world.item_dense[items, -1] / 1.25
    )
    rows = {
        "initial ranking (point-wise, weakly personalized)": float(
            model.expected_clicks(users, items, mask).mean()
        ),
        "sort by observable noisy quality": clicks_when_sorted_by(world.item_dense[items, -1]),
        "sort by true taste only": clicks_when_sorted_by(
            world.taste[users[:, None], world.item_topic[items]]
        ),
        "sort by true point-wise attractiveness (no list context)": clicks_when_sorted_by(
            model.attractiveness_logit(users, items, no_context, no_context)
        ),
        "observable plug-in, point-wise (history taste + quality feature)": clicks_when_sorted_by(
            observed
        ),
        "observable plug-in, one pass minus mean saturation per better item of its topic": (
            clicks_when_sorted_by(diversified_scores(observed, topics, config.saturation_mean))
        ),
        "greedy oracle (true model, list context)": float(
            model.expected_clicks(users, oracle, mask).mean()
        ),
    }
    initial = rows["initial ranking (point-wise, weakly personalized)"]
    gain = rows["greedy oracle (true model, list context)"] - initial
    print(f"{args.lists} lists of {config.list_length} items, simulator seed {config.seed}\n")
    print("| ordering | expected clicks per list | % of oracle gain |")
    print("|---|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.4f} | {100 * (value - initial) / gain:.1f} |")


if __name__ == "__main__":
    main()
