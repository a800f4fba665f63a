"""The HTTP server of ``llmctv serve``: uvicorn with timeouts for slow or idle clients.

uvicorn times out idle keep-alive connections only after a response. :class:`GuardedH11Protocol`
adds what a hostile or broken client needs:

* the request head (request line and headers) must arrive within ``http_header_timeout``
  seconds of the connection or of its first byte (a client that sends nothing, or drips a
  byte every few seconds, is closed);
* while a body is being received, a pause of ``http_body_idle_timeout`` seconds, or an average
  rate under ``http_min_body_rate`` bytes per second after the first
  ``http_header_timeout`` seconds, closes the connection.

The access log never carries query strings (a ``?token=`` would otherwise be written out).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.settings import HttpSettings

log = logging.getLogger(__name__)
ACCESS_LOGGER = "uvicorn.access"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a body idle/rate limit."""

    header_timeout: float = 10.0
    body_idle_timeout: float = 30.0
    min_body_rate: float = 1000.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the deadline for the first request head."""
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_started = 0.0
        self._body_bytes = 0
        self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel the timers."""
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Hand the bytes to h11, then re-check where the request stands."""
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:
            self._arm_head()
        elif self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if state is h11.SEND_BODY:
            self._watch_body(len(data))
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
            self._body_bytes = 0

    def _arm_head(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout, self._drop, "headers")

    def _watch_body(self, received: int) -> None:
        now = time.monotonic()
        if self._body_timer is None:
            self._body_started, self._body_bytes = now, 0
        else:
            self._body_timer.cancel()
        self._body_bytes += received
        elapsed = now - self._body_started
        if elapsed > self.header_timeout and self._body_bytes / elapsed < self.min_body_rate:
            self._drop("body rate")
            return
        self._body_timer = self.loop.call_later(self.body_idle_timeout, self._drop, "body idle")

    def _cancel_timers(self) -> None:
        for timer in (getattr(self, "_head_timer", None), getattr(self, "_body_timer", None)):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _drop(self, why: str) -> None:
        """Close a connection whose client is too slow (not one that we stopped reading)."""
        if why == "body idle" and self.flow is not None and self.flow.read_paused:
            self._body_timer = self.loop.call_later(self.body_idle_timeout, self._drop, why)
            return
        self._cancel_timers()
        if not self.transport.is_closing():
            log.info("closing a slow HTTP connection (%s)", why)
            self.transport.close()


class QueryStringFilter(logging.Filter):
    """Removes the query string from uvicorn's access-log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the path argument (``client, method, path, version, status``)."""
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def guarded_protocol(settings: HttpSettings) -> type[GuardedH11Protocol]:
    """The protocol class with the settings' timeouts."""
    attributes: dict[str, Any] = {
        "header_timeout": settings.http_header_timeout,
        "body_idle_timeout": settings.http_body_idle_timeout,
        "min_body_rate": settings.http_min_body_rate,
    }
    return type("ConfiguredH11Protocol", (GuardedH11Protocol,), attributes)


def server_config(app: FastAPI, settings: HttpSettings, log_level: str = "info") -> uvicorn.Config:
    """The uvicorn configuration of the gateway (timeouts, limits, access log filter)."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        http=guarded_protocol(settings),
        timeout_keep_alive=settings.http_keep_alive_timeout,
        timeout_graceful_shutdown=settings.http_graceful_shutdown_timeout,
        limit_concurrency=settings.http_limit_concurrency or None,
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
        # Forwarded headers only from configured proxies: otherwise a client on the gateway's
        # own host could name any address and escape the per-address lockout.
        proxy_headers=bool(settings.http_trusted_proxies),
        forwarded_allow_ips=list(settings.http_trusted_proxies) or None,
    )
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, QueryStringFilter) for f in access.filters):
        access.addFilter(QueryStringFilter())
    return config
