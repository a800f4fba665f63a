"""The HTTP server of ``llmctv serve`` (service.http_server) against slow and nosy clients.

A live uvicorn on a free loopback port, configured exactly as ``llmctv serve`` configures it,
with short timeouts so that the tests take seconds.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fake_engine import HoldingDispatcher
from gateway_client import AUTH, TOKEN
from live_server import free_port

from service.app import create_app
from service.deps import ServiceState
from service.http_server import server_config
from service.settings import Settings
from workers.jobs import FileJobStore, JobFiles

HEADER_TIMEOUT = 1.5


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def _serving(storage: Path, **options: Any) -> Iterator[tuple[str, int, _Lines]]:
    settings = Settings.from_env(
        api_tokens=[TOKEN],
        storage_dir=storage,
        dicom_listener=False,
        host="127.0.0.1",
        port=free_port(),
        **options,
    )
    files = JobFiles(Path(storage))
    state = ServiceState(settings, FileJobStore(files), files, HoldingDispatcher())
    config = server_config(create_app(settings, state), settings.http, "info")
    access = _Lines()
    logging.getLogger("uvicorn.access").addHandler(access)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{settings.http.port}", settings.http.port, access
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        logging.getLogger("uvicorn.access").removeHandler(access)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, _Lines]]:
    with _serving(
        tmp_path_factory.mktemp("http"),
        http_header_timeout=HEADER_TIMEOUT,
        http_body_idle_timeout=2.0,
        http_min_body_rate=1000.0,
    ) as served:
        yield served


def test_query_strings_never_reach_the_access_log(server: tuple[str, int, _Lines]) -> None:
    url, _, access = server
    assert httpx.get(f"{url}/health?token=secret-123").status_code == 200
    httpx.get(f"{url}/jobs/{'0' * 32}?token=secret-456", headers=AUTH)
    httpx.get(f"{url}/jobs/{'0' * 32}?access_token=secret-789")
    time.sleep(0.2)
    logged = "\n".join(access.lines)
    assert "/health" in logged and "/jobs/" in logged  # the access log is on
    assert "secret" not in logged and "token=" not in logged


def _closed_after(sock: socket.socket, drip: bytes, every: float, limit: float) -> float:
    """Seconds until the server closes ``sock``; one byte of ``drip`` is sent every ``every`` s."""
    t0 = time.monotonic()
    sock.settimeout(every)
    n = 0
    while time.monotonic() - t0 < limit:
        try:
            if sock.recv(1024) == b"":
                return time.monotonic() - t0
        except TimeoutError:
            pass
        except ConnectionError:
            return time.monotonic() - t0
        try:
            sock.send(drip[n % len(drip) : n % len(drip) + 1])
        except OSError:
            return time.monotonic() - t0
        n += 1
    return float("inf")


def _dripping(port: int, drip: bytes, every: float, count: int, limit: float) -> list[float]:
    results: list[float] = [float("inf")] * count

    def one(n: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            results[n] = _closed_after(sock, drip, every, limit)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_twenty_clients_dripping_headers_are_closed(server: tuple[str, int, _Lines]) -> None:
    url, port, _ = server
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200
    times = _dripping(port, head, every=0.5, count=20, limit=10.0)
    assert max(times) < HEADER_TIMEOUT + 1.5, times
    assert httpx.get(f"{url}/health").status_code == 200


def test_silent_connection_is_closed(server: tuple[str, int, _Lines]) -> None:
    _, port, _ = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(HEADER_TIMEOUT + 3)
        t0 = time.monotonic()
        assert sock.recv(1024) == b""
        assert time.monotonic() - t0 < HEADER_TIMEOUT + 1.0


def test_dripping_body_is_closed(server: tuple[str, int, _Lines]) -> None:
    _, port, _ = server
    head = (
        b"POST /orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        elapsed = _closed_after(sock, b"{", every=0.3, limit=10.0)
    assert elapsed < HEADER_TIMEOUT + 2.0, elapsed


def test_keep_alive_requests_still_work(server: tuple[str, int, _Lines]) -> None:
    url, _, _ = server
    with httpx.Client() as client:
        for _ in range(3):
            assert client.get(f"{url}/health").status_code == 200
            time.sleep(0.3)


def test_connections_over_the_concurrency_limit_get_503(tmp_path: Path) -> None:
    with _serving(tmp_path, http_limit_concurrency=3) as (url, port, _):
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            time.sleep(0.2)
            assert httpx.get(f"{url}/health").status_code == 503
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        assert httpx.get(f"{url}/health").status_code == 200


def test_llmctv_serve_runs_the_guarded_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model.settings import clear_settings_cache
    from service.cli import main
    from service.http_server import GuardedH11Protocol, QueryStringFilter

    captured: list[uvicorn.Config] = []
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets=None: captured.append(self.config)
    )
    monkeypatch.setenv("LLMCTV_API_TOKENS", TOKEN)
    monkeypatch.setenv("LLMCTV_DICOM_LISTENER", "false")
    monkeypatch.setenv("LLMCTV_HTTP_LIMIT_CONCURRENCY", "7")
    clear_settings_cache()
    try:
        assert main(["serve", "--storage-dir", str(tmp_path), "--port", str(free_port())]) == 0
    finally:
        clear_settings_cache()
    (config,) = captured
    assert isinstance(config.http, type) and issubclass(config.http, GuardedH11Protocol)
    assert config.limit_concurrency == 7
    assert config.timeout_graceful_shutdown is not None
    assert any(
        isinstance(f, QueryStringFilter) for f in logging.getLogger("uvicorn.access").filters
    )


def test_a_forged_forwarded_address_does_not_escape_the_lockout(tmp_path: Path) -> None:
    """A client on the gateway's host naming a new X-Forwarded-For each try: before, uvicorn
    believed loopback's forwarded headers, so every guess came from "another address" and the
    lockout never started. Now forwarded headers count only from configured proxies."""
    with _serving(tmp_path, auth_max_failures=5) as (url, _, _):
        statuses = [
            httpx.get(
                f"{url}/jobs",
                headers={"Authorization": f"Bearer guess-{n}", "X-Forwarded-For": f"10.0.0.{n}"},
            ).status_code
            for n in range(8)
        ]
    assert statuses == [401] * 5 + [429] * 3, statuses


def test_forwarded_headers_are_believed_from_configured_proxies_only() -> None:
    assert server_config(create_app_for_config(), Settings.from_env().http).proxy_headers is False
    trusted = Settings.from_env(http_trusted_proxies=["10.1.2.3"]).http
    config = server_config(create_app_for_config(), trusted)
    assert config.proxy_headers is True and config.forwarded_allow_ips == ["10.1.2.3"]


def create_app_for_config() -> Any:
    """An app object for building a configuration (never served)."""
    from fastapi import FastAPI

    return FastAPI()
