"""Peak memory of `prm train --stream` as sharded data grow tenfold, beside in-memory training.

    .venv/bin/python benchmarks/streaming_memory.py [--lists 50000] [--buffer 10000] [--work DIR]

Simulates two sharded datasets (``--lists`` and ten times as many training lists, 5,000 lists a
shard) with `prm simulate --shard-lists`, then trains PRM-BASE for one epoch on each with
`prm train --stream` (shuffle buffer of ``--buffer`` lists) and with `prm train` (the split
loaded whole). Each command runs in its own process; the table gives that process's peak
resident set size (``ru_maxrss``, from ``os.wait4``) and wall time, start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHARD_LISTS = 5_000


def config(train_lists: int, buffer: int) -> dict:
    """Default simulator (L = 30, 28 item features) and a small PRM-BASE: the data, not the
    model, should dominate memory."""
    return {
        "simulator": {
            "n_train_lists": train_lists,
            "n_valid_lists": 2_000,
            "n_test_lists": 2_000,
            "shard_lists": SHARD_LISTS,
        },
        "model": {"d_model": 32, "n_heads": 2, "n_blocks": 1, "d_ff": 64, "use_pv": False},
        "train": {"epochs": 1, "batch_size": 512, "shuffle_buffer": buffer},
    }


def prm(*args: str) -> tuple[float, float]:
    """Run `prm ARGS` in a child process: its peak RSS in MiB and wall time in seconds."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "prm.cli.main", *args, "--quiet"], stdout=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"prm {' '.join(args)} failed")
    return usage.ru_maxrss / 1024, time.perf_counter() - started  # ru_maxrss is in KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lists", type=int, default=50_000, help="training lists, small set")
    parser.add_argument("--buffer", type=int, default=10_000, help="shuffle buffer, in lists")
    parser.add_argument("--work", default="runs/streaming_memory", help="datasets and runs")
    args = parser.parse_args()
    work = Path(args.work)
    print(
        "| training lists | shards | on disk (MiB) | command | peak RSS (MiB) | wall seconds "
        "| lists/s (wall) |"
    )
    print("|---|---|---|---|---|---|---|")
    for lists in (args.lists, 10 * args.lists):
        data = work / f"data_{lists}"
        config_path = work / f"config_{lists}.json"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(config(lists, args.buffer)))
        train = ["train", "--config", str(config_path), "--data", str(data), "--base"]
        commands = {
            "simulate": ["simulate", "--config", str(config_path), "--out", str(data)],
            "train --stream": [*train, "--out", str(work / f"run_{lists}_stream"), "--stream"],
            "train (in memory)": [*train, "--out", str(work / f"run_{lists}_memory")],
        }
        for mode, command in commands.items():
            rss, seconds = prm(*command)
            parts = sorted((data / "lists_train").glob("part-*.parquet"))
            size = sum(p.stat().st_size for p in parts) / 2**20
            print(
                f"| {lists:,} | {len(parts)} | {size:.0f} | {mode} | {rss:,.0f} | {seconds:.0f} "
                f"| {lists / seconds:,.0f} |",
                flush=True,
            )
    print()
    print(f"shuffle buffer: {args.buffer:,} lists; {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()
