"""Fuzz the HTTP API from its own OpenAPI schema: valid and invalid bodies, never a 5xx."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prm.serving.app import Service, create_app
from prm.serving.predictor import Predictor
from prm.serving.schemas import MAX_ABS

schemathesis = pytest.importorskip("schemathesis")
with warnings.catch_warnings():  # starlette would rather have httpx2; httpx works the same
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
    from schemathesis import GenerationMode


@pytest.fixture(scope="module")
def api_schema(onnx_predictor: Predictor):
    service = Service(lambda: onnx_predictor)
    service.load()
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(service))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_makes_the_service_fail(api_schema, mode: GenerationMode) -> None:
    """Schema-valid bodies (which still hit unknown ids, widths, duplicates) and invalid ones."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/rerank", "/healthz", "/metrics"}
    if mode == GenerationMode.NEGATIVE:  # only a body can be made invalid; GETs take nothing
        operations = [op for op in operations if op.path == "/rerank"]
    for operation in operations:
        examples = 100 if operation.path == "/rerank" else 3

        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,  # the same cases every run, so a failure reproduces
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case) -> None:
            response = case.call()
            assert response.status_code < 500, (response.status_code, case.body, response.text)

        call()


def request_bodies(n_users: int, n_items: int, d_profile: int, d_feature: int, max_items: int):
    """Schema-valid bodies that also fit the model: known ids, right widths, any magnitudes."""
    values = st.floats(-MAX_ABS, MAX_ABS, allow_nan=False, width=32)
    known = st.builds(lambda u: {"user_id": u}, st.integers(0, n_users - 1))
    new = st.fixed_dictionaries(
        {
            "profile": st.lists(values, min_size=d_profile, max_size=d_profile),
            "history": st.lists(st.integers(0, n_items - 1), max_size=30),
        }
    )
    item_ids = st.lists(st.integers(0, n_items - 1), min_size=1, max_size=max_items, unique=True)

    def items(ids: list[int]):
        features = st.none() | st.lists(values, min_size=d_feature, max_size=d_feature)
        return st.tuples(*[features for _ in ids]).map(
            lambda fs: [
                {"item_id": i} if f is None else {"item_id": i, "features": f}
                for i, f in zip(ids, fs, strict=True)
            ]
        )

    return st.fixed_dictionaries({"user": known | new, "items": item_ids.flatmap(items)})


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_requests_that_fit_the_model_are_served(onnx_predictor: Predictor) -> None:
    catalog = onnx_predictor.catalog
    bodies = request_bodies(
        catalog.n_users, catalog.n_items, catalog.d_profile, catalog.d_feature, 128
    )
    service = Service(lambda: onnx_predictor)
    service.load()
    with TestClient(create_app(service)) as client:

        @settings(max_examples=80, deadline=None, derandomize=True, database=None)
        @given(body=bodies)
        def call(body: dict) -> None:
            response = client.post("/rerank", json=body)
            if response.status_code == 422:  # only inputs so large the scores overflow
                assert "non-finite scores" in response.text, response.text
                return
            assert response.status_code == 200, response.text
            ranked = [r["item_id"] for r in response.json()["items"]]
            assert sorted(ranked) == sorted(item["item_id"] for item in body["items"])

        call()
