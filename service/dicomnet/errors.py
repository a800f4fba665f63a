"""Errors of the DICOM networking layer.

Every class carries a stable ``code`` (part of the public contract, never renamed) in the
style of :mod:`model.errors`. Details name instances and series by UID and peers by AE title
and address, never by patient name or ID.
"""

from __future__ import annotations

from typing import Literal

from model.errors import ConfigurationError, DicomError, LlmctvError

#: Why a send failed, in words a person can act on.
SendFailure = Literal[
    "association_rejected",
    "association_aborted",
    "connection_failed",
    "no_presentation_context",
    "status_failure",
    "unreadable_file",
    "tls_failed",
]


class InvalidDestinationError(ConfigurationError):
    """A ``NAME=AET@host:port`` destination setting is malformed."""

    code = "invalid_dicom_destination"


class DicomTlsError(ConfigurationError):
    """DICOM TLS cannot be set up: a certificate, key or CA file is missing, unreadable, not
    PEM, or the key does not belong to the certificate; or the TLS settings contradict each
    other (e.g. client certificates required without a CA to verify them). The listener
    refuses to start; a send to a TLS destination fails at once."""

    code = "dicom_tls_invalid"


class UnknownDestinationError(LlmctvError):
    """A destination name that is not configured in ``dicom_destinations``."""

    code = "unknown_destination"


class InvalidUidError(DicomError):
    """A UID that is not only digits and dots (refused before it reaches a path)."""

    code = "invalid_dicom_uid"


class IncompleteInstanceError(DicomError):
    """A received instance lacks an attribute needed to file it, or contradicts its request."""

    code = "incomplete_dicom_instance"


class IdentityConflictError(IncompleteInstanceError):
    """An instance whose series (study and series UIDs) already holds another patient's
    instances: a reused or forged UID. Never merged: it is kept aside (quarantine) for an
    administrator and refused (C-STORE status 0xC000)."""

    code = "dicom_identity_conflict"


class InstanceConflictError(IdentityConflictError):
    """An instance whose SOPInstanceUID is already stored in its series with other content (a
    reused UID: another image under the same identifier). Never overwritten: it is kept aside
    (quarantine) and refused like an identity conflict (C-STORE status 0xC000, STOW-RS
    FailureReason 0xC000)."""

    code = "dicom_instance_conflict"


class SopClassMismatchError(IncompleteInstanceError):
    """A received data set whose SOPClassUID differs from the C-STORE request's."""

    code = "dicom_sop_class_mismatch"


class ModalityMismatchError(SopClassMismatchError):
    """A received instance whose Modality contradicts its SOP class (e.g. MR in a CT object).

    Refused at once (C-STORE status 0xA900) rather than stored as a series that no order
    could ever use; the listener notes the refusal for the study
    (:func:`service.dicomnet.storage.record_refusal`) so a waiting order can say why.
    """

    code = "dicom_modality_mismatch"

    def __init__(
        self, detail: str, *, study_instance_uid: str, accession_number: str | None
    ) -> None:
        super().__init__(detail)
        self.study_instance_uid = study_instance_uid
        self.accession_number = accession_number


class DicomStorageError(LlmctvError):
    """A received instance could not be written to disk (full, read-only, permissions)."""

    code = "dicom_storage_failed"


class DicomListenerError(LlmctvError):
    """The DICOM listener cannot start (port in use, bad address)."""

    code = "dicom_listener_failed"


class DicomSendError(LlmctvError):
    """A C-STORE to a destination failed after all attempts.

    Parameters
    ----------
    detail
        Human-readable reason, e.g. ``association rejected by PACS@10.0.0.5:104: ...``.
    failure
        The kind of the last failure.
    attempts
        How many associations were tried.
    status
        The last non-success DIMSE status, where one was received.
    """

    code = "dicom_send_failed"

    def __init__(
        self,
        detail: str,
        *,
        failure: SendFailure,
        attempts: int,
        status: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.failure: SendFailure = failure
        self.attempts = attempts
        self.status = status
