"""What the listener reads from a C-STORE request and its data set, and the checks on it.

Only the attributes that file and route an instance are read (UIDs, Modality, Accession
Number); each refusal is an error of :mod:`service.dicomnet.errors` that the listener maps to a
C-STORE status.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, RTStructureSetStorage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from model.dicom.series import PARSE_ERRORS
from model.errors import UnreadableDicomError
from service.dicomnet.assembly import ReceivedInstance, printable
from service.dicomnet.errors import (
    IncompleteInstanceError,
    ModalityMismatchError,
    SopClassMismatchError,
)
from service.dicomnet.storage import check_uid

#: The Modality each storage SOP class must carry (PS3.3 CT Image and RT Structure Set IODs).
MODALITY_OF_CLASS: dict[str, str] = {CTImageStorage: "CT", RTStructureSetStorage: "RTSTRUCT"}


def _text(ds: Dataset, keyword: str) -> str:
    """A string attribute with padding removed ('' when missing)."""
    value = ds.get(keyword)
    return "" if value is None else str(value).strip("\0 ")


def describe_store(event: Event) -> ReceivedInstance:
    """Read the identifying attributes of the C-STORE data set and check them.

    The file path is filled in later, by the caller, once the instance is stored.
    """
    request = cast(C_STORE, event.request)
    request_sop = str(request.AffectedSOPInstanceUID)
    request_class = str(request.AffectedSOPClassUID)
    try:
        ds = event.dataset
        sop_uid = _text(ds, "SOPInstanceUID")
        sop_class = _text(ds, "SOPClassUID")
        values = {k: _text(ds, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "Modality")}
        accession = _text(ds, "AccessionNumber") or None
    except PARSE_ERRORS as exc:
        raise UnreadableDicomError(
            f"instance {request_sop}: data set cannot be decoded ({type(exc).__name__})"
        ) from exc
    if sop_uid != request_sop:
        raise IncompleteInstanceError(
            f"SOPInstanceUID {sop_uid!r} differs from the request's {request_sop!r}"
        )
    if sop_class != request_class:
        raise SopClassMismatchError(
            f"instance {request_sop}: SOPClassUID {sop_class!r} differs from the request's"
            f" {request_class!r}"
        )
    missing = [keyword for keyword, value in values.items() if not value]
    if missing:
        raise IncompleteInstanceError(f"instance {request_sop} lacks {', '.join(missing)}")
    expected = MODALITY_OF_CLASS.get(sop_class)
    if expected is not None and values["Modality"] != expected:
        raise ModalityMismatchError(
            f"instance {request_sop}: Modality '{printable(values['Modality'][:16])}' in a"
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
        calling_ae=str(event.assoc.requestor.ae_title).strip(),
        path=Path(),
    )
