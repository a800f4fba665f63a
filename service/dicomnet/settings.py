"""Settings of DICOM networking: the listener, allowed peers, destinations, retries.

Environment variables ``LLMCTV_DICOM_*``; list settings are comma-separated. Where received
instances are stored is the storage section's (:class:`workers.settings.StorageSettings`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.settings import CommaList, load_settings, split_commas


class DicomSettings(BaseSettings):
    """The DICOM listener (C-ECHO, C-STORE SCP) and the C-STORE sender."""

    model_config = SettingsConfigDict(env_prefix="LLMCTV_", extra="ignore")

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
    # Limits on peers (docs/dicom-conformance.md, "Limits on peers").
    dicom_max_pdu_bytes: int = 262_144
    dicom_max_instance_bytes: int = 268_435_456
    dicom_artim_timeout_s: float = 5.0
    dicom_max_associations: int = 10
    dicom_max_associations_per_peer: int = 4
    dicom_max_associations_per_ae: int = 4
    dicom_max_pending_per_peer: int = 16
    dicom_idle_timeout_s: float = 60.0
    # DICOM TLS (docs/dicom-conformance.md, "Security"); off by default.
    dicom_tls: bool = False
    dicom_tls_cert: Path | None = None
    dicom_tls_key: Path | None = None
    dicom_tls_ca: Path | None = None
    dicom_tls_require_client_cert: bool = False
    dicom_tls_check_hostname: bool = True

    @field_validator("dicom_tls_cert", "dicom_tls_key", "dicom_tls_ca", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "dicom_allowed_aets", "dicom_transfer_syntaxes", "dicom_destinations", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        return split_commas(value)


def get_settings() -> DicomSettings:
    """DICOM networking settings (cached by :func:`model.settings.load_settings`)."""
    return load_settings(DicomSettings)
