"""The one settings object of llmctv (environment variables ``LLMCTV_*``).

Nothing else reads the environment. Use :func:`get_settings`; tests may call
``get_settings.cache_clear()`` after changing the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Process-wide configuration.

    Attributes
    ----------
    cache_dir
        Where converted text encoders (GGUF -> safetensors) and data caches live.
    device
        ``auto`` picks CUDA when available, else CPU.
    torch_threads
        CPU threads for torch (0 keeps torch's default).

    The gateway, worker and DICOM settings are described in ``deploy/llmctv.env.example``.
    List settings (tokens, AE titles) are comma-separated in the environment.
    """

    model_config = SettingsConfigDict(env_prefix="LLMCTV_", extra="ignore")

    cache_dir: Path = Field(default=Path.home() / ".cache" / "llmctv")
    device: str = "auto"
    torch_threads: int = 0
    text_encoder: Path | None = None
    checkpoint: Path | None = None
    offline: bool = True

    # --- gateway ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    api_tokens: CommaList = Field(default_factory=list)
    allow_no_auth: bool = False
    storage_dir: Path = Field(default=Path.home() / ".local" / "share" / "llmctv")
    max_upload_bytes: int = 2_000_000_000
    max_archive_members: int = 20_000
    max_unpacked_bytes: int = 4_000_000_000
    max_compression_ratio: float = 200.0
    job_retention_hours: float = 168.0
    overlap: float = 0.25
    sw_batch_size: int = 2
    roi_name: str = "CTV"
    roi_name_suffix: str = ""
    structure_set_label: str = "LLMCTV"
    nodal_check_cc: float = 5.0

    # --- workers (Celery on Redis) -------------------------------------------------------------
    redis_url: str | None = None
    worker_text_encoder: bool = True
    task_soft_time_limit: float = 600.0
    task_hard_time_limit: float = 900.0
    visibility_timeout: float = 3600.0
    unacked_restore_interval: float = 10.0
    worker_queue: str = "contour"
    text_queue: str = "text"
    worker_start_timeout: float = 600.0

    # --- DICOM networking ----------------------------------------------------------------------
    dicom_listener: bool = True
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    dicom_ae_title: str = "LLMCTV"
    dicom_allowed_aets: CommaList = Field(default_factory=list)
    dicom_transfer_syntaxes: CommaList = Field(default_factory=list)
    dicom_series_timeout_s: float = 10.0
    dicom_destinations: CommaList = Field(default_factory=list)
    dicom_send_retries: int = 3
    dicom_send_backoff_s: float = 2.0
    order_expiry_hours: float = 24.0

    @field_validator(
        "api_tokens",
        "dicom_allowed_aets",
        "dicom_transfer_syntaxes",
        "dicom_destinations",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the cached process settings."""
    return Settings()
