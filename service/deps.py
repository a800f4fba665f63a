"""FastAPI dependencies: every object a route takes from the application, typed.

The composition root (:mod:`service.app`) builds each object once per application and
publishes it in its :class:`AppSlot`; routes declare what they need as ``Annotated``
parameters and never read ``request.app.state`` themselves::

    @router.get("/orders/{order_id}")
    def order_status(order_id: str, state: StateDep, desk: DeskDep, _: Authorized) -> ...

================= ==================================================== ====================
dependency        object                                               slot
================= ==================================================== ====================
``StateDep``      :class:`ServiceState`: settings, job store, files,   :data:`SERVICE`
                  dispatcher
``SettingsDep``   the gateway's :class:`~service.settings.Settings`    (of ``StateDep``)
``DeskDep``       the order desk (:mod:`service.order_desk`)           :data:`DESK`
``AuditDep``      the audit log (:class:`workers.audit.AuditLog`)      :data:`AUDIT`
``ReadinessDep``  the readiness checks (:mod:`service.readiness`)      :data:`READINESS`
``MetricsDep``    the Prometheus registry (:mod:`service.prometheus`)  :data:`METRICS`
``StationDep``    the review station's sessions and caches             :data:`STATION`
``StowDep``       the STOW-RS receiver (:mod:`service.stow`)           :data:`STOW`
``GateDep``       every authentication and its lockout                 (the request)
                  (:class:`~service.auth.AuthGate`)
``Authorized``,   the caller, with at least the role submitter,        (the request)
``Reviewer``,     reviewer, admin (:mod:`service.auth`), else 401/403
``Admin``
================= ==================================================== ====================

A submitter sees its own jobs only: routes read a job for the caller through
:func:`service.auth.visible_job` (another submitter's job is 404, like an unknown one).

Code that holds only the request (the review pages' cookie helpers) asks a slot directly:
``STATION.of(request.app)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry

from service.auth import GATE_KEY, IDENTITY_KEY, AuthGate, Identity, Role, client_address
from service.errors import ForbiddenError
from service.order_desk import OrderDesk
from service.readiness import Readiness
from service.review_station.state import ReviewStation
from service.settings import Settings
from service.stow import StowReceiver
from workers.audit import AuditLog
from workers.dispatch import JobDispatcher
from workers.jobs import JobFiles, JobStore

T = TypeVar("T")


@dataclass
class ServiceState:
    """What the job endpoints need, built once per application."""

    settings: Settings
    store: JobStore
    files: JobFiles
    dispatcher: JobDispatcher


class AppSlot(Generic[T]):
    """One object of the application, kept on ``app.state`` under ``name``.

    Parameters
    ----------
    name
        The attribute of ``app.state``.
    kind
        The object's class: :meth:`of` checks it, so a route never gets something else.
    """

    def __init__(self, name: str, kind: type[T]) -> None:
        self.name = name
        self.kind = kind

        async def dependency(request: Request) -> T:
            # async: resolving it never waits for a thread-pool slot (``/health`` stays fast
            # while uploads occupy the pool).
            return self.of(request.app)

        self.dependency: Callable[[Request], Awaitable[T]] = dependency

    def put(self, app: FastAPI, value: T) -> None:
        """Publish ``value`` (the composition root, :mod:`service.app`)."""
        setattr(app.state, self.name, value)

    def of(self, app: FastAPI) -> T:
        """The object published in ``app``.

        Raises
        ------
        RuntimeError
            Nothing of the right class was published (an application not built by
            :func:`service.app.create_app`).
        """
        value = getattr(app.state, self.name, None)
        if not isinstance(value, self.kind):
            raise RuntimeError(f"the application has no {self.kind.__name__} ({self.name})")
        return value


SERVICE = AppSlot("llmctv", ServiceState)
DESK = AppSlot("llmctv_orders", OrderDesk)
AUDIT = AppSlot("llmctv_audit", AuditLog)
READINESS = AppSlot("llmctv_readiness", Readiness)
METRICS = AppSlot("llmctv_metrics", CollectorRegistry)
STATION = AppSlot("llmctv_ui", ReviewStation)
STOW = AppSlot("llmctv_stow", StowReceiver)

StateDep = Annotated[ServiceState, Depends(SERVICE.dependency)]
"""Settings, job store, job files and dispatcher."""
DeskDep = Annotated[OrderDesk, Depends(DESK.dependency)]
"""The order desk: orders, matching, send-back."""
AuditDep = Annotated[AuditLog, Depends(AUDIT.dependency)]
"""The audit log."""
ReadinessDep = Annotated[Readiness, Depends(READINESS.dependency)]
"""The latest readiness checks."""
MetricsDep = Annotated[CollectorRegistry, Depends(METRICS.dependency)]
"""The application's own Prometheus registry."""
StationDep = Annotated[ReviewStation, Depends(STATION.dependency)]
"""The review station's sessions and caches."""
StowDep = Annotated[StowReceiver, Depends(STOW.dependency)]
"""The STOW-RS receiver (runs while the application runs)."""


async def get_settings_from_app(state: StateDep) -> Settings:
    """The gateway's settings (those the application was built with)."""
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_from_app)]
"""The gateway's settings."""

bearer = HTTPBearer(auto_error=False, description="a secret of LLMCTV_API_TOKENS")


def auth_gate(request: Request) -> AuthGate:
    """The gateway's :class:`~service.auth.AuthGate`, left in the request by its middleware.

    Raises
    ------
    RuntimeError
        The application has no :class:`~service.auth.AuthenticateFirst` middleware.
    """
    gate = request.scope.get("state", {}).get(GATE_KEY)
    if not isinstance(gate, AuthGate):
        raise RuntimeError("the application has no AuthenticateFirst middleware")
    return gate


async def _gate_dependency(request: Request) -> AuthGate:
    return auth_gate(request)  # async: never waits for a thread-pool slot


GateDep = Annotated[AuthGate, Depends(_gate_dependency)]
"""Bearer tokens and the login form, with the lockout (per gateway process)."""


async def current_identity(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    gate: GateDep,
) -> Identity:
    """The caller (found by :class:`~service.auth.AuthenticateFirst`), or 401 / 429."""
    known = request.scope.get("state", {}).get(IDENTITY_KEY)
    if isinstance(known, Identity):
        return known
    token = credentials.credentials if credentials is not None else None
    return gate.bearer(token, client_address(request.scope), request.url.path)


def require_role(needed: Role) -> Callable[..., Awaitable[Identity]]:
    """A dependency: the caller if it has the rights of ``needed``, else 403 ``forbidden``."""

    async def dependency(identity: Annotated[Identity, Depends(current_identity)]) -> Identity:
        if not identity.may(needed):
            raise ForbiddenError(f"this needs the role {needed.value!r}")
        return identity

    return dependency


Authorized = Annotated[Identity, Depends(require_role(Role.SUBMITTER))]
"""Any authenticated caller (submitter or above)."""
Reviewer = Annotated[Identity, Depends(require_role(Role.REVIEWER))]
"""A caller who may decide reviews."""
Admin = Annotated[Identity, Depends(require_role(Role.ADMIN))]
"""An administrator (``/metrics``, ``/audit``)."""
