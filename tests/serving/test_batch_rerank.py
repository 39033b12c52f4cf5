"""Offline re-ranking of Parquet logs: same scores as the service, sorted output, bad rows."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prm.cli.main import main
from prm.serving.app import Service, create_app
from prm.serving.batch import rerank_parquet
from prm.serving.predictor import Predictor

with warnings.catch_warnings():  # starlette would rather have httpx2; httpx works the same
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def source(served) -> list[dict]:
    return pq.read_table(served.data / "lists_test.parquet").to_pylist()


@pytest.fixture(scope="module")
def reranked(served, onnx_predictor: Predictor, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("batch") / "reranked.parquet"
    lists = served.data / "lists_test.parquet"
    # Small chunks and batches, so lists cross chunk and batch boundaries.
    n = rerank_parquet(onnx_predictor, lists, out, chunk_size=64, batch_size=24, progress=False)
    assert n == pq.read_metadata(lists).num_rows
    table = pq.read_table(out)
    assert table.column_names == ["list_id", "user_id", "item_ids", "scores"]
    return table.to_pylist()


def test_each_list_comes_back_sorted_by_score_as_a_permutation(source, reranked) -> None:
    assert [r["list_id"] for r in reranked] == [s["list_id"] for s in source]
    for before, after in zip(source, reranked, strict=True):
        assert after["user_id"] == before["user_id"]
        assert sorted(after["item_ids"]) == sorted(before["item_ids"])
        assert after["scores"] == sorted(after["scores"], reverse=True)


def test_batch_scores_equal_the_service_scores(onnx_predictor: Predictor, source, reranked) -> None:
    service = Service(lambda: onnx_predictor)
    service.load()
    with TestClient(create_app(service)) as client:
        for before, after in list(zip(source, reranked, strict=True))[:50]:
            body = {
                "user": {"user_id": before["user_id"]},
                "items": [{"item_id": i} for i in before["item_ids"]],  # the initial order
            }
            ranked = client.post("/rerank", json=body).json()["items"]
            assert [r["item_id"] for r in ranked] == after["item_ids"]
            np.testing.assert_allclose([r["score"] for r in ranked], after["scores"], atol=1e-5)


def test_cli_rerank_with_the_torch_backend_agrees(served, reranked, tmp_path: Path) -> None:
    out = tmp_path / "torch.parquet"
    args = ["rerank", "--model", str(served.bundle), "--backend", "torch", "--quiet"]
    assert main([*args, "--lists", str(served.data / "lists_test.parquet"), "--out", str(out)]) == 0
    for eager, onnx in zip(pq.read_table(out).to_pylist(), reranked, strict=True):
        got = dict(zip(eager["item_ids"], eager["scores"], strict=True))
        want = dict(zip(onnx["item_ids"], onnx["scores"], strict=True))
        assert max(abs(got[i] - want[i]) for i in want) <= 1e-4


BAD_ROWS = {
    "unknown user": ({"user_id": 300}, "unknown user_id"),
    "unknown item": ({"item_ids": [1, 400]}, "unknown item id"),
    "duplicate item": ({"item_ids": [5, 6, 5]}, "duplicate item id"),
    "empty list": ({"item_ids": []}, "empty list"),
    "over-long list": ({"item_ids": list(range(129))}, "over 128 items"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS), ids=list(BAD_ROWS))
def test_a_bad_row_exits_2_naming_it_and_writes_nothing(
    served, tmp_path: Path, capsys, case: str
) -> None:
    change, reason = BAD_ROWS[case]
    rows = [{"list_id": 10 + k, "user_id": k, "item_ids": [1, 2, 3]} for k in range(3)]
    rows[2].update(change)
    lists, out = tmp_path / "lists.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.Table.from_pylist(rows), lists)
    args = ["rerank", "--model", str(served.bundle), "--lists", str(lists), "--out", str(out)]
    assert main([*args, "--quiet"]) == 2
    assert f"row 2 (list_id 12): {reason}" in capsys.readouterr().err
    assert not out.exists()


def test_a_file_without_the_list_columns_exits_2(served, tmp_path: Path, capsys) -> None:
    lists = tmp_path / "lists.parquet"
    pq.write_table(pa.table({"list_id": [1], "items": [[1, 2]]}), lists)
    args = ["rerank", "--model", str(served.bundle), "--lists", str(lists)]
    assert main([*args, "--out", str(tmp_path / "out.parquet"), "--quiet"]) == 2
    assert "missing column(s) user_id, item_ids" in capsys.readouterr().err
