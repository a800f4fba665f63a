"""Orders: the clinical fields for a study that arrives over DICOM, and where to send the result.

An order names a study (StudyInstanceUID or AccessionNumber), carries the clinical fields of
the service contract, and optionally a destination (a configured DICOM AE, by name). Order
first or study first: :mod:`service.order_desk` starts the job when both are present, expires
orders that never match, and sends the RTSTRUCT back.

Records are JSON files in ``<storage>/orders/`` (shared storage; one gateway runs the desk).
They hold UIDs and the contract's clinical fields, never a patient name or ID.

The store keeps every record it has read in memory, keyed by file modification time, so the
desk's once-a-second look at the open orders costs one ``stat`` of the folder when nothing
changed; changed or new files (another process may write them) are read again, the rest not.
The gateway's store is :class:`AuditedOrderStore`: every change of an order's state is audited.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from model.errors import LlmctvError
from workers.audit import AuditKind, AuditLog
from workers.counters import MetricsSink
from workers.job_events import ACTOR
from workers.jobs import new_job_id, utcnow
from workers.records import JsonRecordFiles


class OrderNotFoundError(LlmctvError):
    """No order with this id."""

    code = "order_not_found"


class DuplicateOrderError(LlmctvError):
    """An open order already names this study and side (and the same series, or none).

    Two orders for one study and side would both send an RTSTRUCT to the planning system; the
    second is refused unless it names another series."""

    code = "duplicate_order"


#: The order's failure code when its accession number names studies of several patients.
ACCESSION_AMBIGUOUS = "accession_ambiguous"


class OrderStatus(StrEnum):
    """Where an order stands (its job has its own status)."""

    WAITING = "waiting"  # no complete CT series of the study yet
    MATCHED = "matched"  # a job was started
    FAILED = "failed"  # the received series could not be used (error says why)
    EXPIRED = "expired"  # no study arrived within order_expiry_hours


class SendStatus(StrEnum):
    """Delivery of the RTSTRUCT to the order's destination."""

    NOT_REQUESTED = "not_requested"
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class OrderRequest(BaseModel):
    """``POST /orders``."""

    model_config = {"extra": "forbid"}

    study_instance_uid: str | None = Field(default=None, max_length=64, pattern=r"^[0-9.]+$")
    accession_number: str | None = Field(default=None, max_length=16)
    series_instance_uid: str | None = Field(default=None, max_length=64, pattern=r"^[0-9.]+$")
    clinical: dict[str, Any]
    destination: str | None = Field(default=None, description="a configured destination name")

    @model_validator(mode="after")
    def _names_a_study(self) -> OrderRequest:
        if not self.study_instance_uid and not self.accession_number:
            raise ValueError("give study_instance_uid or accession_number")
        return self


def order_sides(clinical: dict[str, Any]) -> set[str]:
    """The sides an order's clinical fields treat (``left``/``right``)."""
    diagnoses = clinical.get("diagnoses") or []
    return {str(d.get("side", "")) for d in diagnoses if isinstance(d, dict)}


def check_not_duplicate(order: Order, orders: list[Order]) -> None:
    """Refuse ``order`` when another order, waiting, matched or already sent (not failed or
    expired), names the same study (by UID, else accession), one of its sides, and the same
    series (or neither names one).

    Raises
    ------
    DuplicateOrderError
        Naming the open order, so the caller can cancel or correct it.
    """
    sides = order_sides(order.clinical)
    for other in orders:
        if other.status in (OrderStatus.FAILED, OrderStatus.EXPIRED):
            continue
        same_study = (
            order.study_instance_uid == other.study_instance_uid
            if order.study_instance_uid or other.study_instance_uid
            else order.accession_number == other.accession_number
        )
        if not same_study or other.series_instance_uid != order.series_instance_uid:
            continue
        shared = sides & order_sides(other.clinical)
        if shared:
            raise DuplicateOrderError(
                f"order {other.order_id} already asks for this study, side "
                f"{', '.join(sorted(shared))}; name another series or cancel that order"
            )


class SendState(BaseModel):
    """The send-back of one order."""

    status: SendStatus = SendStatus.NOT_REQUESTED
    attempts: int = 0
    reason: str | None = None
    sent_at: datetime | None = None
    replaces_rtstruct: str | None = Field(
        default=None,
        description="SOPInstanceUID of an RTSTRUCT already sent for this order that this "
        "send-back replaces (its job ran on a partial series)",
    )


class SupersededRun(BaseModel):
    """A job of the order that ran on a partial series and was replaced by a later one."""

    job_id: str
    instances: int
    rtstruct_sop_instance_uid: str | None = None
    sent_at: datetime | None = None


class Order(BaseModel):
    """An order record."""

    order_id: str = Field(default_factory=new_job_id)
    study_instance_uid: str | None = None
    accession_number: str | None = None
    series_instance_uid: str | None = None
    clinical: dict[str, Any] = Field(default_factory=dict)
    destination: str | None = None
    status: OrderStatus = OrderStatus.WAITING
    job_id: str | None = None
    error: dict[str, str] | None = None
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    matched_at: datetime | None = None
    send: SendState = Field(default_factory=SendState)
    created_by: str | None = Field(
        default=None, description="the identity that placed the order (its job is theirs)"
    )
    matched_series_instance_uid: str | None = None
    matched_study_instance_uid: str | None = None
    matched_instances: int | None = None
    matched_cycle: int | None = None
    superseded: list[SupersededRun] = Field(default_factory=list)

    @property
    def closed(self) -> bool:
        """Nothing more will happen to it: failed, expired, or matched and not (re)sending."""
        if self.status in (OrderStatus.FAILED, OrderStatus.EXPIRED):
            return True
        return self.status is OrderStatus.MATCHED and self.send.status in (
            SendStatus.NOT_REQUESTED,
            SendStatus.SENT,
            SendStatus.FAILED,
        )


def _order_path(folder: Path, order_id: str) -> Path:
    if not order_id or not all(c in "0123456789abcdef" for c in order_id):
        raise OrderNotFoundError(f"no order {order_id[:64]!r}")
    return folder / f"{order_id}.json"


#: The index is re-read from disk at least this often, even when the folder looks unchanged
#: (file times are coarse: a write by another process in the same tick would be missed).
INDEX_REFRESH_S = 30.0


class OrderStore:
    """Order records as ``<storage>/orders/<order_id>.json`` (atomic writes, thread-safe)."""

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = Path(root) / "orders"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._records = JsonRecordFiles(
            Order,
            lambda order_id: _order_path(self.folder, order_id),
            lambda order_id: OrderNotFoundError(f"no order {order_id}"),
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._index: dict[str, tuple[int, Order]] = {}  # order id -> (file mtime_ns, record)
        self._folder_mtime: int | None = None
        self._indexed_at = float("-inf")

    def create(self, order: Order) -> None:
        """Store a new order."""
        self._records.write(order.order_id, order)
        self._remember(order)

    def get(self, order_id: str) -> Order:
        """The order, or :class:`OrderNotFoundError` (read from disk)."""
        return self._records.read(order_id)

    def update(self, order_id: str, **changes: Any) -> Order:
        """Change fields atomically; returns the new record."""
        order = self._records.update(order_id, **changes)
        self._remember(order)
        return order

    def delete(self, order_id: str) -> None:
        """Remove the order record (retention)."""
        self._records.delete(order_id)
        with self._lock:
            self._index.pop(order_id, None)

    def all(self) -> list[Order]:
        """Every order, oldest first."""
        with self._lock:
            self._refresh()
            orders = [order for _, order in self._index.values()]
        return sorted(orders, key=lambda o: o.created_at)

    def open_orders(self) -> list[Order]:
        """Orders that are not :attr:`~Order.closed`, oldest first (from the index)."""
        with self._lock:
            self._refresh()
            orders = [order for _, order in self._index.values() if not order.closed]
        return sorted(orders, key=lambda o: o.created_at)

    def _remember(self, order: Order) -> None:
        try:
            mtime = _order_path(self.folder, order.order_id).stat().st_mtime_ns
        except OSError:
            mtime = -1
        with self._lock:
            self._index[order.order_id] = (mtime, order)

    def _refresh(self) -> None:
        """Bring the index up to date with the folder (caller holds the lock).

        One ``stat`` when the folder is unchanged; otherwise one ``stat`` per file and a
        parse of the files that are new or changed.
        """
        now = self._clock()
        try:
            folder_mtime = self.folder.stat().st_mtime_ns
        except OSError:
            return
        if folder_mtime == self._folder_mtime and now - self._indexed_at < INDEX_REFRESH_S:
            return
        self._folder_mtime, self._indexed_at = folder_mtime, now
        seen: set[str] = set()
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if not entry.name.endswith(".json") or entry.name.startswith("."):
                    continue
                order_id = entry.name.removesuffix(".json")
                seen.add(order_id)
                try:
                    mtime = entry.stat().st_mtime_ns
                    known = self._index.get(order_id)
                    if known is None or known[0] != mtime:
                        text = Path(entry.path).read_text()
                        self._index[order_id] = (mtime, Order.model_validate_json(text))
                except (OSError, ValueError):
                    continue
        for gone in set(self._index) - seen:
            del self._index[gone]


class AuditedOrderStore(OrderStore):
    """An :class:`~service.orders.OrderStore` that audits every change of an order's state.

    Also counts RTSTRUCT send-backs (``rtstruct_sends{outcome}``).
    """

    def __init__(self, root: Path, audit: AuditLog, metrics: MetricsSink) -> None:
        super().__init__(root)
        self.audit = audit
        self.metrics = metrics

    def create(self, order: Order) -> None:
        """Store a new order; audit it."""
        super().create(order)
        self.audit.record(
            AuditKind.ORDER_CREATED,
            ACTOR.get() or "api",
            order_id=order.order_id,
            study_instance_uid=order.study_instance_uid,
            accession_number=order.accession_number,
            destination=order.destination,
        )

    def update(self, order_id: str, **changes: Any) -> Order:
        """Change fields atomically; audit a new status or send-back outcome."""
        before = self.get(order_id)
        after = super().update(order_id, **changes)
        if after.status is not before.status:
            self._status_changed(after)
        if after.send.status is not before.send.status:
            self._send_changed(after)
        return after

    def _status_changed(self, order: Order) -> None:
        who = "order-desk"
        if order.status is OrderStatus.MATCHED:
            self.audit.record(
                AuditKind.ORDER_MATCHED,
                who,
                order_id=order.order_id,
                job_id=order.job_id,
                series_instance_uid=order.series_instance_uid,
            )
        else:
            code = (order.error or {}).get("code")
            self.audit.record(
                f"order.{order.status.value}", who, order_id=order.order_id, code=code
            )

    def _send_changed(self, order: Order) -> None:
        if order.send.status not in (SendStatus.SENT, SendStatus.FAILED):
            return
        sent = order.send.status is SendStatus.SENT
        self.metrics.incr("rtstruct_sends", {"outcome": "sent" if sent else "failed"})
        self.audit.record(
            AuditKind.ORDER_SENT if sent else AuditKind.ORDER_SEND_FAILED,
            "order-desk",
            order_id=order.order_id,
            job_id=order.job_id,
            destination=order.destination,
            attempts=order.send.attempts,
        )
