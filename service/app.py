"""The FastAPI application: :func:`create_app` builds it; nothing happens at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import FastAPI

from model import __version__
from service import problems, ui
from service.api import ServiceState, router
from service.api_orders import router as orders_router
from service.api_review import router as review_router
from service.audit import DICOM_EVENTS, AuditedOrderStore, AuditKind, public_settings
from service.audit import router as audit_router
from service.auth import AuthenticateFirst, check_auth_configured, configured_entries
from service.dicomnet.listener import DicomListener
from service.dicomweb import router as dicomweb_router
from service.health import Readiness
from service.health import router as health_router
from service.limits import BodySizeLimit
from service.order_desk import OrderDesk
from service.prometheus import LlmctvCollector, metrics_registry
from service.prometheus import router as metrics_router
from service.retention import RetentionHolds, RetentionTimer
from service.settings import Settings, get_settings
from service.storage_guard import StorageBackpressure
from workers.audit import AuditLog
from workers.counters import LocalMetrics, MetricsSink, RedisMetrics
from workers.dispatch import EmbeddedDispatcher, JobDispatcher
from workers.job_events import ObservedJobStore
from workers.jobs import FileJobStore, JobFiles, JobStore

if TYPE_CHECKING:
    from model.contouring.engine import ContourEngine

log = logging.getLogger(__name__)

DESCRIPTION = """
Contours the clinical target volume (CTV) of breast radiotherapy from a CT series and the
patient's clinical fields (N stage, surgery, side), with a text-conditioned 3D U-Net
(Oh et al., Nat. Commun. 2024). Results are DICOM RT Structure Sets for the planning system.

All endpoints but `/health` need `Authorization: Bearer <token>`. Errors are
`application/problem+json` with a stable `code`. **Contours are AI-generated: review before use.**
"""


@dataclass
class Observability:
    """Where a deployment's audit entries and metrics go."""

    audit: AuditLog
    metrics: MetricsSink = field(default_factory=LocalMetrics)

    @classmethod
    def from_settings(cls, settings: Settings) -> Observability:
        """The audit log of the storage folder; metrics in Redis (Celery) or in-process."""
        if settings.redis_url:
            from workers.redis_store import connect

            return cls(AuditLog.from_settings(settings), RedisMetrics(connect(settings.redis_url)))
        return cls(AuditLog.from_settings(settings))


def build_backend(
    settings: Settings,
    observed: Observability | None = None,
    engine: ContourEngine | None = None,
) -> ServiceState:
    """Job store and dispatcher: Celery on Redis when ``redis_url`` is set, else embedded.

    The store audits and measures job state changes (:class:`ObservedJobStore`); ``engine``
    is a model already loaded at start-up (embedded mode), else it loads in the worker thread.
    """
    observed = observed or Observability.from_settings(settings)
    files = JobFiles(settings.storage_dir)
    files.jobs.mkdir(parents=True, exist_ok=True)
    store: JobStore
    dispatcher: JobDispatcher
    if settings.redis_url:
        from workers.celery_dispatch import celery_backend

        redis_store, dispatcher = celery_backend(settings, files)
        store = ObservedJobStore(redis_store, observed.audit, observed.metrics, "gateway")
    else:
        store = ObservedJobStore(
            FileJobStore(files), observed.audit, observed.metrics, "embedded-worker"
        )
        factory = None if engine is None else (lambda _: engine)
        dispatcher = EmbeddedDispatcher(settings, store, files, engine_factory=factory)
    return ServiceState(settings=settings, store=store, files=files, dispatcher=dispatcher)


def start_listener(settings: Settings, desk: OrderDesk) -> DicomListener | None:
    """The DICOM listener (C-ECHO, C-STORE) feeding the order desk, when enabled."""
    if not settings.dicom_listener:
        return None
    listener = DicomListener.from_settings(settings, desk.on_series_complete)
    listener.start()
    log.info("DICOM listener %s on %s:%d", listener.ae_title, listener.host, listener.port)
    return listener


@dataclass
class Gateway:
    """What one gateway process runs besides HTTP: jobs, orders, retention, readiness, DICOM."""

    settings: Settings
    observed: Observability
    service: ServiceState
    desk: OrderDesk
    retention: RetentionTimer
    readiness: Readiness

    @classmethod
    def build(
        cls, settings: Settings, state: ServiceState | None, engine: ContourEngine | None
    ) -> Gateway:
        """Wire the parts from the settings (``state``: pre-built store and dispatcher)."""
        observed = Observability.from_settings(settings)
        service = state or build_backend(settings, observed, engine)
        orders = AuditedOrderStore(settings.storage_dir, observed.audit, observed.metrics)
        readiness = Readiness(settings, service.dispatcher)
        if isinstance(service.store, ObservedJobStore):
            readiness.storage_writable = service.store.flush
        holds = RetentionHolds(orders, settings.require_review, settings.hold_needs_attention)
        retention = RetentionTimer(
            service.store, service.files, settings.job_retention_hours, orders=orders, holds=holds
        )
        desk = OrderDesk(settings, orders, service.store, service.files, service.dispatcher)
        return cls(settings, observed, service, desk, retention, readiness)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """Start everything, in dependency order; stop it in reverse."""
        DICOM_EVENTS.configure(self.observed.audit, self.observed.metrics)
        self.observed.audit.purge()
        self.observed.audit.record(
            AuditKind.SETTINGS_LOADED,
            "system",
            version=__version__,
            settings=public_settings(self.settings),
        )
        self.service.dispatcher.start()
        self.retention.start()
        self.desk.start()
        listener = start_listener(self.settings, self.desk)
        app.state.llmctv_listener = listener  # STOW-RS shares its series assembler
        self.readiness.listener_running = lambda: listener is not None and listener.running
        self.readiness.start()
        try:
            yield
        finally:
            self.readiness.stop()
            if listener is not None:
                listener.stop()
            self.desk.stop()
            self.retention.stop()
            self.service.dispatcher.stop()

    def publish(self, app: FastAPI) -> None:
        """What the routes read from ``app.state``."""
        app.state.llmctv = self.service
        app.state.llmctv_orders = self.desk
        app.state.llmctv_audit = self.observed.audit
        app.state.llmctv_readiness = self.readiness
        collector = LlmctvCollector(
            self.observed.metrics,
            self.service.dispatcher,
            self.settings.storage_dir,
            self.readiness,
        )
        app.state.llmctv_metrics = metrics_registry(collector)


def _install_routes(app: FastAPI, settings: Settings) -> None:
    problems.install(app)
    for routes in (
        router,
        orders_router,
        health_router,
        metrics_router,
        audit_router,
        review_router,
        dicomweb_router,  # STOW-RS, with its own receiver (router lifespan)
    ):
        app.include_router(routes)
    ui.install(app, settings)  # the review station under /ui/ (own sessions)


def _install_middleware(app: FastAPI, settings: Settings) -> None:
    # A full disk refuses uploads and STOW-RS before their bodies (inside authentication).
    app.add_middleware(StorageBackpressure, settings=settings)
    # Multipart framing and the clinical field ride on top of the files: 1 MiB of slack.
    app.add_middleware(
        BodySizeLimit,
        limit=settings.max_upload_bytes + (1 << 20),
        json_limit=settings.max_json_bytes,
    )
    # Added last, so outermost: the token is checked before any body is read.
    app.add_middleware(AuthenticateFirst, settings=settings)


def create_app(
    settings: Settings | None = None,
    state: ServiceState | None = None,
    engine: ContourEngine | None = None,
) -> FastAPI:
    """Build the gateway.

    Parameters
    ----------
    settings
        Defaults to :func:`service.settings.get_settings`.
    state
        Pre-built store and dispatcher (tests); built from ``settings`` otherwise.
    engine
        The model, loaded at start-up by ``llmctv serve`` (embedded mode).

    Raises
    ------
    ConfigurationError
        No API token configured and ``allow_no_auth`` not set.
    """
    settings = settings or get_settings()
    check_auth_configured(settings)
    if not configured_entries(settings):
        log.warning("authentication is OFF (development flag allow_no_auth)")
    gateway = Gateway.build(settings, state, engine)
    docs = settings.api_docs  # /docs, /redoc and /openapi.json only when enabled
    app = FastAPI(
        title="llmctv",
        version=__version__,
        description=DESCRIPTION,
        lifespan=gateway.lifespan,
        license_info={"name": "Apache-2.0"},
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    gateway.publish(app)
    _install_routes(app, settings)
    _install_middleware(app, settings)
    return app
