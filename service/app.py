"""The FastAPI application: :func:`create_app` builds it; nothing happens at import time.

This is the gateway's composition root: :class:`Gateway` builds every long-lived object once
from the settings (job store and dispatcher, orders, retention, readiness, the DICOM event
sink, the review station), publishes what the routes take in the slots of
:mod:`service.deps`, and starts and stops them in order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from fastapi import FastAPI

from model import __version__
from service import problems, ui
from service.api import router
from service.api_audit import router as audit_router
from service.api_models import router as models_router
from service.api_orders import router as orders_router
from service.api_review import router as review_router
from service.auth import AuthenticateFirst, check_auth_configured, configured_entries
from service.deps import (
    AUDIT,
    DESK,
    METRICS,
    READINESS,
    SERVICE,
    STATION,
    STOW,
    ServiceState,
)
from service.dicomnet.events import DicomEvents
from service.dicomnet.listener import DicomListener
from service.dicomnet.tls import check_sender_tls
from service.dicomweb import router as dicomweb_router
from service.health import router as health_router
from service.limits import BodySizeLimit
from service.order_desk import OrderDesk
from service.orders import AuditedOrderStore
from service.prometheus import LlmctvCollector, metrics_registry
from service.prometheus import router as metrics_router
from service.readiness import Readiness
from service.retention import RetentionHolds, RetentionTimer
from service.review_station.sessions import SessionStore
from service.review_station.state import ReviewStation
from service.settings import Settings, get_settings, public_settings
from service.storage_guard import StorageBackpressure
from service.stow import StowReceiver
from workers.audit import AuditKind, AuditLog
from workers.counters import LocalMetrics, MetricsSink, RedisMetrics
from workers.dispatch import EmbeddedDispatcher, JobDispatcher
from workers.job_events import ObservedJobStore
from workers.jobs import FileJobStore, JobFiles, JobStore
from workers.storage_space import SpaceProbe, StorageWatermark, disk_usage_probe

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
        audit = AuditLog.from_settings(settings.storage)
        if settings.jobs.redis_url:
            from workers.redis_store import connect

            return cls(audit, RedisMetrics(connect(settings.jobs.redis_url)))
        return cls(audit)


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
    files = JobFiles(settings.storage.storage_dir)
    files.jobs.mkdir(parents=True, exist_ok=True)
    store: JobStore
    dispatcher: JobDispatcher
    if settings.jobs.redis_url:
        from workers.celery_dispatch import celery_backend

        redis_store, dispatcher = celery_backend(settings.worker, files)
        store = ObservedJobStore(redis_store, observed.audit, observed.metrics, "gateway")
    else:
        store = ObservedJobStore(
            FileJobStore(files), observed.audit, observed.metrics, "embedded-worker"
        )
        factory = None if engine is None else (lambda _: engine)
        dispatcher = EmbeddedDispatcher(settings.worker, store, files, engine_factory=factory)
    return ServiceState(settings=settings, store=store, files=files, dispatcher=dispatcher)


def start_listener(
    settings: Settings, desk: OrderDesk, events: DicomEvents, watermark: StorageWatermark
) -> DicomListener | None:
    """The DICOM listener (C-ECHO, C-STORE) feeding the order desk, when enabled."""
    if not settings.dicom.dicom_listener:
        return None
    listener = DicomListener.from_settings(
        settings.dicom, settings.storage, desk.on_series_complete, events, watermark
    )
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
    events: DicomEvents
    station: ReviewStation
    watermark: StorageWatermark

    @classmethod
    def build(
        cls,
        settings: Settings,
        state: ServiceState | None,
        engine: ContourEngine | None,
        disk_probe: SpaceProbe = disk_usage_probe,
    ) -> Gateway:
        """Wire the parts from the settings (``state``: pre-built store and dispatcher;
        ``disk_probe``: how the storage folder's free space is read)."""
        observed = Observability.from_settings(settings)
        service = state or build_backend(settings, observed, engine)
        orders = AuditedOrderStore(settings.storage.storage_dir, observed.audit, observed.metrics)
        watermark = StorageWatermark.from_settings(settings.storage, disk_probe)
        readiness = Readiness(settings, service.dispatcher, watermark=watermark)
        if isinstance(service.store, ObservedJobStore):
            readiness.storage_writable = service.store.flush
        review = settings.review
        holds = RetentionHolds(orders, review.require_review, review.hold_needs_attention)
        retention = RetentionTimer(
            service.store,
            service.files,
            settings.storage.job_retention_hours,
            orders=orders,
            holds=holds,
        )
        desk = OrderDesk(settings, orders, service.store, service.files, service.dispatcher)
        events = DicomEvents(observed.audit, observed.metrics)
        station = ReviewStation(SessionStore(timedelta(hours=review.ui_session_hours)))
        return cls(
            settings, observed, service, desk, retention, readiness, events, station, watermark
        )

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """Start everything, in dependency order; stop it in reverse."""
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
        check_sender_tls(self.settings.dicom)  # a missing TLS file stops the start here
        listener = start_listener(self.settings, self.desk, self.events, self.watermark)
        self.readiness.listener_running = lambda: listener is not None and listener.running
        if listener is not None:
            self.readiness.listener_associations = listener.admission.open_count
        self.readiness.start()
        stow = StowReceiver(  # shares the listener's series assembler
            self.settings.dicom,
            self.settings.storage,
            self.desk.on_series_complete,
            self.events,
            listener,
        )
        stow.start()
        STOW.put(app, stow)
        try:
            yield
        finally:
            stow.stop()
            self.readiness.stop()
            if listener is not None:
                listener.stop()
            self.desk.stop()
            self.retention.stop()
            self.service.dispatcher.stop()

    def publish(self, app: FastAPI) -> None:
        """Put what the routes take (:mod:`service.deps`) in the application's slots."""
        SERVICE.put(app, self.service)
        DESK.put(app, self.desk)
        AUDIT.put(app, self.observed.audit)
        READINESS.put(app, self.readiness)
        STATION.put(app, self.station)
        collector = LlmctvCollector(
            self.observed.metrics,
            self.service.dispatcher,
            self.settings.storage.storage_dir,
            self.readiness,
        )
        METRICS.put(app, metrics_registry(collector))


def _install_routes(app: FastAPI) -> None:
    problems.install(app)
    for routes in (
        router,
        orders_router,
        health_router,
        metrics_router,
        audit_router,
        review_router,
        models_router,
        dicomweb_router,  # STOW-RS (its receiver runs in the gateway's lifespan)
    ):
        app.include_router(routes)
    ui.install(app)  # the review station under /ui/ (own sessions)


def _install_middleware(
    app: FastAPI, settings: Settings, audit: AuditLog, watermark: StorageWatermark
) -> None:
    # A full disk refuses uploads and STOW-RS before their bodies (inside authentication).
    app.add_middleware(StorageBackpressure, watermark=watermark)
    # Multipart framing and the clinical field ride on top of the files: 1 MiB of slack.
    app.add_middleware(
        BodySizeLimit,
        limit=settings.uploads.max_upload_bytes + (1 << 20),
        json_limit=settings.uploads.max_json_bytes,
    )
    # Added last, so outermost: the token is checked before any body is read.
    # It also counts failed authentications (the lockout) and audits them.
    app.add_middleware(AuthenticateFirst, settings=settings.auth, audit=audit)


def create_app(
    settings: Settings | None = None,
    state: ServiceState | None = None,
    engine: ContourEngine | None = None,
    disk_probe: SpaceProbe = disk_usage_probe,
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
    disk_probe
        How the storage folder's free space is read (the watermark's; tests simulate a full
        disk with another).

    Raises
    ------
    ConfigurationError
        No API token configured and ``allow_no_auth`` not set.
    """
    settings = settings or get_settings()
    check_auth_configured(settings.auth)
    if not configured_entries(settings.auth):
        log.warning("authentication is OFF (development flag allow_no_auth)")
    gateway = Gateway.build(settings, state, engine, disk_probe)
    docs = settings.http.api_docs  # /docs, /redoc and /openapi.json only when enabled
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
    _install_routes(app)
    _install_middleware(app, settings, gateway.observed.audit, gateway.watermark)
    return app
