"""The audit trail: an append-only JSON-lines log of who did what, in the storage folder.

``<storage>/audit/audit.jsonl`` holds the current entries; past the size limit (setting
``audit_max_bytes``) it is renamed ``audit-<UTC time>.jsonl`` and a new file starts. Rotated
files older than ``audit_retention_days`` are deleted by :meth:`AuditLog.purge`. Every process
that shares the storage folder (gateway, DICOM listener, Celery workers) appends to the same
file; one ``flock`` serialises writers and rotation.

Entries never hold patient names or IDs: fields named like a patient attribute are dropped,
and DICOM UIDs and accession numbers are replaced by a short SHA-256 (:func:`hash_identifier`),
which still links the entries of one study without naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from model.files import folder_lock
from workers.settings import StorageSettings

log = logging.getLogger(__name__)
CURRENT = "audit.jsonl"
_DROPPED = ("patient", "birth", "address", "phone")
_HASHED = ("uid", "accession")


class AuditKind:
    """The event kinds (``kind`` of an entry)."""

    JOB_SUBMITTED = "job.submitted"
    JOB_STARTED = "job.started"
    JOB_FINISHED = "job.finished"
    JOB_FAILED = "job.failed"
    ORDER_CREATED = "order.created"
    ORDER_MATCHED = "order.matched"
    ORDER_SENT = "order.sent"
    ORDER_SEND_FAILED = "order.send_failed"
    REVIEW_DECISION = "review.decision"
    LOGIN = "ui.login"
    LOGIN_FAILED = "ui.login_failed"
    LOGOUT = "ui.logout"
    DICOM_ACCEPTED = "dicom.association_accepted"
    DICOM_REJECTED = "dicom.association_rejected"
    DICOMWEB_STORE = "dicomweb.store"
    DICOM_QUARANTINED = "dicom.instance_quarantined"
    SETTINGS_LOADED = "settings.loaded"


def hash_identifier(value: str) -> str:
    """``sha256:<16 hex>`` of a DICOM UID or accession number (links entries, names nothing)."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def _clean(facts: dict[str, Any]) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    for key, value in facts.items():
        lowered = key.lower()
        if any(word in lowered for word in _DROPPED):
            continue
        if isinstance(value, str) and any(word in lowered for word in _HASHED):
            value = hash_identifier(value)
        cleaned[key] = value
    return cleaned


def utc_stamp(now: datetime) -> str:
    """``20260101T120000.123456Z``: a file-name-safe, sortable UTC time."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


class AuditLog:
    """Append-only audit entries in ``folder``.

    Parameters
    ----------
    folder
        ``<storage>/audit``.
    max_bytes
        Rotate the current file once it is larger.
    retention_days
        Rotated files older than this are deleted by :meth:`purge`.
    """

    def __init__(self, folder: Path, max_bytes: int, retention_days: float) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.retention = timedelta(days=retention_days)

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> AuditLog:
        """The audit log of the storage folder of ``settings``."""
        return cls(
            settings.storage_dir / "audit", settings.audit_max_bytes, settings.audit_retention_days
        )

    def _locked(self) -> AbstractContextManager[None]:
        return folder_lock(self.folder)

    def record(
        self,
        kind: str,
        who: str,
        *,
        job_id: str | None = None,
        order_id: str | None = None,
        **facts: Any,
    ) -> dict[str, Any] | None:
        """Append one entry; returns it, or ``None`` when it could not be written.

        ``who`` is an identity name, or ``AE@ip`` for a DICOM peer. Facts named like patient
        attributes are dropped; UIDs and accession numbers are hashed. A failing disk is
        logged, never raised: auditing must not break the action it records.
        """
        entry: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "kind": kind,
            "who": who,
        }
        if job_id is not None:
            entry["job_id"] = job_id
        if order_id is not None:
            entry["order_id"] = order_id
        entry.update(_clean(facts))
        line = json.dumps(entry, default=str, separators=(",", ":")) + "\n"
        try:
            with self._locked():
                self._rotate_if_full()
                fd = os.open(self.folder / CURRENT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
        except OSError as exc:
            log.error("audit entry %s not written: %s", kind, exc)
            return None
        return entry

    def _rotate_if_full(self) -> None:
        current = self.folder / CURRENT
        if current.is_file() and current.stat().st_size >= self.max_bytes:
            current.rename(self.folder / f"audit-{utc_stamp(datetime.now(UTC))}.jsonl")
            self._purge_unlocked(datetime.now(UTC))

    def files(self) -> list[Path]:
        """Audit files, oldest first (rotated ones, then the current one)."""
        if not self.folder.is_dir():
            return []
        rotated = sorted(self.folder.glob("audit-*.jsonl"))
        current = self.folder / CURRENT
        return [*rotated, current] if current.is_file() else rotated

    def read(
        self,
        since: datetime | None = None,
        kind: str | None = None,
        job_id: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Entries, oldest first, filtered; at most ``limit`` (the newest ones)."""
        found: list[dict[str, Any]] = []
        for path in self.files():
            for entry in _entries(path):
                if kind is not None and entry.get("kind") != kind:
                    continue
                if job_id is not None and entry.get("job_id") != job_id:
                    continue
                if since is not None and _at(entry) < since:
                    continue
                found.append(entry)
        return found[-limit:]

    def purge(self, now: datetime | None = None) -> int:
        """Delete rotated files last written before the retention period; returns how many."""
        with self._locked():
            return self._purge_unlocked(now or datetime.now(UTC))

    def _purge_unlocked(self, now: datetime) -> int:
        cutoff = now - self.retention
        removed = 0
        for path in self.folder.glob("audit-*.jsonl"):
            if datetime.fromtimestamp(path.stat().st_mtime, UTC) < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def _entries(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict):
                    yield entry
    except OSError as exc:
        log.warning("audit file %s unreadable: %s", path.name, exc)


def _at(entry: dict[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(entry.get("at")))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
