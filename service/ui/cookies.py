"""Who a review-station page request is: the session cookie, a Bearer token, the CSRF token.

An API token is presented once, at ``/ui/login``. The browser then holds only a random session
id (:mod:`service.review_station.sessions`) in an HttpOnly, SameSite=Strict cookie with an
expiry; the token itself is never stored, logged, put in a URL or handed to JavaScript. Every
state-changing request from a page carries the session's CSRF token (header ``X-CSRF-Token``
or form field ``csrf``), compared in constant time.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.responses import Response

from model.errors import LlmctvError
from service.auth import Identity, bearer_token, client_address
from service.deps import STATION, auth_gate
from service.errors import UnauthorizedError
from service.review_station.sessions import Session
from service.settings import ReviewSettings
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


def current_session(request: Request) -> Session | None:
    """The request's live session, or None."""
    return STATION.of(request.app).sessions.get(request.cookies.get(COOKIE))


def request_identity(request: Request) -> Identity:
    """Who is asking: the session's identity, or a Bearer token's (scripts, tests).

    A Bearer token goes through the gateway's :class:`~service.auth.AuthGate` like any other:
    a wrong one counts toward the address's lockout.

    Raises
    ------
    LoginRequiredError
        Neither a live session nor a valid Bearer token.
    TooManyAttemptsError
        A Bearer token from a locked-out address.
    """
    session = current_session(request)
    if session is not None:
        return session.identity
    token = bearer_token(request.scope.get("headers") or [])
    if not token:
        raise LoginRequiredError("log in at /ui/login")
    try:
        return auth_gate(request).bearer(token, client_address(request.scope), request.url.path)
    except UnauthorizedError as exc:
        raise LoginRequiredError("log in at /ui/login") from exc


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


def set_cookie(response: Response, session: Session, review: ReviewSettings) -> None:
    """Put the session id in an HttpOnly, SameSite=Strict cookie with the session's expiry."""
    response.set_cookie(
        COOKIE,
        session.session_id,
        max_age=int((session.expires_at - utcnow()).total_seconds()),
        expires=session.expires_at,
        path=COOKIE_PATH,
        secure=review.ui_secure_cookie,
        httponly=True,
        samesite="strict",
    )


def clear_cookie(response: Response, review: ReviewSettings) -> None:
    """Remove the session cookie from the browser."""
    response.delete_cookie(
        COOKIE,
        path=COOKIE_PATH,
        secure=review.ui_secure_cookie,
        httponly=True,
        samesite="strict",
    )
