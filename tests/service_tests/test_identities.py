"""Named identities and roles, the token file, and authentication before the body is read."""

from __future__ import annotations

import hmac
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_engine import FakeEngine
from live_server import serve_app

from model.errors import ConfigurationError
from service import auth
from service.app import create_app
from service.settings import Settings

ADMIN, REVIEWER, SUBMITTER = "adm-0123456789abcdef", "rev-0123456789abcdef", "sub-0123456789abcd"


def _report(name: str, measured: object) -> None:
    """Print what a test measured (shown with ``pytest -s``; quoted in the closing notes)."""
    print(f"\nauth-before-body measurements, {name}:", measured)


def _report_all(**measured: object) -> None:
    for name, value in measured.items():
        _report(name, value)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "tokens"
    path.write_text(
        f"# llmctv identities\nada:admin:{ADMIN}\n\nrita:reviewer:{REVIEWER}  # ward 3\n"
        f"pacs-router:submitter:{SUBMITTER}\n"
    )
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, token_file: Path) -> Iterator[str]:
    settings = Settings.from_env(
        api_tokens_file=token_file,
        storage_dir=tmp_path_factory.mktemp("storage"),
        dicom_listener=False,
        storage_min_free_bytes=1,
    )
    with serve_app(create_app(settings, engine=FakeEngine())) as url:
        yield url


@pytest.mark.parametrize("path", ["/metrics", "/audit"])
def test_submitter_and_reviewer_are_forbidden_admin_endpoints(server: str, path: str) -> None:
    for secret in (SUBMITTER, REVIEWER):
        answer = httpx.get(f"{server}{path}", headers=bearer(secret))
        assert answer.status_code == 403
        assert answer.json()["code"] == "forbidden"
    assert httpx.get(f"{server}{path}", headers=bearer(ADMIN)).status_code == 200
    assert httpx.get(f"{server}{path}", headers=bearer("not-a-token")).status_code == 401


def test_token_file_identities_may_submit(server: str) -> None:
    answer = httpx.get(f"{server}/jobs/{'0' * 32}", headers=bearer(SUBMITTER))
    assert answer.status_code == 404  # authenticated: the job is simply unknown


def test_unreadable_token_file_refuses_to_start(tmp_path: Path) -> None:
    settings = Settings.from_env(api_tokens_file=tmp_path / "missing", storage_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="token file"):
        create_app(settings)


def test_token_file_entries_join_the_environment_entries(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("ops:admin:from-the-file-000000\n")
    settings = Settings.from_env(api_tokens=["legacy-bare-secret-0000"], api_tokens_file=path)
    names = {e.identity.name: e.identity.role for e in auth.configured_entries(settings.auth)}
    assert names == {"default": auth.Role.ADMIN, "ops": auth.Role.ADMIN}


def test_every_entry_is_compared_whatever_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant time: a bad token costs one comparison per entry, like a good one."""
    entries = auth.parse_token_entries([f"a:admin:{ADMIN}", f"b:submitter:{SUBMITTER}"])
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # the module auth uses
    for presented in (ADMIN, SUBMITTER, ADMIN[:-1] + "x", "x", "", None):
        calls.clear()
        auth.identify_among(entries, False, presented)
        assert len(calls) == 2


def _raw_request(url: str, path: str, headers: dict[str, str]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _stream_until_answered(sock: socket.socket, total: int) -> tuple[bytes, float, int]:
    """Send up to ``total`` body bytes while reading; (status line, seconds, bytes sent)."""
    chunk = b"7" * (1 << 20)
    answer: list[bytes] = []
    t0 = time.perf_counter()

    def read() -> None:
        try:
            answer.append(sock.recv(4096))
        except OSError:
            answer.append(b"")

    reader = threading.Thread(target=read)
    reader.start()
    sent = 0
    try:
        while sent < total and not answer:
            sock.sendall(chunk[: min(len(chunk), total - sent)])
            sent += min(len(chunk), total - sent)
    except OSError:
        pass  # the server closed the connection after its answer
    reader.join(timeout=10)
    elapsed = time.perf_counter() - t0
    sock.close()
    return (answer[0] if answer else b"").split(b"\r\n", 1)[0], elapsed, sent


def test_unauthenticated_70_mb_json_gets_401_before_the_body(server: str) -> None:
    size = 70 * 1000 * 1000
    health: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client() as client:
            while not done.is_set():
                t0 = time.perf_counter()
                assert client.get(f"{server}/health").status_code == 200
                health.append(time.perf_counter() - t0)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        while len(health) < 3:
            time.sleep(0.01)
        headers = {"Content-Type": "application/json", "Content-Length": str(size)}
        status, seconds, sent = _stream_until_answered(
            _raw_request(server, "/orders", headers), size
        )
        time.sleep(0.2)
    finally:
        done.set()
        prober.join()
    assert status.startswith(b"HTTP/1.1 401"), status
    assert seconds < 1.0
    assert sent < size // 4  # answered long before the body was sent
    _report_all(
        unauth_70mb_401_s=seconds,
        unauth_70mb_sent_mb=sent / 1e6,
        health_median_ms=statistics.median(health) * 1000,
        health_max_ms=max(health) * 1000,
    )
    assert max(health) < 0.5


def test_unauthenticated_uploads_spool_nothing(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    size = 250 * 1000 * 1000
    headers = {"Content-Type": "multipart/form-data; boundary=xyz", "Content-Length": str(size)}
    results: list[tuple[bytes, float, int]] = []

    def upload() -> None:
        results.append(_stream_until_answered(_raw_request(server, "/contour", headers), size))

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [r[0][:12] for r in results] == [b"HTTP/1.1 401"] * 4
    assert list(spool.iterdir()) == []
    _report("unauth_upload_401_max_s", max(r[1] for r in results))


def test_json_bodies_have_a_small_limit(server: str) -> None:
    big = {"study_instance_uid": "1.2.3", "clinical": {"note": "x" * 70_000}}
    answer = httpx.post(f"{server}/orders", json=big, headers=bearer(SUBMITTER))
    assert answer.status_code == 413
    assert answer.json()["code"] == "payload_too_large"


def test_health_endpoints_need_no_token(server: str) -> None:
    """Without a token: liveness and health answer 200, readiness its real state (200 once
    the embedded worker is up; never 401)."""
    assert httpx.get(f"{server}/health/live").status_code == 200
    assert httpx.get(f"{server}/health").status_code == 200
    deadline = time.monotonic() + 30
    while (ready := httpx.get(f"{server}/health/ready")).status_code != 200:
        assert ready.status_code == 503, ready.text  # not ready yet, never unauthorized
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.2)
    assert httpx.get(f"{server}/openapi.json").status_code == 401
