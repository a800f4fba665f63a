"""The FastAPI application: :func:`create_app` builds it; nothing happens at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from model import __version__
from service import problems
from service.api import ServiceState, router
from service.api_orders import router as orders_router
from service.auth import check_auth_configured
from service.dicomnet.listener import DicomListener
from service.limits import BodySizeLimit
from service.order_desk import OrderDesk
from service.orders import OrderStore
from service.retention import RetentionTimer
from service.settings import Settings, get_settings
from workers.dispatch import EmbeddedDispatcher, JobDispatcher
from workers.jobs import FileJobStore, JobFiles, JobStore

log = logging.getLogger(__name__)

DESCRIPTION = """
Contours the clinical target volume (CTV) of breast radiotherapy from a CT series and the
patient's clinical fields (N stage, surgery, side), with a text-conditioned 3D U-Net
(Oh et al., Nat. Commun. 2024). Results are DICOM RT Structure Sets for the planning system.

All endpoints but `/health` need `Authorization: Bearer <token>`. Errors are
`application/problem+json` with a stable `code`. **Contours are AI-generated: review before use.**
"""


def build_backend(settings: Settings) -> ServiceState:
    """Job store and dispatcher: Celery on Redis when ``redis_url`` is set, else embedded."""
    files = JobFiles(settings.storage_dir)
    files.jobs.mkdir(parents=True, exist_ok=True)
    store: JobStore
    dispatcher: JobDispatcher
    if settings.redis_url:
        from workers.celery_dispatch import celery_backend

        store, dispatcher = celery_backend(settings, files)
    else:
        file_store = FileJobStore(files)
        store, dispatcher = file_store, EmbeddedDispatcher(settings, file_store, files)
    return ServiceState(settings=settings, store=store, files=files, dispatcher=dispatcher)


def start_listener(settings: Settings, desk: OrderDesk) -> DicomListener | None:
    """The DICOM listener (C-ECHO, C-STORE) feeding the order desk, when enabled."""
    if not settings.dicom_listener:
        return None
    listener = DicomListener.from_settings(settings, desk.on_series_complete)
    listener.start()
    log.info("DICOM listener %s on %s:%d", listener.ae_title, listener.host, listener.port)
    return listener


def create_app(settings: Settings | None = None, state: ServiceState | None = None) -> FastAPI:
    """Build the gateway.

    Parameters
    ----------
    settings
        Defaults to :func:`model.settings.get_settings`.
    state
        Pre-built store and dispatcher (tests); built from ``settings`` otherwise.

    Raises
    ------
    ConfigurationError
        No API token configured and ``allow_no_auth`` not set.
    """
    settings = settings or get_settings()
    check_auth_configured(settings)
    if not settings.api_tokens:
        log.warning("authentication is OFF (development flag allow_no_auth)")
    service = state or build_backend(settings)
    orders = OrderStore(settings.storage_dir)
    retention = RetentionTimer(
        service.store, service.files, settings.job_retention_hours, orders=orders
    )
    desk = OrderDesk(settings, orders, service.store, service.files, service.dispatcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.dispatcher.start()
        retention.start()
        desk.start()
        listener = start_listener(settings, desk)
        try:
            yield
        finally:
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
    )
    app.state.llmctv = service
    app.state.llmctv_orders = desk
    problems.install(app)
    app.include_router(router)
    app.include_router(orders_router)
    # Multipart framing and the clinical field ride on top of the files: 1 MiB of slack.
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes + (1 << 20))
    return app
