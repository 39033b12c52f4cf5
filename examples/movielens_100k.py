"""Bring your own logs: MovieLens 100K in prm's data format, then every step to a served model.

The first half writes the four tables of docs/data.md from the raw MovieLens files with plain
numpy and pyarrow; change it to read your own impression logs. The second half runs the same
commands you would run by hand:

    prm check-data -> prm pretrain -> prm train -> prm evaluate -> prm export -> prm serve

and asks the served model to re-rank one list over HTTP.

    python examples/movielens_100k.py [ML100K_DIR] [--out runs/ml100k_example]
                                      [--max-users N] [--epochs N]

ML100K_DIR holds u.data, u.item and u.user; by default $PRM_DATA_DIR/ml-100k, else
../shared/data/ml-100k beside the repository.

From ratings to impression lists:
- each user's first 20 ratings (every user has at least 20) are their history, no list;
- the later ratings are cut into sessions (a gap of over an hour starts a new one), and long
  sessions into lists of at most 20 movies: one list per session;
- a movie is clicked when it was rated 4 or 5;
- the initial order, the one the re-ranker improves on, is a point-wise score: popularity
  (ratings before the validation period), most popular first;
- lists are split by time: the first 80 % train, then 10 % valid, the last 10 % test.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HISTORY_RATINGS = 20  # each user's first ratings: their history, never shown as a list
SESSION_GAP = 3600  # seconds without a rating that end a session
MAX_LIST = 20  # longer sessions become several lists of at most this many movies
CLICK_RATING = 4  # a rating of at least this is a click
SPLITS = {"train": 0.8, "valid": 0.1, "test": 0.1}  # shares of the lists, in time order


def default_source() -> Path:
    data_dir = os.environ.get("PRM_DATA_DIR")
    root = Path(data_dir) if data_dir else Path(__file__).resolve().parents[2] / "shared" / "data"
    return root / "ml-100k"


# --- 1. the raw files --------------------------------------------------------------------------


def read_ratings(source: Path) -> np.ndarray:
    """u.data as an (n, 4) int64 array: user_id, item_id (both from 0), rating, unix time."""
    ratings = np.loadtxt(source / "u.data", dtype=np.int64, delimiter="\t")
    ratings[:, :2] -= 1  # MovieLens ids start at 1; ours are row numbers, from 0
    return ratings


def read_genres(source: Path) -> np.ndarray:
    """u.item's 19 genre flags per movie, (n_items, 19)."""
    lines = (source / "u.item").read_text(encoding="latin-1").splitlines()
    return np.array([line.split("|")[5:] for line in lines if line], dtype=np.float32)


def read_users(source: Path) -> list[list[str]]:
    """u.user rows: id, age, gender, occupation, zip code."""
    return [line.split("|") for line in (source / "u.user").read_text().splitlines() if line]


# --- 2. ratings -> impression lists --------------------------------------------------------


def sessions(ratings: np.ndarray) -> tuple[dict[int, list[int]], list[dict]]:
    """Each user's history (movies rated 4+ among the first ratings) and their later sessions
    as lists: user_id, item_ids (rating order for now), clicks and the time it ended."""
    history: dict[int, list[int]] = {}
    lists = []
    for user in np.unique(ratings[:, 0]):
        mine = ratings[ratings[:, 0] == user]
        mine = mine[np.lexsort((mine[:, 1], mine[:, 3]))]  # by time, ties by item id
        first, later = mine[:HISTORY_RATINGS], mine[HISTORY_RATINGS:]
        history[int(user)] = first[first[:, 2] >= CLICK_RATING, 1].tolist()
        if not len(later):
            continue
        new_session = np.diff(later[:, 3], prepend=later[0, 3]) > SESSION_GAP
        for session in np.split(later, np.flatnonzero(new_session)):
            for start in range(0, len(session), MAX_LIST):
                shown = session[start : start + MAX_LIST]
                lists.append(
                    {
                        "user_id": int(user),
                        "item_ids": shown[:, 1].tolist(),
                        "clicks": (shown[:, 2] >= CLICK_RATING).astype(int).tolist(),
                        "time": int(shown[:, 3].max()),
                    }
                )
    lists.sort(key=lambda row: row["time"])
    return history, lists


def write_dataset(source: Path, out: Path, max_users: int | None) -> dict:
    """The four tables of docs/data.md, written to ``out``."""
    ratings = read_ratings(source)
    genres = read_genres(source)
    users = read_users(source)
    if max_users is not None:  # the first users only: a smaller, faster dataset
        ratings = ratings[ratings[:, 0] < max_users]
        users = users[:max_users]
    history, lists = sessions(ratings)

    # Time split, and popularity from what was known before the validation period.
    n_train = int(len(lists) * SPLITS["train"])
    n_valid = int(len(lists) * SPLITS["valid"])
    known_until = lists[n_train - 1]["time"]
    popularity = np.bincount(ratings[ratings[:, 3] <= known_until, 1], minlength=len(genres))

    # The initial ranking: most popular first (a stable sort keeps rating order for ties).
    for row in lists:
        order = np.argsort(-popularity[row["item_ids"]], kind="stable")
        row["item_ids"] = [row["item_ids"][i] for i in order]
        row["clicks"] = [row["clicks"][i] for i in order]

    out.mkdir(parents=True, exist_ok=True)
    # items.parquet: item_id = row number; topic = the first genre; dense features.
    popular = np.log1p(popularity) / np.log1p(popularity.max())
    features = np.concatenate([genres, popular[:, None]], axis=1).astype(np.float32)
    items = pa.table(
        {
            "item_id": pa.array(np.arange(len(genres)), pa.int64()),
            "topic": pa.array(genres.argmax(axis=1), pa.int64()),
            "features": pa.array(features.tolist(), pa.list_(pa.float32())),
        }
    )
    pq.write_table(items, out / "items.parquet")

    # users.parquet: user_id = row number; profile = age, gender, occupation one-hot.
    occupations = sorted({user[3] for user in users})
    profiles = [
        [int(user[1]) / 100, float(user[2] == "M")] + [float(user[3] == job) for job in occupations]
        for user in users
    ]
    users_table = pa.table(
        {
            "user_id": pa.array(np.arange(len(users)), pa.int64()),
            "profile": pa.array(profiles, pa.list_(pa.float32())),
            "history": pa.array(
                [history.get(u, []) for u in range(len(users))], pa.list_(pa.int64())
            ),
        }
    )
    pq.write_table(users_table, out / "users.parquet")

    # lists_<split>.parquet: one row per shown list, items in the order shown.
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid)}
    bounds["test"] = (n_train + n_valid, len(lists))
    for split, (start, stop) in bounds.items():
        rows = lists[start:stop]
        table = pa.table(
            {
                "list_id": pa.array(range(start, stop), pa.int64()),
                "user_id": pa.array([row["user_id"] for row in rows], pa.int64()),
                "item_ids": pa.array([row["item_ids"] for row in rows], pa.list_(pa.int64())),
                "clicks": pa.array([row["clicks"] for row in rows], pa.list_(pa.int8())),
            }
        )
        pq.write_table(table, out / f"lists_{split}.parquet")
    return {"users": len(users), "items": len(genres), "lists": len(lists)}


# --- 3. the prm commands -------------------------------------------------------------------


def prm(*args: str) -> None:
    """Run one `prm` command as you would in a shell (here: this Python's prm)."""
    print(f"\n$ prm {shlex.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "prm.cli.main", *args], check=True)


def config(epochs: int) -> dict:
    """A small experiment config (the keys of configs/*.yaml); JSON is valid YAML."""
    return {
        "name": "ml100k_example",
        "pretrain": {"model": "deepfm", "epochs": epochs, "hidden_dims": [32, 16]},
        "model": {"d_model": 32, "n_heads": 2, "n_blocks": 1, "d_ff": 64},
        "train": {"epochs": epochs, "batch_size": 64, "patience": 3},
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_and_rerank(bundle: Path, data: Path, log_path: Path) -> dict:
    """Start `prm serve` on a free loopback port, re-rank the first test list, stop it."""
    port = free_port()
    args = ["serve", "--model", str(bundle), "--port", str(port)]
    print(f"\n$ prm {shlex.join(args)} &", flush=True)
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prm.cli.main", *args], stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # /readyz answers 200 once the model is loaded
            if server.poll() is not None:
                raise RuntimeError(f"prm serve exited; its log:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prm serve not ready after 120 s; see {log_path}")
            time.sleep(0.5)

        shown = pq.read_table(data / "lists_test.parquet").slice(0, 1).to_pylist()[0]
        request = {
            "user": {"user_id": shown["user_id"]},
            "items": [{"item_id": item} for item in shown["item_ids"]],
        }
        print(
            f"\n$ curl -s {url}/rerank -H 'content-type: application/json' "
            f"-d '{json.dumps(request)}'"
        )
        answer = httpx.post(f"{url}/rerank", json=request, timeout=10)
        answer.raise_for_status()
        reranked = answer.json()
        clicked = {i for i, c in zip(shown["item_ids"], shown["clicks"], strict=True) if c}
        print(f"model {reranked['model_version']}; new order (* = clicked in the log):")
        for rank, item in enumerate(reranked["items"][:10]):
            mark = "*" if item["item_id"] in clicked else " "
            print(
                f"  {rank:2d}. item {item['item_id']:4d} {mark} score {item['score']:+.3f} "
                f"(was {item['initial_position']})"
            )
        return reranked
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source",
        nargs="?",
        type=Path,
        default=default_source(),
        help="the ml-100k folder (u.data, u.item, u.user); default $PRM_DATA_DIR/ml-100k",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/ml100k_example"))
    parser.add_argument("--max-users", type=int, help="use the first N users only (faster)")
    parser.add_argument("--epochs", type=int, default=5, help="pre-training and training epochs")
    args = parser.parse_args(argv)
    if not (args.source / "u.data").is_file():
        print(
            f"MovieLens 100K not found at {args.source} (no u.data there). Download "
            "https://files.grouplens.org/datasets/movielens/ml-100k.zip, unzip it, and pass "
            "the ml-100k folder as the first argument, or set PRM_DATA_DIR to the folder "
            "that holds ml-100k/.",
            file=sys.stderr,
        )
        return 2

    started = time.perf_counter()
    out = args.out
    data, pv, run, bundle = out / "data", out / "pretrain", out / "prm", out / "bundle"
    counts = write_dataset(args.source, data, args.max_users)
    print(
        f"wrote {data}: {counts['users']} users, {counts['items']} items, {counts['lists']} lists"
    )
    config_path = out / "config.yaml"
    config_path.write_text(json.dumps(config(args.epochs), indent=2))

    prm("check-data", str(data))
    common = ["--config", str(config_path), "--quiet"]
    prm("pretrain", *common, "--data", str(data), "--out", str(pv))
    prm("train", *common, "--data", str(data), "--pv", str(pv), "--out", str(run))
    prm("evaluate", *common, "--data", str(data), "--pv", str(pv), "--run", str(run))
    prm("export", "--run", str(run), "--ctr", str(pv / "ctr_model.pt"), "--out", str(bundle))
    serve_and_rerank(bundle, data, out / "serve.log")
    print(f"\ndone in {time.perf_counter() - started:.0f} s; everything is under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
