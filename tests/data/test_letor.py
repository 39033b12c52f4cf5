from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prm.data import letor
from prm.data.files import default_data_dir
from prm.data.letor import RankingQueries, load_ranking_file, parse_svmlight, split_queries
from prm.data.tables import DataError

LETOR_TEXT = """\
2 qid:10 1:0.5 2:1 3:0.25 #docid = GX1 inc = 1 prob = 0.5
0 qid:10 1:0 3:1e-1
# a comment line

1 qid:7 2:0.75 #docid = GX3
0 qid:3 1:1 2:1 3:1
0 qid:3 3:0.5
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_letor_lines_become_queries_in_file_order(tmp_path: Path) -> None:
    queries = parse_svmlight(_write(tmp_path / "train.txt", LETOR_TEXT))
    assert queries.qids.tolist() == [10, 7, 3]
    assert queries.groups.tolist() == [2, 1, 2]
    assert queries.labels.tolist() == [2, 0, 1, 0, 0]
    np.testing.assert_allclose(
        queries.features,
        [[0.5, 1, 0.25], [0, 0, 0.1], [0, 0.75, 0], [1, 1, 1], [0, 0, 0.5]],
    )
    assert queries.has_relevant().tolist() == [True, True, False]


def test_n_features_pads_missing_trailing_features(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.txt", LETOR_TEXT)
    assert parse_svmlight(path, n_features=46).features.shape == (5, 46)
    with pytest.raises(DataError, match=r"train.txt:1: bad feature index 3: .*n_features = 2"):
        parse_svmlight(path, n_features=2)


def test_second_load_reads_the_parquet_cache(tmp_path: Path, monkeypatch) -> None:
    path = _write(tmp_path / "train.txt", LETOR_TEXT)
    cache = tmp_path / "cache"
    first = load_ranking_file(path, cache_dir=cache)
    assert len(list(cache.glob("*.parquet"))) == 1

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed again despite the cache")

    monkeypatch.setattr(letor, "parse_svmlight", no_parsing)
    second = load_ranking_file(path, cache_dir=cache)
    for name in ("qids", "offsets", "features", "labels"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
        assert getattr(first, name).dtype == getattr(second, name).dtype
    monkeypatch.undo()

    _write(path, LETOR_TEXT + "1 qid:99 1:1\n")  # a changed source file is parsed again
    assert load_ranking_file(path, cache_dir=cache).qids.tolist() == [10, 7, 3, 99]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("x qid:1 1:0.5", "bad label 'x'"),
        ("-1 qid:1 1:0.5", "bad label '-1': negative"),
        ("nan qid:1 1:0.5", "bad label 'nan'"),
        ("1 1:0.5", "bad qid: missing"),
        ("1 qid:a 1:0.5", "bad qid 'a'"),
        ("1 qid:1 0:0.5", "bad feature index 0"),
        ("1 qid:1 1:0.5 1:0.2", "duplicate feature index 1 after 1"),
        ("1 qid:1 2:0.5 1:0.2", "non-increasing feature index 1 after 2"),
        ("1 qid:1 1:abc", "bad feature value 'abc' at index 1"),
        ("1 qid:1 1:inf", "bad feature value 'inf'"),
        ("1 qid:1 1", "bad feature '1'"),
        ("1 qid:1 qid:2 1:1", "bad qid: unexpected 'qid:2'"),
        ("1 qid:9 1:1", r"bad qid 9: its lines must be contiguous \(seen from line 1"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = _write(tmp_path / "bad.txt", f"0 qid:9 1:1\n0 qid:5 1:1\n{line}\n")
    with pytest.raises(DataError, match=f"bad.txt:3: {reason}"):
        parse_svmlight(path)


RANK_TEXT = "1 1:0.5 3:0.1\n0 2:0.2\n\n3 1:1 300:0.7\n0 5:1\n2 1:0.1\n"


@pytest.mark.parametrize("cached", [False, True])
def test_group_file_defines_the_queries(tmp_path: Path, cached: bool) -> None:
    data = _write(tmp_path / "rank.train", RANK_TEXT)
    groups = _write(tmp_path / "rank.train.query", "2\n1\n2\n")
    cache = tmp_path / "cache" if cached else None
    for _ in range(2):
        queries = load_ranking_file(data, group_path=groups, cache_dir=cache)
        assert queries.groups.tolist() == [2, 1, 2]
        assert queries.qids.tolist() == [0, 1, 2]
        assert queries.features.shape == (5, 300)
        assert queries.features[2, 299] == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("group_text", "message"),
    [
        ("2\n1\n", r"rank.train.query:2: group sum mismatch: groups add up to 3 lines"),
        ("2\n1\n3\n", r"rank.train.query:3: group sum mismatch: groups reach line 6"),
        ("2\n0\n3\n", r"rank.train.query:2: bad group size '0'"),
        ("2\nx\n3\n", r"rank.train.query:2: bad group size 'x'"),
    ],
)
def test_group_file_errors(tmp_path: Path, group_text: str, message: str) -> None:
    data = _write(tmp_path / "rank.train", RANK_TEXT)
    groups = _write(tmp_path / "rank.train.query", group_text)
    with pytest.raises(DataError, match=message):
        parse_svmlight(data, group_path=groups)


def test_qid_in_a_grouped_file_is_an_error(tmp_path: Path) -> None:
    data = _write(tmp_path / "rank.train", "1 qid:1 1:0.5\n")
    groups = _write(tmp_path / "rank.train.query", "1\n")
    with pytest.raises(DataError, match=r"rank.train:1: bad qid: unexpected .*rank.train.query"):
        parse_svmlight(data, group_path=groups)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.txt: file not found"):
        load_ranking_file(tmp_path / "nope.txt")
    data = _write(tmp_path / "rank.train", RANK_TEXT)
    with pytest.raises(DataError, match="nope.query: group file not found"):
        load_ranking_file(data, group_path=tmp_path / "nope.query")


def test_split_queries_is_a_seeded_partition(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, size=20)
    queries = RankingQueries(
        qids=np.arange(100, 120),
        offsets=np.concatenate([[0], np.cumsum(sizes)]),
        features=rng.random((sizes.sum(), 3)).astype(np.float32),
        labels=rng.integers(0, 3, sizes.sum()).astype(np.float32),
    )
    first, second = split_queries(queries, 0.5, seed=1)
    assert len(first) == len(second) == 10
    assert sorted([*first.qids, *second.qids]) == list(range(100, 120))
    again, _ = split_queries(queries, 0.5, seed=1)
    np.testing.assert_array_equal(first.qids, again.qids)
    for part in (first, second):  # each query keeps its own documents
        for q, qid in enumerate(part.qids):
            rows = slice(part.offsets[q], part.offsets[q + 1])
            source = slice(queries.offsets[qid - 100], queries.offsets[qid - 99])
            np.testing.assert_array_equal(part.features[rows], queries.features[source])
            np.testing.assert_array_equal(part.labels[rows], queries.labels[source])


REAL = default_data_dir()


@pytest.mark.skipif(
    not (REAL / "mq2008").is_dir() or not (REAL / "lgbm_rank").is_dir(),
    reason=f"real LETOR data not found under {REAL} (set PRM_DATA_DIR to the shared data folder)",
)
def test_real_files_match_their_readme_counts(tmp_path: Path) -> None:
    vali = load_ranking_file(REAL / "mq2008" / "Fold1" / "vali.txt", cache_dir=tmp_path)
    assert (len(vali), len(vali.labels), vali.n_features) == (157, 2707, 46)
    assert np.bincount(vali.labels.astype(int)).tolist() == [2140, 400, 167]
    test = load_ranking_file(
        REAL / "lgbm_rank" / "rank.test",
        group_path=REAL / "lgbm_rank" / "rank.test.query",
        cache_dir=tmp_path,
    )
    assert (len(test), len(test.labels)) == (50, 768)
    assert np.bincount(test.labels.astype(int)).tolist() == [206, 256, 252, 44, 10]
