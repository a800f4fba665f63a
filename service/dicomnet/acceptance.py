"""What the gateway accepts from a DICOM peer, whichever way it arrives: C-STORE or STOW-RS.

One instance goes through the same three steps in the listener
(:mod:`service.dicomnet.listener`) and in STOW-RS (:mod:`service.dicomweb`):

1. :func:`describe_dataset` reads its identifying attributes and checks them, with the rules of
   the listener's :func:`service.dicomnet.store_request.describe_store`: UIDs usable as path
   components, SOPClassUID and SOPInstanceUID equal to what the transport announced (the
   C-STORE request, or the Part 10 file meta), Modality matching the SOP class
   (:data:`MODALITY_OF_CLASS`);
2. :func:`store_described` stores it atomically (:func:`service.dicomnet.storage.store_instance`);
3. the caller records it with its :class:`~service.dicomnet.assembly.SeriesAssembler`, which
   reports the series once quiet for the series timeout, to the order desk.

A C-STORE's SOP class and transfer syntax were already negotiated by presentation contexts;
STOW-RS has none, so :func:`check_offer` applies the same lists to the file meta.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, RTStructureSetStorage

from model.dicom.series import PARSE_ERRORS
from model.errors import DicomError, UnreadableDicomError
from service.dicomnet.assembly import ReceivedInstance, printable
from service.dicomnet.errors import (
    DicomStorageError,
    IncompleteInstanceError,
    ModalityMismatchError,
    SopClassMismatchError,
)
from service.dicomnet.storage import check_uid, record_refusal, store_instance

logger = logging.getLogger(__name__)

#: Storage SOP classes accepted: the CT slices to contour and structure sets.
#: The Modality each storage SOP class must carry (PS3.3 CT Image and RT Structure Set IODs).
MODALITY_OF_CLASS: dict[str, str] = {CTImageStorage: "CT", RTStructureSetStorage: "RTSTRUCT"}
ACCEPTED_SOP_CLASSES: tuple[str, ...] = tuple(MODALITY_OF_CLASS)


class UnsupportedSopClassError(DicomError):
    """An instance of a SOP class that is not accepted (STOW-RS; C-STORE has no context)."""

    code = "dicom_sop_class_not_supported"


class UnsupportedTransferSyntaxError(DicomError):
    """An instance in a transfer syntax that is not accepted (STOW-RS)."""

    code = "dicom_transfer_syntax_not_supported"


class StudyMismatchError(IncompleteInstanceError):
    """A STOW-RS instance whose StudyInstanceUID differs from the one in the request URL."""

    code = "dicom_study_mismatch"


def _text(ds: Dataset, keyword: str) -> str:
    """A string attribute with padding removed ('' when missing)."""
    value = ds.get(keyword)
    return "" if value is None else str(value).strip("\0 ")


def describe_dataset(
    ds: Dataset, *, announced_sop: str, announced_class: str, calling_ae: str
) -> ReceivedInstance:
    """Read the identifying attributes of a received data set and check them.

    Parameters
    ----------
    ds
        The data set (decoded lazily: decoding errors are raised here).
    announced_sop, announced_class
        SOPInstanceUID and SOPClassUID as the transport announced them (C-STORE request's
        Affected SOP Instance / Class UID, or the file meta's Media Storage ones).
    calling_ae
        Who sent it (calling AE title, or the HTTP identity's name for STOW-RS).

    Returns
    -------
    ReceivedInstance
        With an empty ``path``: filled in by :func:`store_described`.

    Raises
    ------
    UnreadableDicomError, IncompleteInstanceError, SopClassMismatchError,
    ModalityMismatchError, InvalidUidError
        Each with a detail naming UIDs only.
    """
    try:
        sop_uid = _text(ds, "SOPInstanceUID")
        sop_class = _text(ds, "SOPClassUID")
        values = {k: _text(ds, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "Modality")}
        accession = _text(ds, "AccessionNumber") or None
        patient_id = _text(ds, "PatientID")
    except PARSE_ERRORS as exc:
        raise UnreadableDicomError(
            f"instance {announced_sop}: data set cannot be decoded ({type(exc).__name__})"
        ) from exc
    if sop_uid != announced_sop:
        raise IncompleteInstanceError(
            f"SOPInstanceUID {sop_uid!r} differs from the announced {announced_sop!r}"
        )
    if sop_class != announced_class:
        raise SopClassMismatchError(
            f"instance {announced_sop}: SOPClassUID {sop_class!r} differs from the announced"
            f" {announced_class!r}"
        )
    missing = [keyword for keyword, value in values.items() if not value]
    if missing:
        raise IncompleteInstanceError(f"instance {announced_sop} lacks {', '.join(missing)}")
    expected = MODALITY_OF_CLASS.get(sop_class)
    if expected is not None and values["Modality"] != expected:
        raise ModalityMismatchError(
            f"instance {announced_sop}: Modality '{printable(values['Modality'][:16])}' in a"
            f" {expected} object (SOP class {sop_class}); only {expected} is accepted",
            study_instance_uid=values["StudyInstanceUID"],
            accession_number=accession,
        )
    return ReceivedInstance(
        study_instance_uid=check_uid(values["StudyInstanceUID"], "StudyInstanceUID"),
        series_instance_uid=check_uid(values["SeriesInstanceUID"], "SeriesInstanceUID"),
        sop_instance_uid=check_uid(sop_uid, "SOPInstanceUID"),
        accession_number=accession,
        modality=values["Modality"],
        calling_ae=calling_ae,
        path=Path(),
        patient_id=patient_id,
    )


def check_offer(
    meta: FileMetaDataset, sop_classes: Collection[str], transfer_syntaxes: Collection[str]
) -> tuple[str, str]:
    """The (SOP instance, SOP class) UIDs a Part 10 file announces, when both lists accept it.

    Raises
    ------
    IncompleteInstanceError
        When the file meta lacks the Media Storage UIDs or the transfer syntax.
    UnsupportedSopClassError, UnsupportedTransferSyntaxError
        When the SOP class or transfer syntax is not in the lists.
    """
    sop_uid = _text(meta, "MediaStorageSOPInstanceUID")
    sop_class = _text(meta, "MediaStorageSOPClassUID")
    syntax = _text(meta, "TransferSyntaxUID")
    if not (sop_uid and sop_class and syntax):
        raise IncompleteInstanceError("the file meta lacks Media Storage UIDs or TransferSyntaxUID")
    if sop_class not in sop_classes:
        raise UnsupportedSopClassError(f"instance {sop_uid}: SOP class {sop_class} not accepted")
    if syntax not in transfer_syntaxes:
        raise UnsupportedTransferSyntaxError(
            f"instance {sop_uid}: transfer syntax {syntax} not accepted"
        )
    return sop_uid, sop_class


def store_described(root: Path, described: ReceivedInstance, data: bytes) -> ReceivedInstance:
    """Store a checked instance atomically; returns it with its final ``path``.

    Raises
    ------
    DicomStorageError
        When the file system refuses; no partial file remains.
    IdentityConflictError
        The series holds another patient's instances (the instance is kept aside).
    """
    path = store_instance(
        root,
        described.study_instance_uid,
        described.series_instance_uid,
        described.sop_instance_uid,
        data,
        patient_id=described.patient_id,
    )
    return replace(described, path=path)


def note_refusal(root: Path, exc: ModalityMismatchError) -> None:
    """Note a refused instance for its study, so a waiting order can say why (logged if not)."""
    try:
        record_refusal(root, exc.study_instance_uid, exc.code, exc.detail, exc.accession_number)
    except DicomStorageError as error:
        logger.warning("%s", error)
