"""`prm serve`: the re-ranker behind a FastAPI app.

    POST /rerank    a user and candidate items in their initial order -> the new order
    GET  /healthz   readiness: 503 until the model is loaded, then 200 with its version
    GET  /livez     liveness: 200 while the process answers
    GET  /metrics   Prometheus: requests, latency histogram, errors, model readiness

The model loads in a background thread, so the process answers (and says it is not ready)
while a large bundle loads. Every bad request is a 4xx whose ``detail`` names the field.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import prm
from prm.serving.bundle import Catalog
from prm.serving.predictor import BackendName, ListInputs, Predictor, load_predictor
from prm.serving.schemas import (
    ErrorResponse,
    KnownUser,
    RankedItem,
    RerankRequest,
    RerankResponse,
)

log = logging.getLogger("prm.serving")

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a 1024-item list with 64 features each fits
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
ERRORS = {code: {"model": ErrorResponse} for code in (413, 422, 503)}


class RequestError(ValueError):
    """A request that passed the schema but not the loaded model's limits (unknown id, width)."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


def _error_body(loc: list[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"detail": [{"loc": loc, "msg": msg, "type": kind}]}


def request_inputs(request: RerankRequest, predictor: Predictor) -> ListInputs:
    """The request as a batch of one list, checked against the bundle's catalog and limits."""
    catalog = predictor.catalog
    n_items = len(request.items)
    if n_items > predictor.max_list_length:
        raise RequestError(
            ("items",),
            f"{n_items} items; this model serves lists of at most {predictor.max_list_length}",
        )

    user = request.user
    if isinstance(user, KnownUser):
        if user.user_id >= catalog.n_users:
            raise RequestError(
                ("user", "user_id"),
                f"unknown user_id {user.user_id} (the catalog has 0..{catalog.n_users - 1}); "
                "give profile and history instead",
            )
        profile = catalog.profile[[user.user_id]]  # (1, d_profile)
        history = catalog.history[[user.user_id]]  # (1, H)
        history_mask = catalog.history_mask[[user.user_id]]  # (1, H)
    else:
        if len(user.profile) != catalog.d_profile:
            raise RequestError(
                ("user", "profile"),
                f"{len(user.profile)} values; this model expects {catalog.d_profile}",
            )
        for index, item_id in enumerate(user.history):
            if item_id >= catalog.n_items:
                raise RequestError(("user", "history", index), _unknown_item(item_id, catalog))
        profile = np.asarray([user.profile], np.float32)
        # One masked slot stands in for an empty history: the graph wants H >= 1.
        history = np.asarray([user.history or [0]], np.int64)
        history_mask = np.full(history.shape, bool(user.history))

    item_ids = np.empty((1, n_items), np.int64)
    features = np.empty((1, n_items, catalog.d_feature), np.float32)
    for index, item in enumerate(request.items):
        if item.item_id >= catalog.n_items:
            raise RequestError(("items", index, "item_id"), _unknown_item(item.item_id, catalog))
        item_ids[0, index] = item.item_id
        if item.features is None:
            features[0, index] = catalog.item_features[item.item_id]
        elif len(item.features) != catalog.d_feature:
            raise RequestError(
                ("items", index, "features"),
                f"{len(item.features)} values; this model expects {catalog.d_feature}",
            )
        else:
            features[0, index] = item.features
    return ListInputs(
        profile=profile,
        history=history,
        history_mask=history_mask,
        item_ids=item_ids,
        features=features,
        mask=np.ones((1, n_items), bool),
    )


def _unknown_item(item_id: int, catalog: Catalog) -> str:
    return f"unknown item_id {item_id} (the catalog has 0..{catalog.n_items - 1})"


def rerank_request(request: RerankRequest, predictor: Predictor) -> RerankResponse:
    """Score the candidates and sort them, best first; ties keep their initial order."""
    scores = predictor.score(request_inputs(request, predictor))[0]  # (n,)
    if not np.isfinite(scores).all():
        raise RequestError(
            (),
            "the model gave non-finite scores for these inputs; check the magnitudes of "
            "user.profile and items[].features",
        )
    order = np.argsort(-scores, kind="stable")
    return RerankResponse(
        model_version=predictor.version,
        items=[
            RankedItem(
                item_id=request.items[i].item_id, score=float(scores[i]), initial_position=int(i)
            )
            for i in order
        ],
    )


class Service:
    """The predictor behind the app, loaded once, in a background thread or on demand."""

    def __init__(self, load: Callable[[], Predictor]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._started = False
        self.predictor: Predictor | None = None
        self.error: str | None = None

    def start(self) -> None:
        """Begin loading in a daemon thread; later calls do nothing."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._run, name="prm-model-loader", daemon=True).start()

    def load(self) -> Predictor:
        """Load now, in this thread (tests, benchmarks); later calls return the same predictor."""
        with self._lock:
            started, self._started = self._started, True
        if not started:
            self._run()
        if self.predictor is None:
            raise RuntimeError(self.error or "the model is still loading")
        return self.predictor

    def _run(self) -> None:
        try:
            predictor = self._load()
        except Exception as error:  # readiness reports it; the process stays up to say so
            log.exception("loading the model failed")
            self.error = f"{type(error).__name__}: {error}"
            return
        self.predictor = predictor
        log.info("model %s ready (%s backend)", predictor.version, predictor.backend_name)


class Metrics:
    """Prometheus metrics in a registry of the app's own, so several apps can share a process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "prm_requests", "HTTP requests", ["path", "method", "status"], registry=self.registry
        )
        self.errors = Counter(
            "prm_request_errors",
            "HTTP responses with status >= 400",
            ["path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "prm_request_latency_seconds",
            "Time from request to response, seconds",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ready = Gauge("prm_model_ready", "1 once the model is loaded", registry=self.registry)
        self.model = Info("prm_model", "The loaded model", registry=self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request, including those the app rejects or fails."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths  # known routes; anything else is "other", to bound label values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self.paths else "other"
        status = 500  # unless the app starts a response
        start = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(path, str(status)).inc()


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``, declared or streamed, before anything parses it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(int(declared), scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._reject(len(body), scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, size: int, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body of {size}+ bytes is over the limit of {self.max_bytes} bytes"
        response = JSONResponse(_error_body(["body"], message, "too_large"), status_code=413)
        await response(scope, receive, send)


class Health(BaseModel):
    status: str
    model_version: str | None = None
    backend: str | None = None
    error: str | None = None


def create_app(service: Service, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app over ``service``; its model starts loading when the app starts."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield

    app = FastAPI(
        title="PRM re-ranking",
        version=prm.__version__,
        description=__doc__,
        lifespan=lifespan,
    )
    metrics = Metrics()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        # Only loc, msg and type: the rejected input may hold NaN, which JSON cannot carry.
        detail = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(RequestError)
    async def unservable_request(_: Request, error: RequestError) -> JSONResponse:
        return JSONResponse(
            _error_body(["body", *error.loc], error.msg, "value_error"), status_code=422
        )

    # The handlers run on the event loop: scoring one list takes well under a millisecond, less
    # than a hop to the thread pool costs. Use more workers, not threads, to scale out.
    @app.post("/rerank", responses=ERRORS)
    async def rerank(request: RerankRequest) -> RerankResponse:
        """Re-rank one list of candidates for one user."""
        if service.predictor is None:
            raise HTTPException(503, "the model is not loaded yet; see /healthz")
        return rerank_request(request, service.predictor)

    @app.get("/healthz", responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        """Readiness: 200 once the model is loaded, 503 while it loads or after it failed."""
        predictor = service.predictor
        if predictor is not None:
            ready = Health(
                status="ready", model_version=predictor.version, backend=predictor.backend_name
            )
            return JSONResponse(ready.model_dump())
        state = Health(status="failed", error=service.error) if service.error else None
        return JSONResponse((state or Health(status="loading")).model_dump(), status_code=503)

    @app.get("/livez")
    async def livez() -> Health:
        """Liveness: the process answers."""
        return Health(status="alive")

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text format; counts are per worker process."""
        predictor = service.predictor
        metrics.ready.set(predictor is not None)
        if predictor is not None:
            metrics.model.info({"version": predictor.version, "backend": predictor.backend_name})
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    paths = {route.path for route in app.routes}
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=paths)  # outermost
    return app


ENV_PREFIX = "PRM_SERVE_"


def app_from_env() -> FastAPI:
    """The app of each uvicorn worker, configured by :func:`serve` through the environment."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    backend: BackendName = os.environ[f"{ENV_PREFIX}BACKEND"]  # type: ignore[assignment]
    threads = int(os.environ[f"{ENV_PREFIX}THREADS"])
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    load = partial(load_predictor, os.environ[f"{ENV_PREFIX}BUNDLE"], backend, threads=threads)
    return create_app(Service(load), max_body_bytes=int(os.environ[f"{ENV_PREFIX}MAX_BODY_BYTES"]))


def serve(
    bundle: str,
    *,
    backend: BackendName = "onnx",
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    threads: int = 1,
    max_body_bytes: int = MAX_BODY_BYTES,
    access_log: bool = False,
) -> None:
    """Run the service under uvicorn until interrupted; each worker loads its own model."""
    import uvicorn

    os.environ.update(
        {
            f"{ENV_PREFIX}BUNDLE": str(bundle),
            f"{ENV_PREFIX}BACKEND": backend,
            f"{ENV_PREFIX}THREADS": str(threads),
            f"{ENV_PREFIX}MAX_BODY_BYTES": str(max_body_bytes),
        }
    )
    uvicorn.run(
        "prm.serving.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
    )
