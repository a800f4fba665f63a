"""Settings of job execution: storage, sliding windows, RTSTRUCT naming, Celery on Redis.

Environment variables ``LLMCTV_*``; described in ``deploy/llmctv.env.example``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.settings import ModelSettings, load_settings


class StorageSettings(BaseSettings):
    """The storage folder shared by the gateway, the DICOM listener and the workers."""

    model_config = SettingsConfigDict(env_prefix="LLMCTV_", extra="ignore")

    storage_dir: Path = Field(default=Path.home() / ".local" / "share" / "llmctv")
    job_retention_hours: float = 168.0


class WorkerSettings(ModelSettings, StorageSettings):
    """What a worker (embedded or Celery) reads to run jobs."""

    overlap: float = 0.25
    sw_batch_size: int = 2
    roi_name: str = "CTV"
    roi_name_suffix: str = ""
    structure_set_label: str = "LLMCTV"
    nodal_check_cc: float = 5.0

    redis_url: str | None = None
    worker_text_encoder: bool = True
    task_soft_time_limit: float = 600.0
    task_hard_time_limit: float = 900.0
    visibility_timeout: float = 3600.0
    unacked_restore_interval: float = 10.0
    worker_queue: str = "contour"
    text_queue: str = "text"
    worker_start_timeout: float = 600.0


def get_settings() -> WorkerSettings:
    """The workers' settings (cached by :func:`model.settings.load_settings`)."""
    return load_settings(WorkerSettings)
