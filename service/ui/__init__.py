"""The review station: browser pages under ``/ui/`` (worklist, review page, decision).

:func:`install` adds the routes, the session store and the two error mappings of the pages
(no session: back to the login form; a POST without its CSRF token: 403).
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from starlette.responses import Response

from service.problems import problem
from service.settings import Settings
from service.ui.routes import ReviewStation, router
from service.ui.session import CsrfError, LoginRequiredError, SessionStore

__all__ = ["install"]


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the review station from ``app``."""
    sessions = SessionStore(timedelta(hours=settings.ui_session_hours))
    app.state.llmctv_ui = ReviewStation(sessions)
    app.include_router(router)

    @app.exception_handler(LoginRequiredError)
    async def _login(request: Request, exc: LoginRequiredError) -> Response:
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/ui/login", status_code=303)
        return problem(401, exc.code, exc.detail, request.url.path)

    @app.exception_handler(CsrfError)
    async def _csrf(request: Request, exc: CsrfError) -> Response:
        return problem(403, exc.code, exc.detail, request.url.path)
