"""Who is calling: named identities with roles, from bearer tokens (setting ``api_tokens``).

``LLMCTV_API_TOKENS`` holds comma-separated entries ``name:role:secret``. A bare ``secret``
(the form of earlier versions) is the identity ``default`` with role ``admin``, so existing
deployments keep working. Roles are ordered: ``submitter`` < ``reviewer`` < ``admin``; each has
the rights of the roles below it.

- ``submitter``: contour, orders, read jobs;
- ``reviewer``: submitter rights plus review decisions;
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
"""

from __future__ import annotations

import hmac
import logging
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from model.errors import ConfigurationError
from service.errors import UnauthorizedError
from service.problems import problem
from service.settings import AuthSettings
from workers.job_events import ACTOR

log = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready"})
"""Paths answered without a token (liveness and readiness probes)."""
#: The review station's pages authenticate by session cookie or Bearer (:mod:`service.ui`);
#: their bodies are small forms (``service.limits``: the small body limit applies).
SESSION_PREFIX = "/ui"
IDENTITY_KEY = "llmctv_identity"
"""Where :class:`AuthenticateFirst` leaves the caller in the ASGI scope's ``state``."""


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


def identify(settings: AuthSettings, presented: str | None) -> Identity | None:
    """The identity whose secret is ``presented`` (constant time over all entries), or None."""
    return identify_among(configured_entries(settings), settings.allow_no_auth, presented)


def token_accepted(settings: AuthSettings, presented: str | None) -> bool:
    """Whether ``presented`` is the secret of a configured identity."""
    return identify(settings, presented) is not None


def bearer_token(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class AuthenticateFirst:
    """ASGI middleware: 401 before the body is read, for every path but :data:`OPEN_PATHS`.

    The caller's :class:`Identity` is left in the scope's ``state`` for the route's
    dependencies (:func:`service.deps.current_identity`), so the token is checked once per
    request. The 401 closes the connection; the unread body is never received, spooled or
    parsed.
    """

    def __init__(self, app: ASGIApp, settings: AuthSettings) -> None:
        self.app = app
        self.entries = configured_entries(settings)
        self.allow_no_auth = settings.allow_no_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        path = str(scope.get("path", ""))
        own_auth = path == SESSION_PREFIX or path.startswith(SESSION_PREFIX + "/")
        if scope["type"] != "http" or path in OPEN_PATHS or own_auth:
            await self.app(scope, receive, send)
            return
        identity = identify_among(
            self.entries, self.allow_no_auth, bearer_token(scope.get("headers") or [])
        )
        if identity is None:
            response = problem(
                401,
                UnauthorizedError.code,
                "a valid 'Authorization: Bearer <token>' header is required",
                str(scope.get("path", "")),
            )
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[IDENTITY_KEY] = identity
        acting = ACTOR.set(identity.name)
        try:
            await self.app(scope, receive, send)
        finally:
            ACTOR.reset(acting)
