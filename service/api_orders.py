"""``/orders``: clinical fields for studies that arrive over DICOM, and the send-back state."""

from __future__ import annotations

import threading
from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from model.text.clinical import parse_clinical
from service.api import JobView, problem_responses
from service.auth import Identity, Role
from service.deps import Authorized, DeskDep, ServiceState, StateDep
from service.dicomnet.destinations import destinations_from_settings, resolve_destination
from service.order_desk import OrderDesk, order_expiry
from service.orders import (
    Order,
    OrderNotFoundError,
    OrderRequest,
    OrderStatus,
    SendState,
    SendStatus,
    SupersededRun,
    check_not_duplicate,
)
from workers.errors import JobNotFoundError
from workers.jobs import is_valid_id, utcnow

router = APIRouter()
#: Serialises the duplicate check and the write of a new order (one gateway owns the orders).
_CREATING = threading.Lock()


class OrderView(BaseModel):
    """``GET /orders/{order_id}``: the order, its job and the send-back state."""

    order_id: str
    status: OrderStatus
    study_instance_uid: str | None
    accession_number: str | None
    destination: str | None
    created_at: datetime
    expires_at: datetime
    matched_at: datetime | None
    error: dict[str, str] | None
    job: JobView | None
    send: SendState
    status_url: str
    matched_instances: int | None = None
    superseded: list[SupersededRun] = Field(
        default_factory=list, description="earlier jobs of this order, on fewer instances"
    )

    @classmethod
    def of(cls, order: Order, job: JobView | None) -> OrderView:
        """The public view of an order."""
        return cls(
            **order.model_dump(exclude={"job_id", "clinical", "series_instance_uid", "send"}),
            job=job,
            send=order.send,
            status_url=f"/orders/{order.order_id}",
        )


def _known_id(order_id: str) -> str:
    """``order_id`` when it has the form of an id (else 404, before any file is touched)."""
    if not is_valid_id(order_id):
        raise OrderNotFoundError(f"no order {order_id[:64]!r}")
    return order_id


def _visible_order(desk: OrderDesk, order_id: str, identity: Identity) -> Order:
    """The order, if ``identity`` placed it or reviews; else 404 like an unknown id.

    An order without an author (placed before orders recorded one) stays visible to every
    submitter, as it was.
    """
    order = desk.orders.get(_known_id(order_id))
    mine = order.created_by is None or order.created_by == identity.name
    if not identity.may(Role.REVIEWER) and not mine:
        raise OrderNotFoundError(f"no order {order_id[:64]!r}")
    return order


def _view(order: Order, state: ServiceState) -> OrderView:
    job = None
    if order.job_id:
        try:
            job = JobView.of(state.store.get(order.job_id))
        except JobNotFoundError:
            job = None
    return OrderView.of(order, job)


@router.post(
    "/orders",
    status_code=201,
    response_model=OrderView,
    summary="Clinical fields for a study that arrives (or arrived) over DICOM",
    responses=problem_responses(401, 409, 422),
)
def create_order(
    body: OrderRequest, state: StateDep, desk: DeskDep, identity: Authorized
) -> OrderView:
    """Store the order; the job starts when the study's CT series is complete."""
    record = parse_clinical(body.clinical)
    if body.destination is not None:
        resolve_destination(body.destination, destinations_from_settings(state.settings.dicom))
    send = SendState(status=SendStatus.PENDING if body.destination else SendStatus.NOT_REQUESTED)
    order = Order(
        **body.model_dump(exclude={"clinical"}),
        clinical=record.model_dump(mode="json"),
        expires_at=utcnow() + order_expiry(state.settings.orders),
        send=send,
        created_by=identity.name,
    )
    with _CREATING:  # the check and the write as one step: two requests cannot both pass
        check_not_duplicate(order, desk.orders.all())
        desk.orders.create(order)
    desk.poke()
    return _view(order, state)


@router.get(
    "/orders/{order_id}",
    response_model=OrderView,
    summary="Order state, its job, and the send-back",
    responses=problem_responses(401, 404),
)
def order_status(order_id: str, state: StateDep, desk: DeskDep, identity: Authorized) -> OrderView:
    """The order with its job's status and the delivery of the RTSTRUCT."""
    return _view(_visible_order(desk, order_id, identity), state)


@router.post(
    "/orders/{order_id}/send",
    status_code=202,
    response_model=OrderView,
    summary="Send the RTSTRUCT (again) to the order's destination",
    responses=problem_responses(401, 404, 422),
)
def retry_send(order_id: str, state: StateDep, desk: DeskDep, identity: Authorized) -> OrderView:
    """Queue the send-back again (after a failure, or to send once more)."""
    order = _visible_order(desk, order_id, identity)
    desk.require_approval(order)  # 409 review_required (setting require_review)
    resolve_destination(order.destination or "", destinations_from_settings(state.settings.dicom))
    order = desk.orders.update(
        order_id, send=order.send.model_copy(update={"status": SendStatus.PENDING, "reason": None})
    )
    desk.poke()
    return _view(order, state)
