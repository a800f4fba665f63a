"""Browser sessions of the review station: an API token is presented once, at ``/ui/login``.

The browser then holds only a random session id in an HttpOnly, SameSite=Strict cookie with an
expiry; the token itself is never stored, logged, put in a URL or handed to JavaScript. The
session store is server-side (this process's memory: one gateway serves the pages; a restart
logs everyone out). Every state-changing request from a page carries the session's CSRF token
(header ``X-CSRF-Token`` or form field ``csrf``), compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Request
from starlette.responses import Response

from model.errors import LlmctvError
from service.auth import Identity, bearer_token, identify
from service.settings import Settings
from workers.jobs import utcnow

COOKIE = "llmctv_session"
COOKIE_PATH = "/ui"
CSRF_HEADER = "x-csrf-token"


class LoginRequiredError(LlmctvError):
    """A page was asked for without a valid session (none, expired, or logged out)."""

    code = "login_required"


class CsrfError(LlmctvError):
    """A page's POST without the session's CSRF token."""

    code = "csrf_failed"


@dataclass(frozen=True)
class Session:
    """One logged-in browser."""

    session_id: str
    identity: Identity
    csrf: str
    expires_at: datetime


class SessionStore:
    """Sessions by id, in memory, each valid until its expiry."""

    def __init__(self, lifetime: timedelta) -> None:
        self.lifetime = lifetime
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, identity: Identity) -> Session:
        """A new session for ``identity``."""
        session = Session(
            secrets.token_urlsafe(32), identity, secrets.token_urlsafe(32), utcnow() + self.lifetime
        )
        with self._lock:
            self._drop_expired()
            self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (unknown or expired)."""
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires_at <= utcnow():
                del self._sessions[session_id]
                return None
        return session

    def expire(self, session_id: str, when: datetime) -> None:
        """Move a session's expiry (tests; an administrator's forced logout uses ``close``)."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                self._sessions[session_id] = Session(
                    session.session_id, session.identity, session.csrf, when
                )

    def close(self, session_id: str | None) -> None:
        """Forget a session (logout)."""
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def _drop_expired(self) -> None:
        now = utcnow()
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]


def sessions_of(request: Request) -> SessionStore:
    """The application's session store."""
    store: SessionStore = request.app.state.llmctv_ui.sessions
    return store


def current_session(request: Request) -> Session | None:
    """The request's live session, or None."""
    return sessions_of(request).get(request.cookies.get(COOKIE))


def request_identity(request: Request) -> Identity:
    """Who is asking: the session's identity, or a Bearer token's (scripts, tests).

    Raises
    ------
    LoginRequiredError
        Neither a live session nor a valid Bearer token.
    """
    session = current_session(request)
    if session is not None:
        return session.identity
    settings: Settings = request.app.state.llmctv.settings
    token = bearer_token(request.scope.get("headers") or [])
    identity = identify(settings, token) if token else None
    if identity is None:
        raise LoginRequiredError("log in at /ui/login")
    return identity


def check_csrf(request: Request, presented: str | None) -> Identity:
    """The identity of a state-changing page request whose CSRF token matches.

    Requests with a Bearer token and no session cookie are not from a browser page and need
    no CSRF token.

    Raises
    ------
    LoginRequiredError
        No live session and no valid Bearer token.
    CsrfError
        A session whose CSRF token was not presented.
    """
    session = current_session(request)
    if session is None:
        if request.cookies.get(COOKIE):
            raise LoginRequiredError("the session has expired; log in again")
        return request_identity(request)
    given = presented or request.headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise CsrfError("the page's CSRF token is missing or wrong; reload the page")
    return session.identity


def set_cookie(response: Response, session: Session, settings: Settings) -> None:
    """Put the session id in an HttpOnly, SameSite=Strict cookie with the session's expiry."""
    response.set_cookie(
        COOKIE,
        session.session_id,
        max_age=int((session.expires_at - utcnow()).total_seconds()),
        expires=session.expires_at,
        path=COOKIE_PATH,
        secure=settings.ui_secure_cookie,
        httponly=True,
        samesite="strict",
    )


def clear_cookie(response: Response, settings: Settings) -> None:
    """Remove the session cookie from the browser."""
    response.delete_cookie(
        COOKIE,
        path=COOKIE_PATH,
        secure=settings.ui_secure_cookie,
        httponly=True,
        samesite="strict",
    )
