"""Where the oracle's gain comes from: simple orderings scored by the true click model.

    .venv/bin/python benchmarks/simulator_stats.py [--config configs/demo.yaml] [--lists 10000]

Prints a markdown table of expected clicks per list and the share of the greedy oracle's gain
over the initial ranking, for orderings that each use one kind of hidden knowledge.
"""

from __future__ import annotations

import argparse

import numpy as np

from prm.config import ExperimentConfig, load_config
from prm.data.simulator import ClickModel, initial_lists, make_world


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
