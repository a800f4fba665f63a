"""Settings of the gateway: the HTTP face, uploads, orders, plus everything it hosts.

:class:`Settings` holds the model's, the workers' and the DICOM settings too, because the
gateway runs the embedded worker and the DICOM listener in its own process.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from model.settings import CommaList, load_settings, split_commas
from service.dicomnet.settings import DicomSettings
from workers.settings import WorkerSettings


class Settings(WorkerSettings, DicomSettings):
    """Process settings of ``llmctv serve``."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_tokens: CommaList = Field(default_factory=list)
    api_tokens_file: Path | None = None
    allow_no_auth: bool = False
    max_upload_bytes: int = 2_000_000_000
    max_archive_members: int = 20_000
    max_unpacked_bytes: int = 4_000_000_000
    max_compression_ratio: float = 200.0
    max_json_bytes: int = 65_536
    order_expiry_hours: float = 24.0
    # HTTP server (service.http_server): slow and idle clients, concurrency, API docs.
    http_header_timeout: float = 10.0
    http_body_idle_timeout: float = 30.0
    http_min_body_rate: float = 1000.0
    http_keep_alive_timeout: int = 5
    http_graceful_shutdown_timeout: int = 10
    http_limit_concurrency: int = 100
    http_max_header_bytes: int = 16_384
    api_docs: bool = False
    # Review station (service.ui): an order's RTSTRUCT leaves only after approval when true.
    require_review: bool = False
    # A job with a needs-attention finding waits for a reviewer's approval before its RTSTRUCT
    # is sent, even when require_review is false.
    hold_needs_attention: bool = True
    ui_session_hours: float = 8.0
    ui_secure_cookie: bool = False

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        return split_commas(value)


def get_settings() -> Settings:
    """The gateway's settings (cached by :func:`model.settings.load_settings`)."""
    return load_settings(Settings)
