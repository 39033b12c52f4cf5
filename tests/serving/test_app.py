"""The HTTP service: re-ranking, readiness, metrics, and 4xx (never 5xx) for bad requests."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

from prm.serving.app import ServeLimits, Service, create_app
from prm.serving.predictor import Predictor

with warnings.catch_warnings():  # starlette would rather have httpx2; httpx works the same
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

MAX_BODY = 64 * 1024


def client_for(predictor: Predictor) -> TestClient:
    service = Service(lambda: predictor)
    service.load()
    return TestClient(create_app(service, limits=ServeLimits(max_body_bytes=MAX_BODY)))


@pytest.fixture(scope="module")
def client(onnx_predictor: Predictor) -> Iterator[TestClient]:
    with client_for(onnx_predictor) as test_client:
        yield test_client


def known_user_body(item_ids: list[int], user_id: int = 3) -> dict:
    return {"user": {"user_id": user_id}, "items": [{"item_id": i} for i in item_ids]}


def test_rerank_sorts_the_candidates_by_the_model_score(
    client: TestClient, onnx_predictor: Predictor
) -> None:
    item_ids = [5, 9, 100, 2, 77, 31]
    response = client.post("/rerank", json=known_user_body(item_ids))
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == "test-v1"
    ranked = body["items"]
    assert sorted(r["item_id"] for r in ranked) == sorted(item_ids)
    assert [item_ids[r["initial_position"]] for r in ranked] == [r["item_id"] for r in ranked]
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)

    inputs = onnx_predictor.known_user_lists(
        np.array([3]), np.array([item_ids]), np.ones((1, len(item_ids)), bool)
    )
    want = onnx_predictor.score(inputs)[0]
    got = {r["item_id"]: r["score"] for r in ranked}
    np.testing.assert_allclose([got[i] for i in item_ids], want, atol=1e-6)


def test_a_known_user_given_by_profile_and_history_scores_as_by_id(
    client: TestClient, onnx_predictor: Predictor
) -> None:
    catalog = onnx_predictor.catalog
    history = catalog.history[3][catalog.history_mask[3]].tolist()
    by_value = {
        "user": {"profile": catalog.profile[3].tolist(), "history": history},
        "items": [{"item_id": i, "features": catalog.item_features[i].tolist()} for i in (4, 8)],
    }
    by_id = client.post("/rerank", json=known_user_body([4, 8])).json()
    assert client.post("/rerank", json=by_value).json() == by_id


def test_an_unknown_user_with_no_history_is_served(client: TestClient) -> None:
    body = {"user": {"profile": [0.1] * 8, "history": []}, "items": [{"item_id": 1}]}
    response = client.post("/rerank", json=body)
    assert response.status_code == 200
    assert [r["item_id"] for r in response.json()["items"]] == [1]


def test_whole_numbers_written_as_floats_are_ids(client: TestClient) -> None:
    """JSON Schema's integers include 5.0; JSON encoders in other languages may write them so."""
    body = {"user": {"user_id": 3.0}, "items": [{"item_id": 5.0}, {"item_id": 9}]}
    assert (
        client.post("/rerank", json=body).json()
        == client.post("/rerank", json=known_user_body([5, 9])).json()
    )


def test_torch_backend_serves_the_same_scores(
    client: TestClient, torch_predictor: Predictor
) -> None:
    body = known_user_body(list(range(20, 50)), user_id=7)
    with client_for(torch_predictor) as torch_client:
        eager = torch_client.post("/rerank", json=body).json()["items"]
    onnx = client.post("/rerank", json=body).json()["items"]
    eager_scores = {r["item_id"]: r["score"] for r in eager}
    assert max(abs(r["score"] - eager_scores[r["item_id"]]) for r in onnx) <= 1e-4


def test_readiness_is_503_until_the_model_has_loaded(onnx_predictor: Predictor) -> None:
    release = threading.Event()

    def slow_load() -> Predictor:
        release.wait(timeout=30)
        return onnx_predictor

    with TestClient(create_app(Service(slow_load))) as client:
        assert client.get("/healthz").status_code == 503
        assert client.get("/healthz").json()["status"] == "loading"
        assert client.get("/livez").status_code == 200
        assert client.post("/rerank", json=known_user_body([1, 2])).status_code == 503
        assert "prm_model_ready 0.0" in client.get("/metrics").text
        release.set()
        deadline = time.monotonic() + 10
        while client.get("/healthz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.get("/healthz").json()["model_version"] == "test-v1"
        assert client.post("/rerank", json=known_user_body([1, 2])).status_code == 200


def test_a_failed_load_keeps_answering_503_with_the_error() -> None:
    def broken() -> Predictor:
        raise FileNotFoundError("no such bundle")

    with TestClient(create_app(Service(broken))) as client:
        deadline = time.monotonic() + 10
        while client.get("/healthz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.01)
        response = client.get("/healthz")
        assert response.status_code == 503
        assert (
            response.json()["status"] == "failed" and "no such bundle" in response.json()["error"]
        )


FEATURES = [0.0] * 14  # the tiny dataset: 6 topics one-hot + 8 dense features
BAD_REQUESTS = {
    "wrong feature width": (
        {"user": {"user_id": 1}, "items": [{"item_id": 1, "features": [0.0] * 3}]},
        ["body", "items", 0, "features"],
        "expects 14",
    ),
    "wrong profile width": (
        {"user": {"profile": [0.0] * 5}, "items": [{"item_id": 1}]},
        ["body", "user", "profile"],
        "expects 8",
    ),
    "empty list": ({"user": {"user_id": 1}, "items": []}, ["body", "items"], "at least 1"),
    "over-long list": (known_user_body(list(range(129))), ["body", "items"], "at most 128"),
    "duplicate item ids": (known_user_body([4, 7, 4]), ["body", "items"], "duplicate item_id 4"),
    "unknown user id": (known_user_body([1], user_id=300), ["body", "user", "user_id"], "unknown"),
    "unknown item id": (known_user_body([1, 400]), ["body", "items", 1, "item_id"], "unknown"),
    "unknown history item": (
        {"user": {"profile": [0.0] * 8, "history": [3, 9999]}, "items": [{"item_id": 1}]},
        ["body", "user", "history", 1],
        "unknown item_id 9999",
    ),
    "negative id": (known_user_body([-1]), ["body", "items", 0, "item_id"], "greater than"),
    "string id": (
        {"user": {"user_id": "3"}, "items": [{"item_id": 1}]},
        ["body", "user", "KnownUser", "user_id"],
        "integer",
    ),
    "bool id": (known_user_body([True]), ["body", "items", 0, "item_id"], "integer"),
    "float id": (known_user_body([1.5]), ["body", "items", 0, "item_id"], "integer"),
    "items not a list": ({"user": {"user_id": 1}, "items": {"item_id": 1}}, ["body", "items"], ""),
    "huge feature": (
        {"user": {"user_id": 1}, "items": [{"item_id": 1, "features": [1e300] + FEATURES[1:]}]},
        ["body", "items", 0, "features", 0],
        "less than or equal",
    ),
    "both user_id and profile": (
        {"user": {"user_id": 1, "profile": [0.0] * 8}, "items": [{"item_id": 1}]},
        ["body", "user", "KnownUser", "profile"],
        "not permitted",
    ),
    "neither user_id nor profile": (
        {"user": {}, "items": [{"item_id": 1}]},
        ["body", "user", "KnownUser", "user_id"],
        "required",
    ),
    "null user_id": (
        {"user": {"user_id": None}, "items": [{"item_id": 1}]},
        ["body", "user", "KnownUser", "user_id"],
        "integer",
    ),
    "unknown field": ({**known_user_body([1]), "limit": 3}, ["body", "limit"], "not permitted"),
    "missing user": ({"items": [{"item_id": 1}]}, ["body", "user"], "required"),
    "not an object": ([1, 2, 3], ["body"], ""),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_a_bad_request_is_422_naming_the_field(client: TestClient, case: str) -> None:
    body, loc, fragment = BAD_REQUESTS[case]
    response = client.post("/rerank", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(d["loc"] == loc and fragment in d["msg"] for d in detail), detail


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        (
            b'{"user": {"profile": [NaN, 0, 0, 0, 0, 0, 0, 0]}, "items": [{"item_id": 1}]}',
            ["body", "user", "NewUser", "profile", 0],
        ),
        (
            b'{"user": {"user_id": 1}, "items": [{"item_id": 1, "features": [Infinity]}]}',
            ["body", "items", 0, "features", 0],
        ),
        (b'{"user": {"user_id": 1}, "items": [', ["body"]),
        (b"\xff\xfe not even text", ["body"]),
    ],
    ids=["nan", "inf", "truncated json", "binary"],
)
def test_nan_inf_and_broken_json_are_422(client: TestClient, raw: bytes, loc: list) -> None:
    response = client.post("/rerank", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert any(d["loc"][: len(loc)] == loc for d in response.json()["detail"]), response.text


def test_an_oversized_body_is_413_declared_or_streamed(client: TestClient) -> None:
    big = b'{"user": {"user_id": 1}, "items": [' + b" " * MAX_BODY + b"]}"
    response = client.post("/rerank", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["detail"][0]["loc"] == ["body"]

    chunks = iter([big[:1000], big[1000:]])  # no content-length: chunked transfer
    assert client.post("/rerank", content=chunks).status_code == 413


def test_metrics_count_requests_latency_and_errors(client: TestClient) -> None:
    client.post("/rerank", json=known_user_body([1, 2, 3]))
    client.post("/rerank", json=known_user_body([1, 1]))
    client.get("/no/such/path")
    text = client.get("/metrics").text
    assert 'prm_requests_total{method="POST",path="/rerank",status="200"}' in text
    assert 'prm_request_errors_total{path="/rerank",status="422"}' in text
    assert 'prm_request_errors_total{path="other",status="404"}' in text
    assert 'prm_request_latency_seconds_bucket{le="0.01",path="/rerank"}' in text
    assert "prm_model_ready 1.0" in text
    assert 'prm_model_info{backend="onnx",version="test-v1"} 1.0' in text


def test_openapi_schema_documents_the_api_with_examples(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/rerank", "/healthz", "/readyz", "/livez", "/metrics"} <= schema["paths"].keys()
    assert {"413", "422", "503"} <= schema["paths"]["/rerank"]["post"]["responses"].keys()
    request = schema["components"]["schemas"]["RerankRequest"]
    assert request["examples"][0]["user"] == {"user_id": 0}
    assert request["properties"]["items"]["maxItems"] == 1024
    # /rerank validates its body itself (ModelBodyRoute); its schema still says what it takes.
    rerank = schema["paths"]["/rerank"]["post"]
    body = rerank["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/RerankRequest"}
    answer = rerank["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/RerankResponse"}
    assert "415" in rerank["responses"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_sent_as_json_is_415(client: TestClient, content_type: str) -> None:
    """What `curl -d` sends without `-H 'content-type: application/json'`."""
    body = b'{"user": {"user_id": 3}, "items": [{"item_id": 5}]}'
    response = client.post("/rerank", content=body, headers={"content-type": content_type})
    assert response.status_code == 415
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["header", "content-type"] and "application/json" in detail["msg"]
    for also_json in ("application/json; charset=utf-8", "application/problem+json"):
        assert client.post("/rerank", content=body, headers={"content-type": also_json}).is_success


def test_non_finite_scores_are_a_4xx_not_a_broken_response(onnx_predictor: Predictor) -> None:
    """JSON cannot carry NaN: a model that overflows on extreme inputs must not become a 500."""

    class Overflowing(Predictor):
        def score(self, inputs) -> np.ndarray:
            return np.full(inputs.mask.shape, np.nan, np.float32)

    broken = Overflowing(
        onnx_predictor.manifest, onnx_predictor.catalog, onnx_predictor.backend, "onnx"
    )
    with client_for(broken) as client:
        response = client.post("/rerank", json=known_user_body([1, 2]))
    assert response.status_code == 422
    assert "non-finite scores" in response.json()["detail"][0]["msg"]
