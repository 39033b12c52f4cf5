"""What a hostile or careless client may hold or learn: metric labels, aborts, located errors,
paths in health answers, the API key, binding beyond loopback, and the socket timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.client
import json
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import uvicorn

from prm.cli.main import build_parser, main
from prm.config import ConfigError
from prm.serving import app as app_module
from prm.serving.app import (
    CLIENT_CLOSED,
    LIMITS_ENV,
    ServeLimits,
    Service,
    create_app,
    ensure_open_file_limit,
    is_loopback,
    json_path_at,
    serve,
    status_label,
    uvicorn_settings,
    without_paths,
)
from prm.serving.bundle import BundleError
from prm.serving.predictor import Predictor

with warnings.catch_warnings():  # starlette would rather have httpx2; httpx works the same
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

KEY = "test-api-key-0123456789"
RERANK_BODY = {"user": {"user_id": 3}, "items": [{"item_id": 5}, {"item_id": 9}]}
JSON = {"content-type": "application/json"}


def loaded(predictor: Predictor) -> Service:
    service = Service(lambda: predictor)
    service.load()
    return service


def wait_until_settled(client: TestClient) -> None:
    deadline = time.monotonic() + 10
    while client.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.01)


# --- metrics ---------------------------------------------------------------------------------


def test_made_up_methods_and_paths_add_no_metric_series(onnx_predictor: Predictor) -> None:
    def series(text: str) -> list[str]:
        return [line.rsplit(" ", 1)[0] for line in text.splitlines() if line[0] != "#"]

    with TestClient(create_app(loaded(onnx_predictor))) as client:
        client.request("BREW", "/rerank")
        client.get("/made/up")
        client.get("/metrics")
        before = client.get("/metrics").text
        for index in range(200):
            client.request(f"JUNK{index}", "/rerank")
            client.get(f"/made/up/{index}")
        after = client.get("/metrics").text
    assert "JUNK" not in after and "made/up" not in after
    assert 'prm_requests_total{method="other",path="/rerank",status="405"} 201.0' in after
    assert 'prm_requests_total{method="GET",path="other",status="404"} 201.0' in after
    assert series(after) == series(before)


def test_status_label_tells_a_client_that_left_from_a_server_error() -> None:
    assert status_label(200, client_closed=False) == "200"
    assert status_label(None, client_closed=False) == "500"  # the app answered nothing
    assert status_label(None, client_closed=True) == CLIENT_CLOSED
    assert status_label(500, client_closed=True) == CLIENT_CLOSED


def test_a_client_that_aborts_its_upload_is_no_5xx(onnx_predictor: Predictor) -> None:
    """Through the whole ASGI stack: the body never comes, the client disconnects."""
    app = create_app(loaded(onnx_predictor))
    sent: list[dict] = []

    async def disconnect() -> dict:
        return {"type": "http.disconnect"}

    async def record(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/rerank",
        "raw_path": b"/rerank",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"500")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    for _ in range(3):
        asyncio.run(app(scope, disconnect, record))
    assert sent == []  # nothing answered to a client that is gone
    with TestClient(app) as client:
        text = client.get("/metrics").text
    assert (
        f'prm_requests_total{{method="POST",path="/rerank",status="{CLIENT_CLOSED}"}} 3.0' in text
    )
    assert 'status="500"' not in text


# --- every error names where and what ------------------------------------------------------


DIGITS = "1" + "0" * 5000
LOCATED = {
    "nesting too deep": (
        b'{"user": {"user_id": 1}, "items": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        ["body", "items", 0, 0, 0, 0, 0, 0, 0],
        "recursion limit",
    ),
    "huge user id": (
        f'{{"user": {{"user_id": {DIGITS}}}, "items": [{{"item_id": 1}}]}}'.encode(),
        ["body", "user", "user_id"],
        "number out of range",
    ),
    "huge feature": (
        b'{"user": {"user_id": 1}, "items": [{"item_id": 1, "features": [0.5, '
        + DIGITS.encode()
        + b"]}]}",
        ["body", "items", 0, "features", 1],
        "number out of range",
    ),
    "trailing comma": (b'{"user": {"user_id": 1,}, "items": []}', ["body", "user"], "trailing"),
    "truncated": (
        b'{"user": {"user_id": 1}, "items": [{"item_id": 4',
        ["body", "items", 0, "item_id"],
        "EOF",
    ),
}


@pytest.mark.parametrize("case", list(LOCATED), ids=list(LOCATED))
def test_json_that_cannot_be_parsed_is_a_422_naming_the_field(
    onnx_predictor: Predictor, case: str
) -> None:
    raw, loc, fragment = LOCATED[case]
    with TestClient(create_app(loaded(onnx_predictor))) as client:
        response = client.post("/rerank", content=raw, headers=JSON)
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == loc and fragment in detail["msg"], detail


def test_json_path_at_points_into_nested_lists_and_objects() -> None:
    body = b'{"a": {"b": [1, 2, {"c": [3, 99999'
    assert json_path_at(body, len(body) - 2) == ["a", "b", 2, "c", 1]
    assert json_path_at(b'{"a" 1}', 5) == []  # no key yet: the document itself
    assert json_path_at(b"", 0) == []


def test_unknown_paths_and_wrong_methods_name_what_is_wrong(onnx_predictor: Predictor) -> None:
    with TestClient(create_app(loaded(onnx_predictor))) as client:
        missing = client.get("/nowhere")
        wrong_method = client.get("/rerank")
    assert missing.status_code == 404
    assert missing.json()["detail"][0]["loc"] == ["path"]
    assert wrong_method.status_code == 405
    assert wrong_method.json()["detail"] == [
        {"loc": ["method"], "msg": "/rerank takes POST", "type": "http_error"}
    ]


# --- health answers: loading, failed, and no paths ------------------------------------------


def test_a_failed_load_is_told_apart_from_loading_and_shows_no_path(tmp_path: Path) -> None:
    bundle = tmp_path / "secret-layout" / "bundle"

    def broken() -> Predictor:
        raise BundleError(f"{bundle}: not a model bundle (no manifest.json); see `prm export`")

    with TestClient(create_app(Service(broken))) as client:
        wait_until_settled(client)
        answers = [client.get(path) for path in ("/readyz", "/healthz")]
        rerank = client.post("/rerank", json=RERANK_BODY)
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json()["status"] == "failed"
        assert answer.json()["error"].startswith("failed to load: BundleError: bundle: not a")
    assert rerank.status_code == 503
    assert rerank.json()["detail"][0]["type"] == "model_failed"
    assert "failed to load" in rerank.json()["detail"][0]["msg"]
    for text in [answer.text for answer in answers] + [rerank.text]:
        assert str(tmp_path) not in text and "secret-layout" not in text


def test_rerank_while_loading_says_so(onnx_predictor: Predictor) -> None:
    release = threading.Event()

    def slow() -> Predictor:
        release.wait(timeout=30)
        return onnx_predictor

    with TestClient(create_app(Service(slow))) as client:
        response = client.post("/rerank", json=RERANK_BODY)
        release.set()
    assert response.status_code == 503
    assert response.json()["detail"][0]["type"] == "model_loading"
    assert response.headers["retry-after"] == "5"


def test_without_paths_keeps_the_last_part_of_each_path() -> None:
    assert without_paths("/srv/models/v3/pv.onnx: bad") == "pv.onnx: bad"
    assert without_paths(r"open C:\models\v3 failed: 'x/y/z'") == "open v3 failed: 'z'"
    assert without_paths("3 items; this model expects 14") == "3 items; this model expects 14"


# --- API key --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(onnx_predictor: Predictor) -> Iterator[TestClient]:
    with TestClient(create_app(loaded(onnx_predictor), api_key=KEY)) as client:
        yield client


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [({}, "missing API key"), ({"x-api-key": KEY + "x"}, "wrong API key")],
    ids=["missing", "wrong"],
)
def test_without_the_api_key_requests_are_401(keyed: TestClient, headers, fragment) -> None:
    for response in (
        keyed.post("/rerank", json=RERANK_BODY, headers=headers),
        keyed.get("/metrics", headers=headers),
        keyed.get("/openapi.json", headers=headers),
    ):
        assert response.status_code == 401
        (detail,) = response.json()["detail"]
        assert detail["loc"] == ["header", "x-api-key"] and fragment in detail["msg"]
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_with_the_api_key_requests_are_served(keyed: TestClient) -> None:
    assert keyed.post("/rerank", json=RERANK_BODY, headers={"X-API-Key": KEY}).status_code == 200
    bearer = {"authorization": f"Bearer {KEY}"}
    assert keyed.get("/metrics", headers=bearer).status_code == 200
    for path in ("/healthz", "/readyz", "/livez"):  # open for load balancers
        assert keyed.get(path).status_code == 200


def test_a_request_without_the_key_is_refused_before_its_body_is_read(keyed: TestClient) -> None:
    huge = b"x" * (2 * app_module.MAX_BODY_BYTES)
    assert keyed.post("/rerank", content=huge, headers=JSON).status_code == 401


# --- binding beyond loopback ----------------------------------------------------------------


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """uvicorn.run recorded instead of run; serve's environment restored afterwards."""
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(app_module, "ensure_open_file_limit", lambda limit: None)
    for name in ("BUNDLE", "BACKEND", "THREADS", "LIMITS", "API_KEY_ENV"):
        monkeypatch.setenv(f"{app_module.ENV_PREFIX}{name}", "")
    return calls


def test_is_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "", "10.0.0.5", "example.com"]))


def test_binding_beyond_loopback_without_a_key_is_refused(uvicorn_calls: list[dict]) -> None:
    with pytest.raises(ConfigError, match="--api-key-env VARIABLE.*--allow-unauthenticated"):
        serve("bundle", host="0.0.0.0")
    assert uvicorn_calls == []


def test_allow_unauthenticated_serves_with_a_loud_warning(
    uvicorn_calls: list[dict], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="prm.serving"):
        serve("bundle", host="0.0.0.0", allow_unauthenticated=True)
    assert len(uvicorn_calls) == 1
    assert "without an API key" in caplog.text


def test_an_api_key_from_the_environment_allows_any_host(
    uvicorn_calls: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRM_TEST_KEY", KEY)
    limits = ServeLimits(header_timeout=3.0, limit_concurrency=64)
    serve("bundle", host="0.0.0.0", api_key_env="PRM_TEST_KEY", limits=limits)
    (call,) = uvicorn_calls
    assert call["limit_concurrency"] == 64 and call["timeout_keep_alive"] == 5
    assert call["http"] is app_module.HeadTimeoutProtocol
    assert json.loads(os.environ[LIMITS_ENV]) == asdict(limits)
    assert os.environ[app_module.API_KEY_ENV] == "PRM_TEST_KEY"  # its name, not it

    monkeypatch.setenv("PRM_TEST_KEY", "short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        serve("bundle", host="0.0.0.0", api_key_env="PRM_TEST_KEY")


def test_prm_serve_refuses_a_public_host_without_a_key_and_bad_limits(
    served, uvicorn_calls: list[dict], capsys: pytest.CaptureFixture
) -> None:
    model = ["serve", "--model", str(served.bundle)]
    assert main([*model, "--host", "0.0.0.0"]) == 2
    assert "--allow-unauthenticated" in capsys.readouterr().err
    assert main([*model, "--header-timeout", "0"]) == 2
    assert "--header-timeout must be positive" in capsys.readouterr().err
    assert uvicorn_calls == []
    flags = ["--limit-concurrency", "10", "--body-timeout", "2.5", "--keep-alive-timeout", "3"]
    assert main([*model, "--host", "0.0.0.0", "--allow-unauthenticated", *flags]) == 0
    (call,) = uvicorn_calls
    assert (call["host"], call["limit_concurrency"], call["timeout_keep_alive"]) == (
        "0.0.0.0",
        10,
        3,
    )
    assert json.loads(os.environ[LIMITS_ENV])["body_timeout"] == 2.5


def test_each_worker_builds_the_app_serve_describes(
    served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """app_from_env, as a uvicorn worker runs it: bundle, limits and key from the environment."""
    monkeypatch.setenv("PRM_TEST_KEY", KEY)
    for name, value in {
        "BUNDLE": str(served.bundle),
        "BACKEND": "onnx",
        "THREADS": "1",
        "MAX_BATCH": "8",
        "LIMITS": json.dumps(asdict(ServeLimits(max_body_bytes=100))),
        "API_KEY_ENV": "PRM_TEST_KEY",
    }.items():
        monkeypatch.setenv(f"{app_module.ENV_PREFIX}{name}", value)
    try:
        with TestClient(app_module.app_from_env()) as client:
            wait_until_settled(client)
            assert gc.get_freeze_count() > 0  # what loading left is out of the collector's way
            assert client.post("/rerank", json=RERANK_BODY).status_code == 401
            keyed = {"x-api-key": KEY}
            assert client.post("/rerank", json=RERANK_BODY, headers=keyed).status_code == 200
            big = {**RERANK_BODY, "padding": "x" * 100}
            assert client.post("/rerank", json=big, headers=keyed).status_code == 413
    finally:
        gc.unfreeze()


def test_prm_serve_defaults_are_the_library_defaults() -> None:
    args = build_parser().parse_args(["serve", "--model", "bundle"])
    assert (
        ServeLimits(
            max_body_bytes=args.max_body_bytes,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            keep_alive_timeout=args.keep_alive_timeout,
            limit_concurrency=args.limit_concurrency,
        )
        == ServeLimits()
    )
    assert args.max_batch == app_module.MAX_BATCH


@pytest.mark.parametrize(
    ("soft", "hard", "raised_to"),
    [(1024, 524288, (524288, 524288)), (256, -1, (4160, -1)), (20000, 20000, None)],
    ids=["to the hard limit", "hard unlimited", "already enough"],
)
def test_the_open_file_limit_is_raised_to_fit_the_connections(
    monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, raised_to
) -> None:
    import resource

    calls = []
    monkeypatch.setattr(resource, "RLIM_INFINITY", -1)
    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, hard))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: calls.append(limits))
    ensure_open_file_limit(4096)
    assert calls == ([raised_to] if raised_to else [])


def test_a_connection_limit_beyond_the_hard_file_limit_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1024))
    with pytest.raises(ConfigError, match="--limit-concurrency 4096 needs 4160 open files"):
        ensure_open_file_limit(4096)


# --- timeouts and the connection limit, on a real socket ------------------------------------

SHORT = ServeLimits(header_timeout=0.3, body_timeout=0.3, keep_alive_timeout=5, limit_concurrency=4)


@contextlib.contextmanager
def running(predictor: Predictor, loop: str = "auto") -> Iterator[uvicorn.Server]:
    """uvicorn in a thread, with ``SHORT`` limits, as `prm serve --workers N` configures it:
    on a listening socket made the way uvicorn's ``bind_socket`` made it before 0.55, with
    protocol number 0, which asyncio does not know as TCP, so its event loop leaves Nagle's
    algorithm on."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(LIMITS_ENV, json.dumps(asdict(SHORT)))
        config = uvicorn.Config(
            create_app(loaded(predictor), limits=SHORT),
            host="127.0.0.1",
            port=0,
            log_level="error",
            loop=loop,
            **uvicorn_settings(SHORT),
        )
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # protocol 0
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(("127.0.0.1", 0))
        listening.set_inheritable(True)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            yield server
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            listening.close()


def port_of(server: uvicorn.Server) -> int:
    return server.servers[0].sockets[0].getsockname()[1]


@pytest.fixture(scope="module")
def live_port(onnx_predictor: Predictor) -> Iterator[int]:
    with running(onnx_predictor) as server:
        yield port_of(server)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_connection_has_nagles_algorithm_off(onnx_predictor: Predictor, loop: str) -> None:
    """Else an answer's body, written after its head, waits for the client's delayed ACK:
    40 ms a request under `prm serve --workers 2` on asyncio's loop."""
    with running(onnx_predictor, loop) as server:
        connection = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=3)
        connection.request("GET", "/livez")
        assert connection.getresponse().read()
        (protocol,) = server.server_state.connections
        server_side = protocol.transport.get_extra_info("socket")
        assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        connection.close()


def closed_after(connection: socket.socket, limit: float = 3.0) -> tuple[float, bytes]:
    """Seconds until the service closed ``connection``, and what it sent before."""
    start = time.monotonic()
    connection.settimeout(limit)
    received = b""
    while chunk := connection.recv(4096):
        received += chunk
    return time.monotonic() - start, received


def test_a_connection_that_sends_nothing_is_closed(live_port: int) -> None:
    with socket.create_connection(("127.0.0.1", live_port)) as connection:
        seconds, received = closed_after(connection)
    assert SHORT.header_timeout / 2 - 0.05 < seconds < 2 and received == b""


def trickled_head_answer(connection: socket.socket) -> bytes:
    """Send a request head a byte every 50 ms (1.6 s in all, past the deadline); the answer."""
    with contextlib.suppress(OSError):  # reset or broken pipe, once the service has closed it
        for byte in b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n":
            connection.sendall(bytes([byte]))
            time.sleep(0.05)
        connection.settimeout(3)
        return connection.recv(4096)
    return b""


def test_a_request_head_sent_byte_by_byte_is_cut_off(live_port: int) -> None:
    with socket.create_connection(("127.0.0.1", live_port)) as connection:
        assert trickled_head_answer(connection) == b""  # closed, never answered


def test_a_slow_head_on_a_kept_alive_connection_is_cut_off(live_port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", live_port, timeout=3)
    connection.request("GET", "/livez")
    connection.getresponse().read()
    time.sleep(0.5)  # idle past the head deadline: only the keep-alive timeout applies here
    assert trickled_head_answer(connection.sock) == b""
    connection.close()


def test_a_request_head_over_16_kib_is_400_and_the_connection_closed(live_port: int) -> None:
    head = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 20_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", live_port)) as connection:
        with contextlib.suppress(OSError):  # reset, once the service has closed it
            connection.sendall(head)
        seconds, received = closed_after(connection)
    assert received.startswith(b"HTTP/1.1 400 ") and b"request head over 16384 bytes" in received
    assert seconds < 2
    with socket.create_connection(("127.0.0.1", live_port)) as connection:  # 15 KiB is fine
        connection.sendall(head.replace(b"a" * 20_000, b"a" * 15_000))
        connection.settimeout(3)
        assert connection.recv(4096).startswith(b"HTTP/1.1 200 ")


def test_a_slow_body_gets_408_and_the_connection_closed(live_port: int) -> None:
    head = b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", live_port)) as connection:
        connection.sendall(head + b"Content-Length: 100\r\n\r\n{")
        seconds, received = closed_after(connection)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b'"loc":["body"]' in received and b"connection: close" in received.lower()
    assert seconds < 2


def test_a_quick_client_on_a_kept_alive_connection_is_served(live_port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", live_port, timeout=3)
    sockets = []
    for _ in range(3):  # the head deadline restarts after each answer
        connection.request("GET", "/livez")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        sockets.append(connection.sock)
        time.sleep(0.2)
    connection.close()
    assert sockets[0] is sockets[1] is sockets[2]


def test_beyond_the_connection_limit_requests_get_503(live_port: int) -> None:
    idle = [
        socket.create_connection(("127.0.0.1", live_port)) for _ in range(SHORT.limit_concurrency)
    ]
    try:
        with socket.create_connection(("127.0.0.1", live_port)) as connection:
            connection.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            _, received = closed_after(connection)
        assert received.startswith(b"HTTP/1.1 503 ")
    finally:
        for connection in idle:
            connection.close()
