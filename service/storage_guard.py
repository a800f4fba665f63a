"""Disk backpressure on the gateway's faces: refuse new work while the storage is full.

The watermark itself is :class:`workers.storage_space.StorageWatermark`. Here it becomes:

- :class:`StorageBackpressure`, ASGI middleware: ``POST /contour`` and STOW-RS
  (``POST /dicomweb/studies...``) get 503 problem+json ``storage_full`` with ``Retry-After``
  before any of the body is read (a route dependency would run after FastAPI parsed the
  upload); it sits inside the authentication middleware, so anonymous callers get 401;
- :func:`check_storage_space`, the same refusal as an error.

The gateway builds one watermark (:meth:`service.app.Gateway.build`) and hands it to this
middleware, to ``/health/ready`` (:func:`service.readiness.storage_check`) and to the DICOM
listener, which asks it for every A-ASSOCIATE-RQ.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import StorageFullError
from service.problems import problem
from workers.storage_space import StorageWatermark

log = logging.getLogger(__name__)

#: Seconds a refused client is told to wait (``Retry-After``).
RETRY_AFTER_S = 60


def check_storage_space(watermark: StorageWatermark) -> None:
    """Raise :class:`StorageFullError` when the storage folder is below its watermark."""
    state = watermark.state()
    if state.full:
        log.warning("new work refused: storage full (%s)", state.detail)
        raise StorageFullError(
            f"the storage folder is full ({state.detail}); retry later",
            retry_after_s=RETRY_AFTER_S,
        )


#: Requests that bring new data in: ``(method, path prefix)``.
GUARDED: tuple[tuple[str, str], ...] = (("POST", "/contour"), ("POST", "/dicomweb/studies"))


def guarded(scope: Scope) -> bool:
    """Whether a request brings new data into the storage folder."""
    method, path = str(scope.get("method", "")), str(scope.get("path", ""))
    return any(method == m and (path == p or path.startswith(p + "/")) for m, p in GUARDED)


class StorageBackpressure:
    """ASGI middleware: 503 ``storage_full`` for :data:`GUARDED` requests while the disk is full.

    Other requests (reads, orders, reviews, health) pass: they bring no bulk data in.
    """

    def __init__(self, app: ASGIApp, watermark: StorageWatermark) -> None:
        self.app = app
        self.watermark = watermark

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "http" and guarded(scope):
            try:
                check_storage_space(self.watermark)
            except StorageFullError as exc:
                response = problem(503, exc.code, exc.detail, str(scope.get("path", "")))
                response.headers["Retry-After"] = str(exc.retry_after_s)
                response.headers["connection"] = "close"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
