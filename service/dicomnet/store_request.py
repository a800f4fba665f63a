"""What the listener reads from a C-STORE request and its data set, and the checks on it.

Only the attributes that file and route an instance are read (UIDs, Modality, Accession
Number); each refusal is an error of :mod:`service.dicomnet.errors` that the listener maps to a
C-STORE status.
"""

from __future__ import annotations

from typing import BinaryIO, cast

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from model.dicom.deflate import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, check_inflated_size
from model.dicom.series import PARSE_ERRORS
from model.errors import UnreadableDicomError
from service.dicomnet.acceptance import MODALITY_OF_CLASS, describe_dataset
from service.dicomnet.assembly import ReceivedInstance

__all__ = ["MODALITY_OF_CLASS", "describe_store"]


def describe_store(event: Event, max_instance_bytes: int) -> ReceivedInstance:
    """Read the identifying attributes of the C-STORE data set and check them.

    The checks are those of :func:`service.dicomnet.acceptance.describe_dataset` (shared with
    STOW-RS), against the request's Affected SOP Instance and Class UIDs. The file path is
    filled in later, by the caller, once the instance is stored. A deflated data set is first
    inflated in bounded chunks and refused past ``max_instance_bytes`` inflated bytes (a
    decompression bomb), before pynetdicom decodes it whole.
    """
    request = cast(C_STORE, event.request)
    if event.context.transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        stream = cast(BinaryIO, request.DataSet)
        stream.seek(0)
        check_inflated_size(
            stream, max_instance_bytes, f"instance {request.AffectedSOPInstanceUID}"
        )
        stream.seek(0)
    try:
        ds = event.dataset
    except PARSE_ERRORS as exc:
        raise UnreadableDicomError(
            f"instance {request.AffectedSOPInstanceUID}: data set cannot be decoded "
            f"({type(exc).__name__})"
        ) from exc
    return describe_dataset(
        ds,
        announced_sop=str(request.AffectedSOPInstanceUID),
        announced_class=str(request.AffectedSOPClassUID),
        calling_ae=str(event.assoc.requestor.ae_title).strip(),
    )
