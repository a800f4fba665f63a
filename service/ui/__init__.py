"""The review station: browser pages under ``/ui/`` (worklist, review page, decision).

Modules: :mod:`~service.ui.routes` (the pages and their data), :mod:`~service.ui.pages`
(HTML), :mod:`~service.ui.cookies` (the session cookie and CSRF), ``static/`` (script and
style sheet). What the pages keep between requests (sessions, loaded CT series, parsed
structures) is :mod:`service.review_station`, built by the composition root. :func:`install`
adds the routes and the two error mappings of the pages (no session: back to the login form;
a POST without its CSRF token: 403).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from starlette.responses import Response

from service.problems import problem
from service.ui.cookies import CsrfError, LoginRequiredError
from service.ui.routes import router

__all__ = ["install"]


def install(app: FastAPI) -> None:
    """Serve the review station from ``app``."""
    app.include_router(router)

    @app.exception_handler(LoginRequiredError)
    async def _login(request: Request, exc: LoginRequiredError) -> Response:
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/ui/login", status_code=303)
        return problem(401, exc.code, exc.detail, request.url.path)

    @app.exception_handler(CsrfError)
    async def _csrf(request: Request, exc: CsrfError) -> Response:
        return problem(403, exc.code, exc.detail, request.url.path)
