"""Login sessions of the review station, in this process's memory.

An API token is presented once, at ``/ui/login``; the browser then holds only a random session
id (:mod:`service.ui.cookies`). The store is server-side: one gateway serves the pages, and a
restart logs everyone out.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.auth import Identity
from workers.jobs import utcnow


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
