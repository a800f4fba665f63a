"""Orders: the clinical fields for a study that arrives over DICOM, and where to send the result.

An order names a study (StudyInstanceUID or AccessionNumber), carries the clinical fields of
the service contract, and optionally a destination (a configured DICOM AE, by name). Order
first or study first: :mod:`service.order_desk` starts the job when both are present, expires
orders that never match, and sends the RTSTRUCT back.

Records are JSON files in ``<storage>/orders/`` (shared storage; one gateway runs the desk).
They hold UIDs and the contract's clinical fields, never a patient name or ID.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from model.errors import LlmctvError
from workers.jobs import new_job_id, utcnow
from workers.records import JsonRecordFiles


class OrderNotFoundError(LlmctvError):
    """No order with this id."""

    code = "order_not_found"


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


class SendState(BaseModel):
    """The send-back of one order."""

    status: SendStatus = SendStatus.NOT_REQUESTED
    attempts: int = 0
    reason: str | None = None
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


class OrderStore:
    """Order records as ``<storage>/orders/<order_id>.json`` (atomic writes, thread-safe)."""

    def __init__(self, root: Path) -> None:
        self.folder = Path(root) / "orders"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._records = JsonRecordFiles(
            Order,
            lambda order_id: _order_path(self.folder, order_id),
            lambda order_id: OrderNotFoundError(f"no order {order_id}"),
        )

    def create(self, order: Order) -> None:
        """Store a new order."""
        self._records.write(order.order_id, order)

    def get(self, order_id: str) -> Order:
        """The order, or :class:`OrderNotFoundError`."""
        return self._records.read(order_id)

    def update(self, order_id: str, **changes: Any) -> Order:
        """Change fields atomically; returns the new record."""
        return self._records.update(order_id, **changes)

    def delete(self, order_id: str) -> None:
        """Remove the order record (retention)."""
        self._records.delete(order_id)

    def all(self) -> list[Order]:
        """Every order, oldest first."""
        orders = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                orders.append(Order.model_validate_json(path.read_text()))
            except (OSError, ValueError):
                continue
        return sorted(orders, key=lambda o: o.created_at)
