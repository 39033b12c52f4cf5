"""How much of the user's hidden taste and saturation does PV carry? A linear probe.

    .venv/bin/python benchmarks/pv_probe.py --data runs/demo/data \
        --pretrain runs/demo/pretrain [runs/pv_v1/pretrain ...]

PRM reaches the user only through PV, so PV must carry what makes a list good for this user:
the taste for each item's topic (theta_u[t_i], Eq. 3 of docs/simulator.md) and the
saturation lambda_u (Eq. 3, 8). For each pre-training folder, on the validation lists
(hidden truth, used here only to grade), least squares from PV to

- theta_u[t_i], item by item (R^2);
- log lambda_u, from the list-averaged PV (R^2);

beside the same probes from the observables a production CTR model could be handed directly:
the history's log share of the item's topic, and the profile. Also counts PV's nearly dead
units (standard deviation below 0.01), which carry nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from prm.data.loaders import load_list_data
from prm.data.simulator import history_log_share, load_click_model
from prm.evaluation.report import markdown_table

MAX_ITEMS = 200_000  # items drawn for the item-level probes


def r_squared(x: np.ndarray, y: np.ndarray) -> float:
    """R^2 of the least-squares fit of y on x (with an intercept), in-sample on many rows."""
    design = np.column_stack([x, np.ones(len(x))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    return float(1 - residual.var() / y.var())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/demo/data")
    parser.add_argument("--pretrain", nargs="+", default=["runs/demo/pretrain"])
    args = parser.parse_args()
    valid = load_list_data(args.data, splits=("valid",)).splits["valid"]
    world = load_click_model(args.data).world
    rows_index, slots_index = np.nonzero(valid.mask)
    pick = np.random.default_rng(0).permutation(len(rows_index))[:MAX_ITEMS]
    rows_index, slots_index = rows_index[pick], slots_index[pick]
    users = valid.user_ids[rows_index]
    topics = world.item_topic[valid.item_ids[rows_index, slots_index]]
    taste = world.taste[users, topics]
    log_saturation = np.log(world.saturation[valid.user_ids])
    history = history_log_share(world, users)[np.arange(len(users)), topics]

    rows = [
        [
            "observables: history share of the topic; profile",
            f"{r_squared(history[:, None], taste):.2f}",
            f"{r_squared(world.profile[valid.user_ids], log_saturation):.2f}",
            "–",
        ]
    ]
    for folder in args.pretrain:
        pv = np.load(Path(folder) / "pv_valid.npy")
        item_pv = pv[rows_index, slots_index]
        list_pv = pv.sum(axis=1) / valid.mask.sum(axis=1, keepdims=True)
        dead = int((pv[valid.mask].std(axis=0) < 0.01).sum())
        rows.append(
            [
                f"PV of {folder} ({pv.shape[-1]} units)",
                f"{r_squared(item_pv, taste):.2f}",
                f"{r_squared(list_pv, log_saturation):.2f}",
                str(dead),
            ]
        )
    print(f"\nLinear probes on {len(valid)} validation lists ({len(users)} items)\n")
    header = ["input", "R^2 of theta_u[t_i]", "R^2 of log lambda_u", "dead units"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
