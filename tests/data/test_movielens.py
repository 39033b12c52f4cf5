from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from prm.data.files import DATA_DIR_ENV, default_data_dir
from prm.data.loaders import DataError, load_list_data
from prm.data.movielens import MovieLensProtocol, convert_movielens

N_USERS, N_ITEMS, N_GENRES, PER_USER = 5, 50, 19, 20
PROTOCOL = MovieLensProtocol(
    rated_per_list=4, negatives_per_list=6, list_length=8, valid_fraction=0.2, test_fraction=0.2
)


def write_ml100k(root: Path, seed: int = 0) -> dict[tuple[int, int], tuple[int, int]]:
    """A tiny folder in the real ml-100k format; returns (user, item) -> (rating, time), 1-based."""
    rng = np.random.default_rng(seed)
    folder = root / "ml-100k"
    folder.mkdir(parents=True)
    items = []
    for movie in range(1, N_ITEMS + 1):
        flags = np.zeros(N_GENRES, dtype=int)
        flags[rng.choice(N_GENRES, size=rng.integers(1, 4), replace=False)] = 1
        title = "Café Society (1995)" if movie == 1 else f"Movie {movie} (1990)"
        date = "" if movie == 2 else f"01-Jan-{1950 + movie}"
        url = f"http://us.imdb.com/M/title-exact?Movie%20{movie}"
        items.append("|".join([str(movie), title, date, "", url, *map(str, flags)]))
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    jobs = ["technician", "writer", "student"]
    users = [f"{u}|{20 + 7 * u}|{'MF'[u % 2]}|{jobs[u % 3]}|0{u}000" for u in range(1, N_USERS + 1)]
    (folder / "u.user").write_text("\n".join(users) + "\n")
    ratings = {}
    for user in range(1, N_USERS + 1):
        start = 880_000_000 + int(rng.integers(0, 10**7))
        for step, item in enumerate(rng.choice(N_ITEMS, size=PER_USER, replace=False) + 1):
            ratings[user, int(item)] = (int(rng.integers(1, 6)), start + 60 * step)
    lines = [f"{u}\t{i}\t{r}\t{t}" for (u, i), (r, t) in ratings.items()]
    (folder / "u.data").write_text("\n".join(rng.permutation(lines)) + "\n")
    return ratings


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("ml")
    ratings = write_ml100k(root / "data")
    stats = convert_movielens(root / "out", data_dir=root / "data", protocol=PROTOCOL)
    return root, ratings, stats


def test_converted_folder_loads_like_a_simulated_one(converted) -> None:
    root, _, stats = converted
    data = load_list_data(root / "out")
    sizes = {split: len(lists) for split, lists in data.splits.items()}
    assert sum(sizes.values()) == N_USERS * 3  # 10 later ratings per user -> sessions of 4, 3, 3
    assert sizes == {split: stats["splits"][split]["lists"] for split in sizes}
    assert sizes["valid"] == sizes["test"] == 3
    assert data.catalog.profile.shape == (N_USERS, 1 + 1 + 3)  # age, female, 3 occupations
    assert data.items.dense.shape == (N_ITEMS, N_GENRES + 3)
    assert all(lists.list_length == PROTOCOL.list_length for lists in data.splits.values())


def test_lists_hold_later_ratings_and_unrated_items_with_the_right_clicks(converted) -> None:
    root, ratings, _ = converted
    data = load_list_data(root / "out")
    histories = data.catalog.history
    seen = {"rated": 0, "sampled": 0}
    for lists in data.splits.values():
        for row in range(len(lists)):
            user = int(lists.user_ids[row])
            later_start = sorted(t for (u, _), (_, t) in ratings.items() if u == user + 1)[10]
            history = set(histories[user][data.catalog.history_mask[user]].tolist())
            for item, click in zip(
                lists.item_ids[row][lists.mask[row]],
                lists.labels[row][lists.mask[row]],
                strict=True,
            ):
                rating, when = ratings.get((user + 1, int(item) + 1), (0, None))
                assert click == (rating >= 4)
                seen["sampled" if when is None else "rated"] += 1
                assert when is None or when >= later_start  # rated items come from later
                assert int(item) not in history
    assert min(seen.values()) > 0
    for user in range(N_USERS):
        for item in histories[user][data.catalog.history_mask[user]]:
            assert ratings[user + 1, int(item) + 1][0] >= 4


def test_splits_are_ordered_in_time_and_items_keep_their_genres(converted) -> None:
    root, _, _ = converted
    times = {
        split: pq.read_table(root / "out" / f"lists_{split}.parquet")["time"].to_numpy()
        for split in ("train", "valid", "test")
    }
    assert times["train"].max() <= times["valid"].min() <= times["valid"].max()
    assert times["valid"].max() <= times["test"].min()
    items = pq.read_table(root / "out" / "items.parquet").to_pydict()
    flags = np.array(items["features"])[:, :N_GENRES]
    assert items["topic"] == np.argmax(flags, axis=1).tolist()


def test_conversion_is_deterministic(converted, tmp_path: Path) -> None:
    root, _, _ = converted
    convert_movielens(tmp_path, data_dir=root / "data", protocol=PROTOCOL)
    for name in ("items", "users", "lists_train", "lists_test"):
        assert pq.read_table(tmp_path / f"{name}.parquet").equals(
            pq.read_table(root / "out" / f"{name}.parquet")
        )


@pytest.mark.parametrize(
    ("file", "line_no", "bad", "message"),
    [
        ("u.data", 3, "1\t2\t9\t880000000", "bad rating '9'"),
        ("u.data", 3, "1\t99\t3\t880000000", "bad item id '99'"),
        ("u.data", 3, "1\t2\t3", "3 fields, expected 4"),
        ("u.user", 2, "2|30|X|writer|01000", "bad gender 'X'"),
        ("u.item", 2, "2|Movie|01-Jan-1990||url|1", "6 fields, expected 24"),
        ("u.item", 2, "3|Movie|01-Jan-1990||url" + "|0" * N_GENRES, "movie id 3, expected 2"),
    ],
)
def test_malformed_lines_name_file_and_line(
    tmp_path: Path, file: str, line_no: int, bad: str, message: str
) -> None:
    write_ml100k(tmp_path)
    path = tmp_path / "ml-100k" / file
    lines = path.read_bytes().decode("latin-1").splitlines()
    lines[line_no - 1] = bad
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataError, match=f"{file}:{line_no}: {message}"):
        convert_movielens(tmp_path / "out", data_dir=tmp_path, protocol=PROTOCOL)


def test_missing_data_folder_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=f"nowhere/ml-100k: dataset folder not found.*{DATA_DIR_ENV}"
    ):
        convert_movielens(tmp_path / "out", data_dir=tmp_path / "nowhere")


REAL = default_data_dir() / "ml-100k"


@pytest.mark.skipif(
    not REAL.is_dir(), reason=f"{REAL} not found (set {DATA_DIR_ENV} to the shared data folder)"
)
def test_real_ml100k_converts(tmp_path: Path) -> None:
    stats = convert_movielens(tmp_path)
    assert (stats["users"], stats["items"]) == (943, 1682)
    data = load_list_data(tmp_path)
    assert all(len(data.splits[s]) > 400 for s in ("train", "valid", "test"))
    assert all(lists.list_length == 30 for lists in data.splits.values())
    assert all(lists.has_click().mean() > 0.8 for lists in data.splits.values())
