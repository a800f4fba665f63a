"""Settings of the gateway: ten sections, one per concern, each read from ``LLMCTV_*``.

The gateway runs the embedded worker and the DICOM listener in its own process, so its
:class:`Settings` holds theirs too. The sections and what reads them:

============== ========================================== ====================================
section        holds                                      read by
============== ========================================== ====================================
``http``       bind address, port, slow-client timeouts,  :mod:`service.http_server`,
               concurrency, API docs                      :mod:`service.app`
``uploads``    body, archive and JSON size limits         :mod:`service.api`, the body limit
``auth``       API identities, the development flag       :mod:`service.auth`
``review``     review before sending, the review          :mod:`service.order_desk`,
               station's sessions and cookie              :mod:`service.ui`, retention
``orders``     when an unmatched order expires            :mod:`service.order_desk`
``dicom``      listener, peers, destinations, retries     :mod:`service.dicomnet`
``contouring`` sliding windows, ROI names, checks, CT     workers, intake
               limits (:mod:`workers.settings`)
``jobs``       Redis and Celery, queues, time limits      workers, dispatch, readiness
``storage``    the shared folder, retention, watermark    everything that stores
``model``      checkpoint, text encoder, device           the model loader
============== ========================================== ====================================

A variable keeps its flat name: ``LLMCTV_PORT`` is ``settings.http.port``. The worker's view
(:attr:`Settings.worker`) is made of the same section objects, so the gateway holds one copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.settings import (
    CommaList,
    ModelSettings,
    Sections,
    flat_dump,
    load_settings,
    split_commas,
)
from service.dicomnet.settings import DicomSettings
from workers.settings import ContouringSettings, JobSettings, StorageSettings, WorkerSettings

_PREFIX = SettingsConfigDict(env_prefix="LLMCTV_", extra="ignore")


class HttpSettings(BaseSettings):
    """The HTTP server (:mod:`service.http_server`): address, slow and idle clients, docs."""

    model_config = _PREFIX

    host: str = "127.0.0.1"
    port: int = 8000
    http_header_timeout: float = 10.0
    http_body_idle_timeout: float = 30.0
    http_min_body_rate: float = 1000.0
    http_keep_alive_timeout: int = 5
    http_graceful_shutdown_timeout: int = 10
    http_limit_concurrency: int = 100
    http_max_header_bytes: int = 16_384
    api_docs: bool = False
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses);
    # empty: none, the client address is the socket's (the lockout counts it).
    http_trusted_proxies: CommaList = Field(default_factory=list)

    @field_validator("http_trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        return split_commas(value)


class UploadSettings(BaseSettings):
    """Size limits of request bodies, zip archives and JSON bodies."""

    model_config = _PREFIX

    max_upload_bytes: int = 2_000_000_000
    max_archive_members: int = 20_000
    max_unpacked_bytes: int = 4_000_000_000
    max_compression_ratio: float = 200.0
    max_json_bytes: int = 65_536


class AuthSettings(BaseSettings):
    """The identities the API accepts (:mod:`service.auth`)."""

    model_config = _PREFIX

    api_tokens: CommaList = Field(default_factory=list)
    api_tokens_file: Path | None = None
    allow_no_auth: bool = False
    # Lockout (per gateway process): this many failed authentications (bearer tokens, the
    # review station's login form) from one client address, or naming one identity at the
    # login form, within auth_failure_window_s lock it out (429 with Retry-After, even with
    # the right token) until the oldest of them is that old. 0 switches the lockout off.
    auth_max_failures: int = Field(default=10, ge=0)
    auth_failure_window_s: float = Field(default=300.0, gt=0)

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        return split_commas(value)


class ReviewSettings(BaseSettings):
    """Review before release, and the review station's sessions (:mod:`service.ui`)."""

    model_config = _PREFIX

    # An order's RTSTRUCT leaves only after approval when true.
    require_review: bool = False
    # A job with a needs-attention finding waits for a reviewer's approval before its RTSTRUCT
    # is sent, even when require_review is false.
    hold_needs_attention: bool = True
    ui_session_hours: float = 8.0
    ui_secure_cookie: bool = False


class OrderSettings(BaseSettings):
    """Orders: clinical fields waiting for a study over DICOM (:mod:`service.order_desk`)."""

    model_config = _PREFIX

    order_expiry_hours: float = 24.0


class Settings(Sections):
    """Process settings of ``llmctv serve`` (sections: see the module's table)."""

    http: HttpSettings = Field(default_factory=HttpSettings)
    uploads: UploadSettings = Field(default_factory=UploadSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    orders: OrderSettings = Field(default_factory=OrderSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    contouring: ContouringSettings = Field(default_factory=ContouringSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)

    @property
    def worker(self) -> WorkerSettings:
        """What the embedded worker and the Celery dispatcher read: these very sections."""
        return WorkerSettings(
            contouring=self.contouring, jobs=self.jobs, storage=self.storage, model=self.model
        )


_SECRET_WORDS = ("token", "secret", "password", "key")
#: Settings whose names hold a secret word but whose values are file paths, not secrets.
_PATH_SETTINGS = ("api_tokens_file", "dicom_tls_key", "dicom_tls_cert", "dicom_tls_ca")


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def public_settings(settings: Settings) -> dict[str, Any]:
    """Every setting by its flat name, without secrets: tokens dropped, URLs without credentials.

    What the audit trail records at start-up (``settings.loaded``).
    """
    public: dict[str, Any] = {}
    for name, value in flat_dump(settings, mode="json").items():
        if any(word in name for word in _SECRET_WORDS) and name not in _PATH_SETTINGS:
            continue
        public[name] = _without_credentials(value) if name.endswith("_url") and value else value
    public["api_identities"] = len(settings.auth.api_tokens)
    return public


def get_settings() -> Settings:
    """The gateway's settings (cached by :func:`model.settings.load_settings`)."""
    return load_settings(Settings)
