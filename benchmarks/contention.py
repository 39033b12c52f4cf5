"""Each training stage, idle and beside a CPU-bound process, under OpenMP wait policies.

    .venv/bin/python benchmarks/contention.py [--seconds 20]

On a shared machine another process may hold a core. OpenMP threads that spin at every
barrier waiting for a thread that is not running then waste their time slices, and the
smaller the operations, the more barriers per second. Stages, each timed for about
``--seconds`` (the best of three windows) in a fresh subprocess (the wait policy is read when
the OpenMP runtime starts):

* ``pretrain``: CTR pre-training steps of the demo's DeepFM (batch 1024) on the demo's data;
* ``prm``: PRM training steps at the demo's size (``Trainer.train_epoch``, batch 256);
* ``small``: PRM-BASE training steps at MQ2008's size (lists of 30, 46 features, batch 32),
  as `prm benchmark mq2008` runs them.

Settings: ``spin`` (OMP_WAIT_POLICY=ACTIVE), ``gomp default`` (unset: libgomp spins a while,
then sleeps), ``passive`` (threads sleep at once) and ``passive, 1 thread``. Each runs idle and
with one busy-looping process beside it; the table gives steps per second and the busy / idle
slowdown, from which `prm`'s default is to be chosen (the target: every stage within 2.5x of
its idle speed beside a busy process, idle speed within 5 % of today's). Run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("pretrain", "prm", "small")
WINDOWS = 3  # timing windows per measurement; the best is kept
SETTINGS = {  # name -> (OpenMP variables, whether the step calls prm.threads.follow_load)
    "spin": ({"OMP_WAIT_POLICY": "ACTIVE"}, False),
    "gomp default": ({}, False),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, False),
    "passive, 1 thread": ({"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}, False),
    "prm: load-following": ({}, True),
}


def run_stage(stage: str, seconds: float, follow: bool) -> tuple[float, int]:
    """Steps per second of ``stage`` in this process, after one warm-up step; with ``follow``
    each step first calls :func:`prm.threads.follow_load`, as prm's training loops do. Also
    returns how often that changed the thread count."""
    import numpy as np
    import torch

    from prm.config import PRMConfig
    from prm.data.batch import ListDataset
    from prm.registry import ModelSpec
    from prm.training.losses import softmax_cross_entropy

    rng = np.random.default_rng(0)
    if stage == "pretrain":
        from prm.config import load_config
        from prm.pretrain.ctr import build_ctr_model

        config = load_config(ROOT / "configs" / "demo.yaml")
        model = build_ctr_model(config.pretrain, _tables(config, rng))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        users = torch.from_numpy(rng.integers(0, 500, 1024))
        items = torch.from_numpy(rng.integers(0, 400, 1024))
        clicks = torch.from_numpy((rng.random(1024) < 0.1).astype(np.float32))

        def step() -> None:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(users, items), clicks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    else:
        length, d_feature, batch = (30, 28, 256) if stage == "prm" else (30, 46, 32)
        d_pv = 17 if stage == "prm" else 0
        model_config = (
            PRMConfig(d_model=64, n_heads=2, n_blocks=2, d_ff=128, use_pe=False, use_pv=True)
            if stage == "prm"
            else PRMConfig(d_model=48, n_heads=2, n_blocks=2, d_ff=96, use_pv=False)
        )
        model = ModelSpec.of("prm", model_config, d_feature, d_pv).build()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        lists = ListDataset.from_arrays(
            rng.normal(size=(batch, length, d_feature)),
            rng.random((batch, length)) < 0.1,
            pv=rng.normal(size=(batch, length, d_pv)),
        )
        data = lists.batch(np.arange(batch))

        def step() -> None:
            loss = softmax_cross_entropy(model(data), data.labels, mask=data.mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    from prm.threads import follow_load

    step()
    rates = []
    for _ in range(WINDOWS):  # the best window: bursts of load from elsewhere filtered out
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / WINDOWS:
            if follow:
                follow_load()
            step()
            steps += 1
        rates.append(steps / (time.perf_counter() - started))
    return max(rates), follow_load.changes


def _tables(config, rng):
    """CTR tables of the demo's feature shapes (fewer users and items: the step's cost does
    not depend on their number)."""
    import numpy as np

    from prm.data.tables import Catalog

    sim = config.simulator
    n_users, n_items = 500, 400
    return Catalog(
        profile=rng.normal(size=(n_users, sim.d_profile)).astype(np.float32),
        history=rng.integers(0, n_items, (n_users, sim.history_length)),
        history_mask=np.ones((n_users, sim.history_length), bool),
        item_features=rng.normal(size=(n_items, sim.n_topics + sim.d_item_dense)).astype(
            np.float32
        ),
        item_topic=rng.integers(0, sim.n_topics, n_items),
    )


def measure(stage: str, setting: str, busy: bool, seconds: float) -> tuple[float, int]:
    """Run one stage in a subprocess with the setting's OpenMP variables over this one's."""
    env, follow = SETTINGS[setting]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")} | env
    child_env.pop("PRM_THREADS", None)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--stage", stage, "--seconds", str(seconds)]
            + (["--follow-load"] if follow else []),
            env=child_env,
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        if hog is not None:
            hog.kill()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["steps_per_second"], result["thread_changes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--follow-load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help="setting names separated by ';' (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per cell (median)")
    args = parser.parse_args()
    if args.stage:
        rate, changes = run_stage(args.stage, args.seconds, args.follow_load)
        print(json.dumps({"steps_per_second": rate, "thread_changes": changes}))
        return
    from prm.evaluation.report import markdown_table
    from prm.experiments.report import machine

    names = args.settings.split(";") if args.settings else list(SETTINGS)
    rates: dict[tuple[str, str, bool], list[float]] = {}
    changes: dict[tuple[str, str, bool], list[int]] = {}
    for round_ in range(args.rounds):  # settings interleaved, so drift in the machine's speed
        # falls on all of them alike; the order flips every round, since a measurement right
        # after a busy one runs slower on a VM whose CPU quota the busy one used up
        order = names if round_ % 2 == 0 else names[::-1]
        for stage in STAGES:
            for name in order:
                for busy in (False, True) if round_ % 2 == 0 else (True, False):
                    rate, changed = measure(stage, name, busy, args.seconds)
                    rates.setdefault((stage, name, busy), []).append(rate)
                    changes.setdefault((stage, name, busy), []).append(changed)
                    print(
                        json.dumps([round_, stage, name, busy, round(rate, 1), changed]), flush=True
                    )
    rows = []
    for stage in STAGES:
        for name in names:
            idle, busy = (rates[stage, name, b] for b in (False, True))
            default = rates[stage, "gomp default", False] if "gomp default" in names else idle
            # Paired by round: this setting's idle speed over the default's in the same round.
            ratio = np.median(np.array(idle) / np.array(default))
            idle_rate, busy_rate = float(np.median(idle)), float(np.median(busy))
            rows.append(
                [stage, name, f"{idle_rate:.1f}", f"{ratio:.2f}", f"{busy_rate:.1f}"]
                + [f"{idle_rate / busy_rate:.2f}"]
                + [f"{max(changes[stage, name, b])}" for b in (False, True)]
            )
    header = [
        "stage",
        "setting",
        "steps/s idle",
        "idle / gomp default idle",
        "steps/s beside a busy process",
        "slowdown",
        "thread changes idle (most)",
        "thread changes busy (most)",
    ]
    print()
    print(markdown_table(header, rows))
    print(f"\n{machine()}")


if __name__ == "__main__":
    main()
