"""The lockout after failed authentications (issue 23): login form and bearer tokens.

On e766665 the review station's login form took 430 tries per second with no lockout, and
bearer tokens the same. Here a burst from one loopback address (127.0.0.x: the whole range
is this host) is checked at most ``auth_max_failures`` times, then answered 429 with
``Retry-After`` even for the right token, while another address logs in at once; every
failure and every lockout is in the audit trail, without a token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_engine import FakeEngine
from live_server import serve_app

from service.app import create_app
from service.attempts import AttemptLimiter, address_key, identity_key
from service.settings import Settings
from workers.audit import AuditLog

ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-0123456789abcdef0"
TOKENS = [f"alice:reviewer:{ALICE}", f"bob:submitter:{BOB}"]
LIMIT, WINDOW_S = 10, 300.0


def _report(name: str, measured: object) -> None:
    """Print what a test measured (shown with ``pytest -s``; quoted in the closing notes)."""
    print(f"\nauthentication lockout, {name}:", measured)


def _from(url: str, address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (a loopback address of this host)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=url, transport=transport, timeout=30)


def _audit(app: Any) -> AuditLog:
    audit = app.state.llmctv_audit
    assert isinstance(audit, AuditLog)
    return audit


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Path]]:
    storage = tmp_path_factory.mktemp("auth-limits")
    settings = Settings.from_env(
        api_tokens=TOKENS,
        storage_dir=storage,
        dicom_listener=False,
        storage_min_free_bytes=1,
    )
    assert settings.auth.auth_max_failures == LIMIT  # the defaults under test
    assert settings.auth.auth_failure_window_s == WINDOW_S
    app = create_app(settings, engine=FakeEngine())
    with serve_app(app) as url:
        yield url, app, storage


def _audit_text(storage: Path) -> str:
    return "".join(p.read_text() for p in sorted((storage / "audit").glob("*.jsonl")))


# --- the counting, on a clock of its own ---------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limiter_locks_after_n_failures_until_the_window_passes() -> None:
    clock = _Clock()
    limiter = AttemptLimiter(3, 60.0, clock=clock)
    key = address_key("10.0.0.1")
    started = []
    for _ in range(3):
        assert limiter.admit([key]) is None
        started.append(limiter.settle([key], failed=True))
        clock.now += 1.0
    assert started == [{}, {}, {key: 58}], "the third failure locks, until the first is 60 s old"
    assert limiter.admit([key]) == (key, 57)
    assert limiter.locked_for(address_key("10.0.0.2")) == 0, "other keys are open"
    clock.now = 1000.0 + 60.0  # the first failure has left the window: one more try
    assert limiter.admit([key]) is None
    assert limiter.settle([key], failed=True) == {key: 1}, "a failure locks again at once"
    clock.now += 2.0
    assert limiter.admit([key]) is None
    assert limiter.settle([key], failed=False) == {}, "a success counts nothing"


def test_attempts_in_flight_count_so_a_parallel_burst_gets_no_more_tries() -> None:
    limiter = AttemptLimiter(3, 60.0, clock=_Clock())
    key = address_key("10.0.0.3")
    admitted = [limiter.admit([key]) for _ in range(10)]
    assert admitted[:3] == [None] * 3
    assert all(a == (key, 1) for a in admitted[3:]), admitted
    limiter.settle([key], failed=False)
    assert limiter.admit([key]) is None, "a settled success frees its place"


def test_the_limiter_is_bounded_and_can_be_switched_off() -> None:
    clock = _Clock()
    limiter = AttemptLimiter(2, 60.0, max_keys=100, clock=clock)
    for n in range(1000):
        key = identity_key(f"name-{n}")
        assert limiter.admit([key]) is None
        limiter.settle([key], failed=True)
    assert len(limiter._failures) <= 100
    off = AttemptLimiter(0, 60.0, clock=clock)
    key = address_key("10.0.0.4")
    for _ in range(50):
        assert off.admit([key]) is None
        assert off.settle([key], failed=True) == {}


# --- the login form ------------------------------------------------------------------------------
def test_a_login_burst_is_locked_out_and_another_address_is_not(
    gateway: tuple[str, Any, Path],
) -> None:
    url, app, storage = gateway
    attacker, colleague = _from(url, "127.0.0.2"), _from(url, "127.0.0.3")
    statuses: list[int] = []
    retry_after: list[int] = []
    t0 = time.perf_counter()
    for n in range(50):
        answer = attacker.post("/ui/login", data={"token": f"guess-{n:04d}-0123456789"})
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            retry_after.append(int(answer.headers["retry-after"]))
    seconds = time.perf_counter() - t0
    assert statuses[:LIMIT] == [401] * LIMIT
    assert statuses[LIMIT:] == [429] * (50 - LIMIT), statuses
    assert all(0 < r <= WINDOW_S for r in retry_after), retry_after
    right = attacker.post("/ui/login", data={"token": ALICE})
    assert right.status_code == 429, "locked out: even the right token is refused"
    assert "try again in" in right.text and int(right.headers["retry-after"]) > 0
    assert "set-cookie" not in right.headers
    other = colleague.post("/ui/login", data={"token": ALICE})
    assert other.status_code == 303, "another address is not locked out"
    _report(
        "login_burst",
        {
            "tries": 50,
            "per_second": round(50 / seconds),
            "checked": statuses.count(401),
            "refused_429": statuses.count(429),
            "retry_after_s": max(retry_after),
            "right_token_same_address": right.status_code,
            "right_token_other_address": other.status_code,
        },
    )
    entries = _audit(app).read()
    failed = [e for e in entries if e["kind"] == "ui.login_failed" and e["client"] == "127.0.0.2"]
    assert len(failed) == LIMIT and all(e["who"] == "unknown" for e in failed)
    (locked,) = [
        e for e in entries if e["kind"] == "auth.locked_out" and e["client"] == "127.0.0.2"
    ]
    assert locked["locked"] == "address" and locked["failures"] == LIMIT
    assert 0 < locked["retry_after_s"] <= WINDOW_S
    assert ("ui.login", "alice") in [(e["kind"], e["who"]) for e in entries]
    text = _audit_text(storage)
    assert "guess-" not in text and ALICE not in text, "no token in the audit trail"


def test_a_named_identity_is_locked_out_across_addresses(gateway: tuple[str, Any, Path]) -> None:
    """Failures naming ``alice`` from three addresses (none at its own limit) lock alice."""
    url, app, _ = gateway
    statuses = []
    for address in ("127.0.0.6", "127.0.0.7", "127.0.0.8"):
        with _from(url, address) as client:
            for n in range(4):
                form = {"name": "alice", "token": f"wrong-{n}-0123456789"}
                statuses.append(client.post("/ui/login", data=form).status_code)
    assert statuses == [401] * LIMIT + [429] * 2, statuses
    with _from(url, "127.0.0.9") as fresh:
        named = fresh.post("/ui/login", data={"name": "alice", "token": ALICE})
        unnamed = fresh.post("/ui/login", data={"token": ALICE})
        assert named.status_code == unnamed.status_code == 429, "alice is locked out"
        assert int(unnamed.headers["retry-after"]) > 0
        assert fresh.post("/ui/login", data={"token": BOB}).status_code == 303, "bob is not"
        mismatch = fresh.post("/ui/login", data={"name": "bob", "token": ALICE})
        assert mismatch.status_code == 401, "a token must be the named identity's"
    entries = _audit(app).read(kind="auth.locked_out")
    (locked,) = [e for e in entries if e["locked"] == "identity"]
    assert locked["who"] == "alice" and locked["client"] == "127.0.0.8"
    named_failures = [
        e for e in _audit(app).read(kind="ui.login_failed") if e.get("name_known") is True
    ]
    assert len(named_failures) == LIMIT + 1  # ten naming alice, one naming bob with alice's token
    _report("identity_lockout", {"statuses": statuses, "fresh_address_alice": 429})


# --- bearer tokens -------------------------------------------------------------------------------
def test_a_bearer_burst_is_locked_out_and_another_address_is_not(
    gateway: tuple[str, Any, Path],
) -> None:
    url, app, storage = gateway
    attacker, router = _from(url, "127.0.0.4"), _from(url, "127.0.0.5")
    statuses, retry_after = [], []
    t0 = time.perf_counter()
    for n in range(40):
        answer = attacker.get("/jobs", headers={"Authorization": f"Bearer guess-{n:04d}-xyz"})
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            assert answer.json()["code"] == "too_many_attempts"
            retry_after.append(int(answer.headers["retry-after"]))
    seconds = time.perf_counter() - t0
    assert statuses == [401] * LIMIT + [429] * (40 - LIMIT), statuses
    assert all(0 < r <= WINDOW_S for r in retry_after)
    good = {"Authorization": f"Bearer {BOB}"}
    assert attacker.get("/jobs", headers=good).status_code == 429, "even the right token"
    upload = attacker.post("/contour", headers=good, content=b"x" * 1000)
    assert upload.status_code == 429, "refused before the body"
    assert attacker.get("/health").status_code == 200, "health stays open"
    assert router.get("/jobs", headers=good).status_code == 200, "another address is not locked"
    _report(
        "bearer_burst",
        {
            "tries": 40,
            "per_second": round(40 / seconds),
            "checked": statuses.count(401),
            "refused_429": statuses.count(429),
            "retry_after_s": max(retry_after),
        },
    )
    entries = [e for e in _audit(app).read() if e.get("client") == "127.0.0.4"]
    failed = [e for e in entries if e["kind"] == "auth.bearer_failed"]
    assert len(failed) == LIMIT and {e["path"] for e in failed} == {"/jobs"}
    (locked,) = [e for e in entries if e["kind"] == "auth.locked_out"]
    assert locked["locked"] == "address" and locked["via"] == "auth.bearer_failed"
    assert "guess-" not in _audit_text(storage)


def test_bearer_tokens_on_the_review_pages_count_too_and_sessions_stay(
    gateway: tuple[str, Any, Path],
) -> None:
    """The pages take a Bearer token themselves (outside the middleware): same gate."""
    url, _, _ = gateway
    with _from(url, "127.0.0.10") as client:
        assert client.post("/ui/login", data={"token": BOB}).status_code == 303
        wrong = {"Authorization": "Bearer not-a-token-0123456789", "Accept": "application/json"}
        statuses = [client.get("/ui/jobs/" + "0" * 32 + "/state.json", headers=wrong).status_code]
        client.cookies.clear()  # so the page's own bearer check runs, not the session's
        for _ in range(LIMIT + 2):
            answer = client.get("/ui/jobs/" + "0" * 32 + "/state.json", headers=wrong)
            statuses.append(answer.status_code)
    assert statuses[0] == 404, "a live session answers, whatever else the request carries"
    assert statuses[1 : LIMIT + 1] == [401] * LIMIT and statuses[LIMIT + 1 :] == [429, 429]


def test_the_lockout_ends_when_the_window_passes(tmp_path: Path) -> None:
    settings = Settings.from_env(
        api_tokens=TOKENS,
        storage_dir=tmp_path,
        dicom_listener=False,
        storage_min_free_bytes=1,
        auth_max_failures=3,
        auth_failure_window_s=1.0,
    )
    with serve_app(create_app(settings, engine=FakeEngine())) as url:
        client = _from(url, "127.0.0.11")
        statuses = [client.post("/ui/login", data={"token": "wrong"}).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        locked = client.post("/ui/login", data={"token": BOB})
        assert locked.status_code == 429 and locked.headers["retry-after"] == "1"
        time.sleep(1.1)
        assert client.post("/ui/login", data={"token": BOB}).status_code == 303
