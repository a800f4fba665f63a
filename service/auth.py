"""Who is calling: named identities with roles, from bearer tokens (setting ``api_tokens``).

``LLMCTV_API_TOKENS`` holds comma-separated entries ``name:role:secret``. A bare ``secret``
(the form of earlier versions) is the identity ``default`` with role ``admin``, so existing
deployments keep working. Roles are ordered: ``submitter`` < ``reviewer`` < ``admin``; each has
the rights of the roles below it.

- ``submitter``: contour, orders, its own jobs (read, cancel, download);
- ``reviewer``: submitter rights on every job, plus review decisions;
- ``admin``: everything, plus ``/metrics`` and ``/audit``.

Entries may also be kept in a file (setting ``api_tokens_file``, ``LLMCTV_API_TOKENS_FILE``):
one entry per line, ``#`` starts a comment; the file should be readable by the service user
only (``chmod 600``; a group- or world-readable file is logged as a warning).

Secrets are compared in constant time against every entry (no early exit).
:class:`AuthenticateFirst` checks the token in ASGI middleware, before any route reads the
request body; only the health endpoints (:data:`OPEN_PATHS`) are open, and the review
station's pages (:data:`SESSION_PREFIX`) check their session cookie themselves. Routes take
the caller through the dependencies of :mod:`service.deps` (``Authorized``, ``Reviewer``,
``Admin``).

Every authentication goes through one :class:`AuthGate` (bearer tokens in the middleware and
on the review pages, the review station's login form): failures are counted per client
address, and at the login form also per identity name (:mod:`service.attempts`); past
``auth_max_failures`` within ``auth_failure_window_s`` the address or name is locked out (429
``too_many_attempts`` with ``Retry-After``, even with the right token). Every failure and
every lockout is audited, with the client address and the identity name, never a token. The
counts are per gateway process.

Jobs belong to the identity that submitted them (``Job.submitted_by``): a submitter sees and
acts on its own jobs only, reviewers and admins on all (:func:`may_see`, :func:`visible_job`).
Another submitter's job answers exactly like an unknown one (404 ``job_not_found``), so a
submitter cannot learn that it exists. Jobs from orders and DICOM have no submitter (the
system): reviewers and admins see them.
"""

from __future__ import annotations

import hmac
import logging
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from model.errors import ConfigurationError, LlmctvError
from service.attempts import AttemptLimiter, address_key, identity_key
from service.errors import TooManyAttemptsError, UnauthorizedError
from service.problems import problem_for
from service.settings import AuthSettings
from workers.audit import AuditKind, AuditLog
from workers.errors import JobNotFoundError
from workers.job_events import ACTOR
from workers.jobs import Job, JobStore

log = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready"})
"""Paths answered without a token (liveness and readiness probes)."""
#: The review station's pages authenticate by session cookie or Bearer (:mod:`service.ui`);
#: their bodies are small forms (``service.limits``: the small body limit applies).
SESSION_PREFIX = "/ui"
IDENTITY_KEY = "llmctv_identity"
"""Where :class:`AuthenticateFirst` leaves the caller in the ASGI scope's ``state``."""
GATE_KEY = "llmctv_auth_gate"
"""Where :class:`AuthenticateFirst` leaves its :class:`AuthGate` (every HTTP request)."""
BEARER_FAILED = "auth.bearer_failed"
"""Audit kind: a wrong bearer token (the review station's form: ``ui.login_failed``)."""
LOCKED_OUT = "auth.locked_out"
"""Audit kind: an address or an identity name was locked out."""


class Role(StrEnum):
    """What an identity may do; each role includes the rights of the ones before it."""

    SUBMITTER = "submitter"
    REVIEWER = "reviewer"
    ADMIN = "admin"


_RANK = {Role.SUBMITTER: 0, Role.REVIEWER: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Identity:
    """A named caller (a person, or an integration such as a PACS router)."""

    name: str
    role: Role

    def may(self, needed: Role) -> bool:
        """Whether this identity has the rights of ``needed``."""
        return _RANK[self.role] >= _RANK[needed]


@dataclass(frozen=True)
class TokenEntry:
    """One configured identity and its secret."""

    identity: Identity
    secret: bytes


DEVELOPMENT_IDENTITY = Identity("development", Role.ADMIN)


def parse_token_entries(entries: Sequence[str]) -> list[TokenEntry]:
    """``name:role:secret`` (or a bare secret: ``default``, admin) -> entries.

    Raises
    ------
    ConfigurationError
        An entry with an empty part or an unknown role, or a name given twice.
    """
    parsed: list[TokenEntry] = []
    for entry in entries:
        parts = entry.split(":", 2)
        if len(parts) == 1:
            name, role_text, secret = "default", Role.ADMIN.value, parts[0]
        elif len(parts) == 3:
            name, role_text, secret = parts
        else:
            raise ConfigurationError("API token entries are name:role:secret or a bare secret")
        if not name or not secret or role_text not in {r.value for r in Role}:
            raise ConfigurationError(
                f"API token entry for {name or '?'!r}: needs a name, a role "
                f"({', '.join(r.value for r in Role)}) and a secret"
            )
        parsed.append(TokenEntry(Identity(name, Role(role_text)), secret.encode()))
    names = [e.identity.name for e in parsed]
    if len(set(names)) != len(names):
        raise ConfigurationError("API token entries must have distinct names")
    return parsed


def read_token_file(path: Path) -> list[str]:
    """Entries of a token file: one per line, blank lines and ``#`` comments skipped.

    Raises
    ------
    ConfigurationError
        The file cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigurationError(f"cannot read the API token file {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("API token file %s is readable by others: chmod 600 it", path)
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def configured_entries(settings: AuthSettings) -> list[TokenEntry]:
    """Entries of ``api_tokens`` and of ``api_tokens_file`` (validated together)."""
    entries = list(settings.api_tokens)
    if settings.api_tokens_file is not None:
        entries += read_token_file(settings.api_tokens_file)
    return parse_token_entries(entries)


def check_auth_configured(settings: AuthSettings) -> None:
    """Refuse to run without tokens unless the development flag ``allow_no_auth`` is set.

    Raises
    ------
    ConfigurationError
        No token and no development flag, or a malformed token entry.
    """
    if not configured_entries(settings) and not settings.allow_no_auth:
        raise ConfigurationError(
            "no API token configured: set LLMCTV_API_TOKENS (comma-separated name:role:secret) "
            "or LLMCTV_API_TOKENS_FILE (one entry per line), or for local development only "
            "LLMCTV_ALLOW_NO_AUTH=true (llmctv serve --dev)"
        )


def identify_among(
    entries: Sequence[TokenEntry], allow_no_auth: bool, presented: str | None
) -> Identity | None:
    """The identity whose secret is ``presented`` (constant time over all entries), or None."""
    if not entries:
        return DEVELOPMENT_IDENTITY if allow_no_auth else None
    given = (presented or "").encode()
    found: Identity | None = None
    for entry in entries:
        if hmac.compare_digest(given, entry.secret) and presented:
            found = entry.identity
    return found


def bearer_token(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class AuthGate:
    """Every authentication of the gateway, with the lockout and its audit entries.

    Parameters
    ----------
    settings
        The identities, the development flag and the lockout's limits.
    audit
        Where failures and lockouts are recorded (none: not recorded).
    """

    def __init__(self, settings: AuthSettings, audit: AuditLog | None = None) -> None:
        self.entries = configured_entries(settings)
        self.allow_no_auth = settings.allow_no_auth
        self.names = frozenset(e.identity.name for e in self.entries)
        # The failure counts, in this process's memory.
        self.limiter = AttemptLimiter(settings.auth_max_failures, settings.auth_failure_window_s)
        self.audit = audit

    def bearer(self, presented: str | None, client: str, where: str) -> Identity:
        """The identity of a bearer token presented from address ``client`` to path ``where``.

        Raises
        ------
        TooManyAttemptsError
            The address is locked out (the token is not even checked).
        UnauthorizedError
            No token, or a wrong one (a wrong one counts as a failure of the address).
        """
        keys = [address_key(client)]
        self._admit(keys)
        identity: Identity | None = None
        try:
            identity = identify_among(self.entries, self.allow_no_auth, presented)
        finally:
            failed = identity is None and bool(presented)
            self._settle(keys, failed, BEARER_FAILED, "unknown", client, path=where)
        if identity is None:
            raise UnauthorizedError("a valid 'Authorization: Bearer <token>' header is required")
        return identity

    def login(self, name: str | None, token: str, client: str) -> Identity:
        """The identity of the review station's login form, from address ``client``.

        ``name`` is optional; given, the token must be that identity's, and a failure also
        counts for the name (when it is a configured one; other names are not remembered).
        A name that is locked out refuses even its right token, with or without the name.

        Raises
        ------
        TooManyAttemptsError
            The address, or the named or identified identity, is locked out.
        UnauthorizedError
            A wrong token, or the token of another identity than ``name``.
        """
        name = (name or "").strip() or None
        known = name if name in self.names else None
        keys = [address_key(client)] + ([identity_key(known)] if known else [])
        self._admit(keys)
        identity: Identity | None = None
        try:
            found = identify_among(self.entries, self.allow_no_auth, token)
            identity = found if found is not None and name in (None, found.name) else None
        finally:
            facts = {"name_given": name is not None, "name_known": known is not None}
            who = known or "unknown"
            self._settle(keys, identity is None, AuditKind.LOGIN_FAILED, who, client, **facts)
        if identity is None:
            raise UnauthorizedError("that token is not accepted")
        wait = self.limiter.locked_for(identity_key(identity.name))
        if wait:
            raise _locked_out("identity", wait)
        return identity

    def _admit(self, keys: Sequence[str]) -> None:
        refused = self.limiter.admit(keys)
        if refused is not None:
            key, wait = refused
            raise _locked_out(key.partition(":")[0], wait)

    def _settle(
        self, keys: Sequence[str], failed: bool, kind: str, who: str, client: str, **facts: Any
    ) -> None:
        locked = self.limiter.settle(keys, failed)
        if not failed:
            return
        log.info("authentication failed from %s (%s)", client, kind)
        if self.audit is not None:
            self.audit.record(kind, who, client=client, **facts)
        for key, seconds in locked.items():
            scope, _, value = key.partition(":")
            log.warning(
                "authentication locked out for %s %s: %d failures, %d s",
                scope,
                value,
                self.limiter.max_failures,
                seconds,
            )
            if self.audit is not None:
                self.audit.record(
                    LOCKED_OUT,
                    value if scope == "identity" else who,
                    client=client,
                    locked=scope,
                    via=kind,
                    failures=self.limiter.max_failures,
                    window_s=self.limiter.window_s,
                    retry_after_s=seconds,
                )


def _locked_out(kind: str, seconds: int) -> TooManyAttemptsError:
    return TooManyAttemptsError(
        f"too many failed authentications for this {kind}; try again in {seconds} s",
        retry_after_s=seconds,
    )


def may_see(identity: Identity, job: Job) -> bool:
    """Whether ``identity`` may see and act on ``job``: its own, or any for reviewers."""
    if identity.may(Role.REVIEWER):
        return True
    return job.submitted_by is not None and job.submitted_by == identity.name


def visible_job(store: JobStore, job_id: str, identity: Identity) -> Job:
    """The job, if ``identity`` may see it (:func:`may_see`).

    Raises
    ------
    JobNotFoundError
        No such job, or another submitter's (the same answer: its existence is not told).
    """
    job = store.get(job_id)
    if not may_see(identity, job):
        raise JobNotFoundError(f"no job {job_id}")
    return job


def client_address(scope: Scope) -> str:
    """The client's address of an ASGI request (after uvicorn's trusted proxy headers)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class AuthenticateFirst:
    """ASGI middleware: 401 before the body is read, for every path but :data:`OPEN_PATHS`.

    The caller's :class:`Identity` is left in the scope's ``state`` for the route's
    dependencies (:func:`service.deps.current_identity`), so the token is checked once per
    request; so is the :class:`AuthGate`, for the review pages' own authentication. The 401,
    and the 429 of a locked-out address, close the connection; the unread body is never
    received, spooled or parsed.
    """

    def __init__(self, app: ASGIApp, settings: AuthSettings, audit: AuditLog | None = None) -> None:
        self.app = app
        self.gate = AuthGate(settings, audit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[GATE_KEY] = self.gate
        path = str(scope.get("path", ""))
        own_auth = path == SESSION_PREFIX or path.startswith(SESSION_PREFIX + "/")
        if path in OPEN_PATHS or own_auth:
            await self.app(scope, receive, send)
            return
        presented = bearer_token(scope.get("headers") or [])
        try:
            identity = self.gate.bearer(presented, client_address(scope), path)
        except LlmctvError as exc:
            response = problem_for(exc, path)
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        state[IDENTITY_KEY] = identity
        acting = ACTOR.set(identity.name)
        try:
            await self.app(scope, receive, send)
        finally:
            ACTOR.reset(acting)
