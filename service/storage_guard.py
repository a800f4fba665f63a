"""Disk backpressure on the gateway's faces: refuse new work while the storage is full.

The watermark itself is :class:`workers.storage_space.StorageWatermark`. Here it becomes:

- :class:`StorageBackpressure`, ASGI middleware: ``POST /contour`` and STOW-RS
  (``POST /dicomweb/studies...``) get 503 problem+json ``storage_full`` with ``Retry-After``
  before any of the body is read (a route dependency would run after FastAPI parsed the
  upload); it sits inside the authentication middleware, so anonymous callers get 401;
- :func:`storage_state`, the state of a deployment's storage folder, which ``/health/ready``
  reports (:func:`service.readiness.storage_check`).

The DICOM listener asks the same watermark for every A-ASSOCIATE-RQ.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import StorageFullError
from service.problems import problem
from workers.settings import StorageSettings
from workers.storage_space import StorageState, StorageWatermark

log = logging.getLogger(__name__)

#: Seconds a refused client is told to wait (``Retry-After``).
RETRY_AFTER_S = 60


def storage_state(settings: StorageSettings) -> StorageState:
    """The storage folder's space now against the settings' watermark."""
    return StorageWatermark.from_settings(settings).state()


def check_storage_space(settings: StorageSettings) -> None:
    """Raise :class:`StorageFullError` when the storage folder is below its watermark."""
    state = storage_state(settings)
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

    def __init__(self, app: ASGIApp, settings: StorageSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "http" and guarded(scope):
            try:
                check_storage_space(self.settings)
            except StorageFullError as exc:
                response = problem(503, exc.code, exc.detail, str(scope.get("path", "")))
                response.headers["Retry-After"] = str(exc.retry_after_s)
                response.headers["connection"] = "close"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
