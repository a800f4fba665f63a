"""The one error hierarchy of llmctv.

Every error that a user can cause or meet carries a stable machine-readable ``code``.
The gateway maps these codes to ``application/problem+json`` responses in one place, and
workers map them to job states in one place; nothing else inspects exception types.
Codes are part of the public contract: never rename one.
"""

from __future__ import annotations

from typing import ClassVar


class LlmctvError(Exception):
    """Base of every error llmctv raises on purpose.

    Parameters
    ----------
    detail
        Human-readable explanation. Must never contain patient names or IDs.
    """

    code: ClassVar[str] = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"[{self.code}] {self.detail}"


# --- configuration, models and checkpoints -------------------------------------------------
class ConfigurationError(LlmctvError):
    """A setting or a command-line option is invalid."""

    code = "invalid_configuration"


class ModelNotFoundError(LlmctvError):
    """A model folder or file (text encoder, checkpoint) is missing or unreadable."""

    code = "model_not_found"


class CheckpointMismatchError(LlmctvError):
    """A checkpoint does not match the configuration it is loaded into."""

    code = "checkpoint_mismatch"


class ContextNotCachedError(LlmctvError):
    """A note's context embedding is not cached and no text encoder is loaded here.

    Not a failure of a job: a worker without the LLM hands the job to one that holds it.
    """

    code = "context_not_cached"


# --- input data ------------------------------------------------------------------------------
class InputError(LlmctvError):
    """Input that llmctv cannot contour safely."""

    code = "invalid_input"


class InvalidClinicalError(InputError):
    """Clinical fields that violate the service contract."""

    code = "invalid_clinical"


class DicomError(InputError):
    """DICOM input that cannot be used."""

    code = "invalid_dicom"


class UnreadableDicomError(DicomError):
    """A file is not DICOM, or is truncated or corrupt."""

    code = "unreadable_dicom"


class NoSeriesError(DicomError):
    """No usable image series was found in the input."""

    code = "no_series"


class NotCtError(DicomError):
    """The series is not a CT series."""

    code = "not_ct"


class MixedSeriesError(DicomError):
    """Instances of several series arrived where one was expected."""

    code = "mixed_series"


class ObliqueSeriesError(DicomError):
    """The series is not axial, is tilted, or is oblique."""

    code = "oblique_series"


class InflatedTooLargeError(DicomError):
    """A deflated (compressed) instance that inflates past the instance cap: a decompression
    bomb. Found while inflating in bounded chunks, before anything large is held."""

    code = "dicom_instance_too_large"


class UnsupportedPatientPositionError(DicomError):
    """A patient position the model cannot contour safely: decubitus (direction cosines with
    rows or columns along the patient's anterior-posterior axis, or a decubitus
    PatientPosition), or a position the setting ``ingest_refuse_untrained_positions`` refuses.
    """

    code = "unsupported_patient_position"


class InconsistentGeometryError(DicomError):
    """Rows, columns or pixel spacing differ between slices."""

    code = "inconsistent_geometry"


class ImplausibleGeometryError(DicomError):
    """Geometry outside clinical limits: spacing, extent, matrix size, window count, or a
    non-finite value in ImagePositionPatient, ImageOrientationPatient, PixelSpacing or
    SliceThickness (limits: :class:`model.dicom.ingest_policy.IngestPolicy`)."""

    code = "implausible_geometry"


class MissingSlicesError(DicomError):
    """A gap in slice positions larger than the tolerated spacing."""

    code = "missing_slices"


class TooFewSlicesError(DicomError):
    """Fewer slices than the minimum needed to contour."""

    code = "too_few_slices"


class UnsupportedTransferSyntaxError(DicomError):
    """Pixel data in a transfer syntax that cannot be decoded here."""

    code = "unsupported_transfer_syntax"


class StructureSetError(DicomError):
    """An RTSTRUCT that cannot be read or does not reference the given series."""

    code = "invalid_rtstruct"


class RoiNotFoundError(StructureSetError):
    """No ROI of a structure set matches the configured target rule."""

    code = "roi_not_found"


class NoteContradictsFieldsError(InvalidClinicalError):
    """The free-text note names a side or an N stage that differs from the structured fields."""

    code = "note_contradicts_fields"


class NoteTooLongError(InvalidClinicalError):
    """The note is longer than the text encoder reads (it is refused, never cut)."""

    code = "note_too_long"


class DatasetError(InputError):
    """A training or evaluation data set is malformed (CSV, folder layout)."""

    code = "invalid_dataset"


class PayloadTooLargeError(InputError):
    """An upload or archive exceeds the configured size limit."""

    code = "payload_too_large"


# --- output ------------------------------------------------------------------------------------
class StructureSetWriteError(LlmctvError):
    """An RTSTRUCT cannot be built from the given ROIs and referenced series (a bug upstream)."""

    code = "rtstruct_write_failed"


# --- model versions (the registry, model/registry) ----------------------------------------------
class UnknownModelVersionError(LlmctvError):
    """No registered model version of that name (``llmctv models``, ``/models``)."""

    code = "unknown_model_version"


class PromotionRefusedError(LlmctvError):
    """A model version may not be promoted: no PASS commissioning report and no override with a
    reason, or its files no longer match its model card."""

    code = "promotion_refused"


class NoPreviousVersionError(PromotionRefusedError):
    """A rollback with no earlier promoted version to return to."""

    code = "no_previous_version"
