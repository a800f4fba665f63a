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
from service.metrics import LlmctvCollector, metrics_registry
from service.metrics import router as metrics_router
from service.order_desk import OrderDesk
from service.retention import RetentionTimer
from service.settings import Settings, get_settings
from service.storage_guard import StorageBackpressure
from workers.audit import AuditLog
from workers.dispatch import EmbeddedDispatcher, JobDispatcher
from workers.job_events import ObservedJobStore
from workers.jobs import FileJobStore, JobFiles, JobStore
from workers.metrics import LocalMetrics, MetricsSink, RedisMetrics

if TYPE_CHECKING:
    from workers.engine import ContourEngine

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


def create_app(
    settings: Settings | None = None,
    state: ServiceState | None = None,
    engine: ContourEngine | None = None,
) -> FastAPI:
    """Build the gateway.

    Parameters
    ----------
    settings
        Defaults to :func:`model.settings.get_settings`.
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
    observed = Observability.from_settings(settings)
    service = state or build_backend(settings, observed, engine)
    orders = AuditedOrderStore(settings.storage_dir, observed.audit, observed.metrics)
    readiness = Readiness(settings, service.dispatcher)
    if isinstance(service.store, ObservedJobStore):
        readiness.storage_writable = service.store.flush
    retention = RetentionTimer(
        service.store, service.files, settings.job_retention_hours, orders=orders
    )
    desk = OrderDesk(settings, orders, service.store, service.files, service.dispatcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        DICOM_EVENTS.configure(observed.audit, observed.metrics)
        observed.audit.purge()
        observed.audit.record(
            AuditKind.SETTINGS_LOADED,
            "system",
            version=__version__,
            settings=public_settings(settings),
        )
        service.dispatcher.start()
        retention.start()
        desk.start()
        listener = start_listener(settings, desk)
        app.state.llmctv_listener = listener  # STOW-RS shares its series assembler
        readiness.listener_running = lambda: listener is not None and listener.running
        readiness.start()
        try:
            yield
        finally:
            readiness.stop()
            if listener is not None:
                listener.stop()
            desk.stop()
            retention.stop()
            service.dispatcher.stop()

    app = FastAPI(
        title="llmctv",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        license_info={"name": "Apache-2.0"},
        # /docs, /redoc and /openapi.json only when enabled (setting api_docs, default off).
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )
    app.state.llmctv = service
    app.state.llmctv_orders = desk
    app.state.llmctv_audit = observed.audit
    app.state.llmctv_readiness = readiness
    collector = LlmctvCollector(
        observed.metrics, service.dispatcher, settings.storage_dir, readiness
    )
    app.state.llmctv_metrics = metrics_registry(collector)
    problems.install(app)
    app.include_router(router)
    app.include_router(orders_router)
    app.include_router(health_router)
    app.include_router(metrics_router)
    app.include_router(audit_router)
    app.include_router(review_router)
    app.include_router(dicomweb_router)  # STOW-RS, with its own receiver (router lifespan)
    ui.install(app, settings)  # the review station under /ui/ (own sessions)
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
    return app
