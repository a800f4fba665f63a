"""Settings of job execution: contouring, how jobs run (Redis, Celery, limits), storage.

Environment variables ``LLMCTV_*``; described in ``deploy/llmctv.env.example``. A worker
process reads :class:`WorkerSettings`, four sections: ``contouring``, ``jobs``, ``storage`` and
``model`` (:class:`model.settings.ModelSettings`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.contouring.naming import naming_map
from model.contouring.structure_set import ContouringPolicy
from model.dicom.ingest_policy import IngestPolicy
from model.settings import CommaList, ModelSettings, Sections, load_settings, split_commas


class StorageSettings(BaseSettings):
    """The storage folder shared by the gateway, the DICOM listener and the workers."""

    model_config = SettingsConfigDict(env_prefix="LLMCTV_", extra="ignore")

    storage_dir: Path = Field(default=Path.home() / ".local" / "share" / "llmctv")
    job_retention_hours: float = 168.0
    storage_min_free_bytes: int = 1_000_000_000
    # Disk backpressure (workers.storage_space): also full above this used fraction.
    storage_max_used_fraction: float = 0.95
    audit_retention_days: float = 400.0
    audit_max_bytes: int = 20_000_000


class ContouringSettings(BaseSettings):
    """What a site decides about contouring: sliding windows, ROI names, checks, CT limits."""

    model_config = SettingsConfigDict(env_prefix="LLMCTV_", extra="ignore")

    overlap: float = 0.25
    sw_batch_size: int = 2
    # Mirror test-time augmentation (model.inference.Predictor): twice the network time; the
    # mirrored note is encoded by the worker, so it needs the text encoder loaded.
    mirror_tta: bool = False
    roi_name: str = "CTV"
    roi_name_suffix: str = ""
    structure_set_label: str = "LLMCTV"
    nodal_check_cc: float = 5.0
    # ROI names of the sub-volumes: structure=name pairs, {side} is L or R (TG-263 style).
    roi_names: CommaList = Field(default_factory=list)
    # Islands and outside-body volume removed by postprocessing above this (cc) are a warning.
    removed_warning_cc: float = 1.0
    # A structure whose confidence (mean class probability) is below this needs attention.
    confidence_flag_below: float = 0.90

    # Plausible CT geometry (model.dicom.ingest_policy.IngestPolicy), checked at inspection.
    ingest_min_spacing_mm: float = 0.1
    ingest_max_spacing_mm: float = 10.0
    ingest_max_extent_mm: float = 1000.0
    ingest_max_matrix: int = 2048
    ingest_max_windows: int = 2000
    # Refuse prone series (PatientPosition HFP/FFP: not trained on) instead of a warning.
    ingest_refuse_untrained_positions: bool = False

    @field_validator("roi_names", mode="before")
    @classmethod
    def _split_roi_names(cls, value: object) -> object:
        return split_commas(value)

    def ingest_policy(self) -> IngestPolicy:
        """The plausibility limits on a CT series (checked by the gateway and the worker)."""
        return IngestPolicy(
            min_spacing_mm=self.ingest_min_spacing_mm,
            max_spacing_mm=self.ingest_max_spacing_mm,
            max_extent_mm=self.ingest_max_extent_mm,
            max_matrix=self.ingest_max_matrix,
            max_windows=self.ingest_max_windows,
            refuse_untrained_positions=self.ingest_refuse_untrained_positions,
        )

    def contouring_policy(self) -> ContouringPolicy:
        """What the site decided about its structure sets (names, checks, thresholds).

        Raises
        ------
        ConfigurationError
            ``roi_names`` is malformed.
        """
        return ContouringPolicy(
            ingest=self.ingest_policy(),
            roi_name=self.roi_name,
            roi_names=naming_map(self.roi_names),
            structure_set_label=self.structure_set_label,
            roi_name_suffix=self.roi_name_suffix,
            nodal_check_cc=self.nodal_check_cc,
            removed_warning_cc=self.removed_warning_cc,
            confidence_flag_below=self.confidence_flag_below,
        )


class JobSettings(BaseSettings):
    """How jobs run: Celery on Redis or the embedded worker, queues, time limits, attempts."""

    model_config = SettingsConfigDict(env_prefix="LLMCTV_", extra="ignore")

    redis_url: str | None = None
    worker_text_encoder: bool = True
    task_soft_time_limit: float = 600.0
    task_hard_time_limit: float = 900.0
    visibility_timeout: float = 3600.0
    unacked_restore_interval: float = 10.0
    worker_queue: str = "contour"
    text_queue: str = "text"
    worker_start_timeout: float = 600.0
    # Seconds a running job may go without progress before its lease expires; the gateway's
    # lease watchdog then reports it stalled and has it claimed again (workers.lease_watchdog).
    job_stall_timeout: float = 300.0
    # Attempts (claims) of one job before it ends failed, like a dead letter.
    job_max_attempts: int = 3
    # Seconds the embedded worker may take to stop on shutdown (the job is re-queued).
    worker_stop_timeout: float = 5.0


class WorkerSettings(Sections):
    """What a worker (embedded or Celery) reads to run jobs."""

    contouring: ContouringSettings = Field(default_factory=ContouringSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)


def get_settings() -> WorkerSettings:
    """The workers' settings (cached by :func:`model.settings.load_settings`)."""
    return load_settings(WorkerSettings)
