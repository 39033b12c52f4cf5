"""`prm serve`: the re-ranker behind a FastAPI app.

    POST /rerank    a user and candidate items in their initial order -> the new order
    GET  /readyz    readiness: 503 while the model loads or after it failed, then 200 (= /healthz)
    GET  /livez     liveness: 200 while the process answers
    GET  /metrics   Prometheus: requests, latency histogram, errors, model readiness

The model loads in a background thread, so the process answers (and says it is not ready)
while a large bundle loads. Every error is JSON whose ``detail`` names where in the request
(``loc``) and what is wrong (``msg``). Slow and idle clients are cut off by timeouts, floods by a
connection limit, and an optional API key guards everything but the health checks; see
docs/serving.md.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import queue
import random
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any, get_type_hints

import numpy as np
import pydantic
import pydantic_core
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

import prm
from prm.config import ConfigError
from prm.data.tables import Catalog
from prm.serving.predictor import BackendName, CandidateLists, Predictor, load_predictor
from prm.serving.schemas import (
    ErrorResponse,
    Health,
    KnownUser,
    RerankRequest,
    RerankResponse,
)

log = logging.getLogger("prm.serving")

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a 1024-item list with 64 features each fits
MAX_BATCH = 32  # lists scored together at most (`prm serve --max-batch`)
MAX_HEAD_BYTES = 16 * 1024  # request line and headers: h11's limit, before httptools
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/livez"})  # answered without the API key
MIN_API_KEY_LENGTH = 16
FD_RESERVE = 64  # files a worker holds besides client sockets: listener, model, logs, pipes
# Metric label values: anything else is "other", so made-up methods cannot grow /metrics.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
CLIENT_CLOSED = "client_closed"  # status label of a request whose client left before the answer


@dataclass(frozen=True)
class ServeLimits:
    """What one client may hold of a worker: time, bytes and connections.

    Each limit is per worker process. docs/serving.md says what each one protects against.
    """

    max_body_bytes: int = MAX_BODY_BYTES
    header_timeout: float = 10.0  # seconds to a whole head, from connecting or its first byte
    body_timeout: float = 10.0  # seconds from the head to the whole body
    keep_alive_timeout: int = 5  # seconds an idle connection is kept after a response
    # Open connections beyond which uvicorn answers every request 503 at once. An idle one
    # costs a few KB on the event loop; the timeouts, not this cap, cut off slow clients, so
    # it sits well above what a pool of callers opens.
    limit_concurrency: int = 4096

    def __post_init__(self) -> None:
        for field in fields(self):
            if not getattr(self, field.name) > 0:
                flag = "--" + field.name.replace("_", "-")
                raise ConfigError(f"{flag} must be positive, got {getattr(self, field.name)}")


class ApiError(Exception):
    """An answer other than 200: its status, where in the request (``loc``) and what is wrong."""

    def __init__(
        self,
        status: int,
        loc: tuple[str | int, ...],
        msg: str,
        kind: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(msg)
        self.status = status
        self.loc = loc
        self.msg = msg
        self.kind = kind
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"detail": [{"loc": list(self.loc), "msg": self.msg, "type": self.kind}]}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def unservable(loc: tuple[str | int, ...], msg: str) -> ApiError:
    """422 for a request that passed the schema but not the loaded model's limits."""
    return ApiError(422, ("body", *loc), msg, "value_error")


def request_inputs(request: RerankRequest, predictor: Predictor) -> CandidateLists:
    """The request as a batch of one list, checked against the bundle's catalog and limits."""
    catalog = predictor.catalog
    n_items = len(request.items)
    if n_items > predictor.max_list_length:
        raise unservable(
            ("items",),
            f"{n_items} items; this model serves lists of at most {predictor.max_list_length}",
        )

    user = request.user
    if isinstance(user, KnownUser):
        if user.user_id >= catalog.n_users:
            raise unservable(
                ("user", "user_id"),
                f"unknown user_id {user.user_id} (the catalog has 0..{catalog.n_users - 1}); "
                "give profile and history instead",
            )
        profile = catalog.profile[[user.user_id]]  # (1, d_profile)
        history = catalog.history[[user.user_id]]  # (1, H)
        history_mask = catalog.history_mask[[user.user_id]]  # (1, H)
    else:
        if len(user.profile) != catalog.d_profile:
            raise unservable(
                ("user", "profile"),
                f"{len(user.profile)} values; this model expects {catalog.d_profile}",
            )
        for index, item_id in enumerate(user.history):
            if item_id >= catalog.n_items:
                raise unservable(("user", "history", index), _unknown_item(item_id, catalog))
        profile = np.asarray([user.profile], np.float32)
        # One masked slot stands in for an empty history: the graph wants H >= 1.
        history = np.asarray([user.history or [0]], np.int64)
        history_mask = np.full(history.shape, bool(user.history))

    item_ids = np.fromiter((item.item_id for item in request.items), np.int64, n_items)
    unknown = np.flatnonzero(item_ids >= catalog.n_items)
    if unknown.size:
        index = int(unknown[0])
        raise unservable(("items", index, "item_id"), _unknown_item(int(item_ids[index]), catalog))
    features = catalog.item_features[item_ids]  # a copy: given features overwrite their rows
    for index, item in enumerate(request.items):
        if item.features is None:
            continue
        if len(item.features) != catalog.d_feature:
            raise unservable(
                ("items", index, "features"),
                f"{len(item.features)} values; this model expects {catalog.d_feature}",
            )
        features[index] = item.features
    return CandidateLists(
        profile=profile,
        history=history,
        history_mask=history_mask,
        item_ids=item_ids[None],
        features=features[None],
        mask=np.ones((1, n_items), bool),
    )


def _unknown_item(item_id: int, catalog: Catalog) -> str:
    return f"unknown item_id {item_id} (the catalog has 0..{catalog.n_items - 1})"


def ranked_response(request: RerankRequest, scores: np.ndarray, version: str) -> bytes:
    """The :class:`RerankResponse` JSON of one list's (n,) scores: the candidates sorted by
    score, best first; ties keep their initial order.

    Written with ``json.dumps`` rather than through the response model, which would build,
    validate and serialize one object per candidate on every request.
    """
    if not np.isfinite(scores).all():
        raise unservable(
            (),
            "the model gave non-finite scores for these inputs; check the magnitudes of "
            "user.profile and items[].features",
        )
    order = np.argsort(-scores, kind="stable").tolist()
    values = scores.tolist()
    items = request.items
    ranked = [
        {"item_id": items[i].item_id, "score": values[i], "initial_position": i} for i in order
    ]
    body = {"model_version": version, "items": ranked}
    return json.dumps(body, separators=(",", ":")).encode()


# --- JSON bodies: parsed by pydantic-core, every failure located -------------------------

_JSON_POSITION = re.compile(r" at line (\d+) column (\d+)$")
_NUMBER_BYTES = b"0123456789+-.eE"
MAX_JSON_PATH = 8


def _byte_offset(body: bytes, reason: str) -> int:
    """Where pydantic-core's "... at line L column C" points, as an index into ``body``."""
    match = _JSON_POSITION.search(reason)
    if match is None:
        return 0
    line, column = int(match[1]), int(match[2])
    rest = body.split(b"\n", line - 1)[-1]  # from the start of line L
    return min(len(body) - len(rest) + column - 1, len(body))


def json_path_at(body: bytes, offset: int) -> list[str | int]:
    """The keys and indices that lead to ``offset`` in a JSON body that failed to parse there.

    Best effort and all in pydantic-core: the body up to the failing value, with ``null`` in
    its place, is parsed as a partial document; the path is the one to that ``null``. When
    that prefix is itself no JSON (a missing key, nesting too deep) it steps out a level.
    The path stops after ``MAX_JSON_PATH`` steps, deeper than any field of the API.
    """
    prefix = body[:offset].rstrip(_NUMBER_BYTES)  # a number too long: back to its start
    for _ in range(3):
        try:
            node = pydantic_core.from_json(prefix + b"null", allow_partial=True)
        except ValueError:
            opener = max(prefix.rfind(b"["), prefix.rfind(b"{"))
            if opener < 0:
                return []
            prefix = prefix[:opener]
            continue
        path: list[str | int] = []
        while isinstance(node, dict | list) and node and len(path) < MAX_JSON_PATH:
            key = next(reversed(node)) if isinstance(node, dict) else len(node) - 1
            path.append(key)
            node = node[key]
        return path
    return []


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class ModelBodyRoute(APIRoute):
    """A route whose endpoint takes one pydantic model, validated from the body's bytes in one
    pass by pydantic-core, and returns a :class:`Response` as it is.

    FastAPI would parse the JSON, validate the parsed objects, then validate and serialize the
    endpoint's return value against ``response_model``, each a pass over every candidate. The
    endpoint's signature still documents the API (/docs, /openapi.json).
    Errors keep FastAPI's shape: 422 whose ``loc`` starts with ``body``; a JSON syntax error
    is located at the field where it occurs (:func:`json_path_at`), and the JSON parser bounds
    nesting.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        hints = get_type_hints(self.endpoint)
        (model,) = (hint for name, hint in hints.items() if name != "return")
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            content_type = request.headers.get("content-type")
            if content_type is not None and not _is_json(content_type):
                raise ApiError(
                    415,
                    ("header", "content-type"),
                    f"the body must be JSON, sent as content-type: application/json "
                    f"(got {content_type[:64]!r})",
                    "unsupported_media_type",
                )
            body = await request.body()
            try:
                parsed = model.model_validate_json(body)
            except pydantic.ValidationError as error:
                raise RequestValidationError(_body_errors(error, body), body=body) from None
            return await endpoint(parsed)

        return handle


def _body_errors(error: pydantic.ValidationError, body: bytes) -> list[dict[str, Any]]:
    """pydantic's errors as FastAPI words a body's: ``loc`` from ``body``; a JSON syntax
    error at ``("body", byte offset)``."""
    errors = []
    for item in error.errors(include_url=False, include_input=False):
        if item["type"] == "json_invalid":
            offset = _byte_offset(body, item["ctx"]["error"])
            errors.append({**item, "loc": ("body", offset)})
        else:
            errors.append({**item, "loc": ("body", *item["loc"])})
    return errors


# --- the model, loaded in the background ---------------------------------------------------

_PATH = re.compile(r"[^\s'\"`()\[\]{}<>,;]*[/\\][^\s'\"`()\[\]{}<>,;]*")


def without_paths(message: str) -> str:
    """``message`` with each file path cut to its last part: clients need not learn the
    server's directory layout (the log keeps the whole message)."""

    def last_part(match: re.Match[str]) -> str:
        parts = [part for part in re.split(r"[/\\]", match[0]) if part]
        return parts[-1] if parts else match[0]

    return _PATH.sub(last_part, message)


class ScoringThread:
    """Scores the lists of concurrent requests on a thread of its own, in batches.

    ONNX Runtime and PyTorch release the GIL while they compute, so the event loop parses,
    validates and answers other requests meanwhile: one worker keeps two cores busy. Lists
    that arrive while a batch is being scored wait, and are scored together next (at most
    ``max_batch``, in groups of one shape): under load a list then costs less, and the
    thread hand-off is paid once a batch (benchmarks/RESULTS.md, "Serving latency and
    throughput"). A list's scores then depend on its batch in their last float32 bits;
    ``max_batch=1`` scores each list alone.
    """

    def __init__(self, predictor: Predictor, max_batch: int = MAX_BATCH) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[CandidateLists, asyncio.Future[np.ndarray]]]
        self._queue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="prm-scoring", daemon=True).start()

    async def score(self, inputs: CandidateLists) -> np.ndarray:
        """``Predictor.score(inputs)``, computed off the event loop."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put((inputs, future))
        return await future

    def _serve(self) -> None:
        while True:
            waiting = [self._queue.get()]
            while len(waiting) < self.max_batch and not self._queue.empty():
                waiting.append(self._queue.get())
            groups: dict[tuple, list] = {}
            for inputs, future in waiting:
                shape = (inputs.item_ids.shape, inputs.history.shape, inputs.profile.shape)
                groups.setdefault(shape, []).append((inputs, future))
            for group in groups.values():
                self._score_group(group)

    def _score_group(self, group: list[tuple[CandidateLists, asyncio.Future]]) -> None:
        try:
            scores = self.predictor.score(CandidateLists.concatenate([i for i, _ in group]))
            outcomes = [(scores[row : row + 1], None) for row in range(len(group))]
        except Exception as error:  # each request's handler raises it, as if computed there
            outcomes = [(None, error)] * len(group)
        loop = group[0][1].get_loop()
        loop.call_soon_threadsafe(_settle_all, [future for _, future in group], outcomes)


def _settle_all(futures: list[asyncio.Future], outcomes: list[tuple]) -> None:
    for future, outcome in zip(futures, outcomes, strict=True):
        _settle(future, *outcome)


def _settle(
    future: asyncio.Future[np.ndarray], result: np.ndarray | None, error: Exception | None
) -> None:
    if future.cancelled():  # the client left
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Service:
    """The predictor behind the app, loaded once, in a background thread or on demand."""

    def __init__(self, load: Callable[[], Predictor], max_batch: int = MAX_BATCH) -> None:
        self._load = load
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._started = False
        self.predictor: Predictor | None = None
        self.scoring: ScoringThread | None = None  # set before the predictor
        self.error: str | None = None  # "failed to load: <why>", without file paths

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
            self.error = f"failed to load: {without_paths(f'{type(error).__name__}: {error}')}"
            return
        self.scoring = ScoringThread(predictor, self.max_batch)
        self.predictor = predictor
        log.info("model %s ready (%s backend)", predictor.version, predictor.backend_name)

    def unavailable(self) -> ApiError:
        """503 that tells a model still loading from one that failed to load."""
        if self.error is not None:
            return ApiError(503, (), f"{self.error}; see the server log", "model_failed")
        return ApiError(
            503,
            (),
            "the model is still loading; retry when /readyz answers 200",
            "model_loading",
            headers={"retry-after": "5"},
        )


# --- metrics -------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics in a registry of the app's own, so several apps can share a process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "prm_requests",
            "HTTP requests; status client_closed: the client left before the answer",
            ["path", "method", "status"],
            registry=self.registry,
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


def status_label(status: int | None, client_closed: bool) -> str:
    """The status label of one request: a client that left is no server error.

    ``status`` is what the app started to answer (None: nothing, so uvicorn answers 500);
    ``client_closed`` whether the client disconnected before the answer was complete.
    """
    if client_closed:
        return CLIENT_CLOSED
    return str(500 if status is None else status)


class MetricsMiddleware:
    """Counts and times every HTTP request, including those the app rejects or fails.

    Label values come from bounded sets (known routes, standard methods, response statuses),
    so no client can add time series.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self.paths else "other"
        method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
        status: int | None = None
        disconnected = answered = False
        start = time.perf_counter()

        async def receive_and_watch() -> Message:
            nonlocal disconnected
            message = await receive()
            disconnected |= message["type"] == "http.disconnect"
            return message

        async def send_and_record(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                answered = not message.get("more_body", False)
            await send(message)

        try:
            await self.app(scope, receive_and_watch, send_and_record)
        finally:
            label = status_label(status, disconnected and not answered)
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
            self.metrics.requests.labels(path, method, label).inc()
            if label != CLIENT_CLOSED and int(label) >= 400:
                self.metrics.errors.labels(path, label).inc()


# --- what a client may hold: the API key, the body, the request head -----------------------


def spread(seconds: float) -> float:
    """A deadline drawn between half and all of ``seconds``. Sockets opened together (an
    attack, a client pool) would otherwise all be cut off, and reconnect, in one burst that
    holds the event loop for a few hundred milliseconds."""
    return seconds * random.uniform(0.5, 1.0)


async def _refuse(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer ``error`` and close the connection: the body may be unread, or still coming."""
    response = error.response()
    response.headers["connection"] = "close"
    await response(scope, receive, send)


class ApiKeyMiddleware:
    """401 unless the request carries the API key, checked before any of its body is read.

    The key comes as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` (what Prometheus can
    send) and is compared in constant time. The health checks stay open for load balancers.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key_digest = hashlib.sha256(api_key.encode()).digest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key")
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if given is None and scheme.lower() == b"bearer":
            given = token.strip()
        # Digests of equal length: compare_digest then takes the same time for any key given.
        if given is not None and hmac.compare_digest(
            hashlib.sha256(given).digest(), self._key_digest
        ):
            await self.app(scope, receive, send)
            return
        what = "missing API key" if given is None else "wrong API key"
        error = ApiError(
            401,
            ("header", "x-api-key"),
            f"{what}: send it as X-API-Key: KEY or Authorization: Bearer KEY",
            "unauthorized",
            headers={"www-authenticate": 'Bearer realm="prm"'},
        )
        await _refuse(error, scope, receive, send)


class BodyReadMiddleware:
    """Reads each body whole before anything parses it: 413 past ``max_bytes`` (declared or
    streamed), 408 when it has not all arrived ``timeout`` seconds after the head."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        size = int(declared) if declared.isdigit() else 0
        body = bytearray()
        more = size <= self.max_bytes
        try:
            async with asyncio.timeout(spread(self.timeout)):
                while more and len(body) <= self.max_bytes:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
        except TimeoutError:
            message = (
                f"the body was not complete in time (at most {self.timeout:g} s after the "
                f"head); {len(body)} bytes came"
            )
            await _refuse(ApiError(408, ("body",), message, "timeout"), scope, receive, send)
            return
        if max(size, len(body)) > self.max_bytes:
            message = (
                f"request body of {max(size, len(body))}+ bytes is over the limit of "
                f"{self.max_bytes} bytes"
            )
            await _refuse(ApiError(413, ("body",), message, "too_large"), scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


class HeadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (the httptools parser) with a deadline on each request head,
    and Nagle's algorithm off on every connection.

    uvicorn times only the idle gap after a response, and stops that clock at the first byte:
    a client that connects and sends nothing, or sends a head a byte at a time (slowloris),
    would hold a socket for ever. Here each head must be whole within
    ``ServeLimits.header_timeout`` of the connection opening, or of its own first byte on a
    kept-alive connection (whose idle gap uvicorn's keep-alive timeout bounds); else the
    connection is closed. httptools bounds no head's size: one over ``MAX_HEAD_BYTES`` gets
    400 and the connection is closed.

    A response leaves in two writes (head, then body). asyncio turns Nagle's algorithm off
    only for sockets it knows are TCP, and a listening socket handed to ``--workers``
    processes arrives without that mark: the body then waited for the client's delayed ACK,
    40 ms a request.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = limits_from_env().header_timeout
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # received since the head clock started

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._start_head_clock()

    def data_received(self, data: bytes) -> None:
        between_requests = self.cycle is None or self.cycle.response_complete
        if between_requests and self._head_deadline is None:
            self._start_head_clock()
        self._head_bytes += len(data)
        super().data_received(data)  # calls on_headers_complete once a head is whole
        if self._head_deadline is not None and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse_head()  # still no end to this head, and already too long

    def on_headers_complete(self) -> None:
        self._stop_head_clock()
        head = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if head > MAX_HEAD_BYTES:
            self._refuse_head()
            raise ValueError(f"request head of {head} bytes")  # stops the parser: no request
        super().on_headers_complete()

    def _refuse_head(self) -> None:
        self._stop_head_clock()
        self.send_400_response(f"request head over {MAX_HEAD_BYTES} bytes")

    def send_400_response(self, msg: str) -> None:
        if not self.transport.is_closing():  # once: uvicorn answers a parser error with another
            super().send_400_response(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def _start_head_clock(self) -> None:
        self._head_bytes = 0
        self._head_deadline = self.loop.call_later(
            spread(self.header_timeout), self.transport.close
        )

    def _stop_head_clock(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None


# --- the app ---------------------------------------------------------------------------------

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 408, 413, 422, 503)
}


def create_app(
    service: Service, *, limits: ServeLimits | None = None, api_key: str | None = None
) -> FastAPI:
    """The FastAPI app over ``service``; its model starts loading when the app starts.

    With ``api_key``, every path but the health checks wants it (:class:`ApiKeyMiddleware`).
    """
    limits = limits or ServeLimits()

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
        detail = [_located(e, error.body) for e in error.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            where, what = ("path",), "no endpoint at this path; /docs lists them"
        elif error.status_code == 405:
            allowed = (error.headers or {}).get("Allow", "")
            where, what = ("method",), f"{request.url.path} takes {allowed}"
        else:
            where, what = (), str(error.detail)
        return ApiError(error.status_code, where, what, "http_error", error.headers).response()

    # The handlers run on the event loop: scoring one list takes well under a millisecond, less
    # than a hop to the thread pool costs. Use more workers, not threads, to scale out.
    async def rerank(request: RerankRequest) -> Response:
        """Re-rank one list of candidates for one user."""
        predictor, scoring = service.predictor, service.scoring
        if predictor is None or scoring is None:
            raise service.unavailable()
        scores = await scoring.score(request_inputs(request, predictor))
        content = ranked_response(request, scores[0], predictor.version)
        return Response(content, media_type="application/json")

    app.router.add_api_route(
        "/rerank",
        rerank,
        methods=["POST"],
        response_model=RerankResponse,
        responses={**ERRORS, 415: {"model": ErrorResponse}},
        route_class_override=ModelBodyRoute,
    )

    @app.get("/readyz", responses={503: {"model": Health}})
    @app.get("/healthz", responses={503: {"model": Health}})
    async def readiness() -> JSONResponse:
        """Readiness: 200 once the model is loaded, 503 while it loads or after it failed."""
        predictor = service.predictor
        if predictor is not None:
            ready = Health(
                status="ready", model_version=predictor.version, backend=predictor.backend_name
            )
            return JSONResponse(ready.model_dump())
        if service.error is not None:
            state = Health(status="failed", error=service.error)
        else:
            state = Health(status="loading")
        return JSONResponse(state.model_dump(), status_code=503)

    @app.get("/livez")
    async def livez() -> Health:
        """Liveness: the process answers."""
        return Health(status="alive")

    @app.get("/metrics", response_class=Response, responses={401: {"model": ErrorResponse}})
    async def prometheus() -> Response:
        """Prometheus text format; counts are per worker process."""
        predictor = service.predictor
        metrics.ready.set(predictor is not None)
        if predictor is not None:
            metrics.model.info({"version": predictor.version, "backend": predictor.backend_name})
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    paths = {route.path for route in app.routes}
    app.add_middleware(
        BodyReadMiddleware, max_bytes=limits.max_body_bytes, timeout=limits.body_timeout
    )
    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)  # before any body is read
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=paths)  # outermost
    return app


def _located(error: dict[str, Any], body: Any) -> dict[str, Any]:
    """A validation error as loc, msg and type; a JSON syntax error gets its field path."""
    if error["type"] == "json_invalid" and isinstance(body, bytes):
        loc = ["body", *json_path_at(body, error["loc"][-1])]
        return {"loc": loc, "msg": f"invalid JSON: {error['ctx']['error']}", "type": "json_invalid"}
    return {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}


# --- running under uvicorn -------------------------------------------------------------------

ENV_PREFIX = "PRM_SERVE_"
LIMITS_ENV = f"{ENV_PREFIX}LIMITS"
API_KEY_ENV = f"{ENV_PREFIX}API_KEY_ENV"  # the name of the variable that holds the key


def limits_from_env() -> ServeLimits:
    """The limits :func:`serve` hands each worker (the defaults when run otherwise)."""
    return ServeLimits(**json.loads(os.environ.get(LIMITS_ENV) or "{}"))


def read_api_key(variable: str) -> str:
    """The API key in environment variable ``variable``: set, and too long to guess."""
    key = os.environ.get(variable, "")
    if len(key) < MIN_API_KEY_LENGTH:
        raise ConfigError(
            f"--api-key-env {variable}: the variable is unset or shorter than "
            f"{MIN_API_KEY_LENGTH} characters; generate a key with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return key


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost, or "" (every interface)
        return False


def ensure_open_file_limit(limit_concurrency: int) -> None:
    """Raise this process's open-file limit, which its workers inherit, to fit the connections.

    A process out of file descriptors stops accepting for a second at a time (asyncio's
    retry), so every new client, health checks included, waits a second or more. The soft
    limit (often 1024) goes up to the hard one, as Go programs do at start.
    """
    import resource

    needed = limit_concurrency + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigError(
            f"--limit-concurrency {limit_concurrency} needs {needed} open files and this "
            f"process may open {hard} (ulimit -Hn): lower --limit-concurrency or raise the limit"
        )
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard)
    )


def uvicorn_settings(limits: ServeLimits) -> dict[str, Any]:
    """The ``uvicorn.run`` arguments that enforce ``limits`` beyond what the app does."""
    return {
        "http": HeadTimeoutProtocol,
        "ws": "none",  # no WebSocket routes: no upgrade path to keep safe
        "limit_concurrency": limits.limit_concurrency,
        "timeout_keep_alive": limits.keep_alive_timeout,
    }


def load_and_freeze(bundle: str, backend: BackendName, threads: int) -> Predictor:
    """The predictor, then every object alive so far moved out of the garbage collector's sight.

    torch, ONNX Runtime and the catalog leave some 240k objects; each full collection would
    walk them all (about 0.2 s on a busy core), and many open connections trigger one every
    few seconds. Frozen, a full collection walks only what requests made since.
    """
    predictor = load_predictor(bundle, backend, threads=threads)
    gc.collect()  # what loading left behind is freed, not frozen for good
    gc.freeze()
    return predictor


def app_from_env() -> FastAPI:
    """The app of each uvicorn worker, configured by :func:`serve` through the environment."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    backend: BackendName = os.environ[f"{ENV_PREFIX}BACKEND"]  # type: ignore[assignment]
    threads = int(os.environ[f"{ENV_PREFIX}THREADS"])
    max_batch = int(os.environ[f"{ENV_PREFIX}MAX_BATCH"])
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    bundle = os.environ[f"{ENV_PREFIX}BUNDLE"]
    key_variable = os.environ.get(API_KEY_ENV)
    return create_app(
        Service(partial(load_and_freeze, bundle, backend, threads), max_batch),
        limits=limits_from_env(),
        api_key=read_api_key(key_variable) if key_variable else None,
    )


def serve(
    bundle: str,
    *,
    backend: BackendName = "onnx",
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    threads: int = 1,
    max_batch: int = MAX_BATCH,
    limits: ServeLimits | None = None,
    api_key_env: str | None = None,
    allow_unauthenticated: bool = False,
    access_log: bool = False,
) -> None:
    """Run the service under uvicorn until interrupted; each worker loads its own model.

    Beyond loopback it wants an API key (``api_key_env`` names the environment variable that
    holds it) unless ``allow_unauthenticated``: then it warns, and something in front must
    authenticate.
    """
    import uvicorn

    limits = limits or ServeLimits()
    if api_key_env is not None:
        read_api_key(api_key_env)  # a missing key fails here, not in every worker
    elif not is_loopback(host):
        if not allow_unauthenticated:
            raise ConfigError(
                f"--host {host} lets other machines call the service, and no API key is set: "
                "pass --api-key-env VARIABLE (the key in that environment variable), or "
                "--allow-unauthenticated when a gateway in front authenticates"
            )
        log.warning(
            "serving on %s without an API key: anyone who can reach port %d can call it", host, port
        )
    ensure_open_file_limit(limits.limit_concurrency)
    os.environ.update(
        {
            f"{ENV_PREFIX}BUNDLE": str(bundle),
            f"{ENV_PREFIX}BACKEND": backend,
            f"{ENV_PREFIX}THREADS": str(threads),
            f"{ENV_PREFIX}MAX_BATCH": str(max_batch),
            LIMITS_ENV: json.dumps(asdict(limits)),
            API_KEY_ENV: api_key_env or "",
        }
    )
    uvicorn.run(
        "prm.serving.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        # A worker first imports torch and ONNX Runtime, seconds on a busy machine: past
        # uvicorn's 5 s it would be killed and started again before it ever served.
        timeout_worker_healthcheck=30,
        **uvicorn_settings(limits),
    )
