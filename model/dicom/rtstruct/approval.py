"""The Approval module of an RT Structure Set: a reviewer's decision, as a new SOP Instance.

:mod:`model.dicom.rtstruct` writes every structure set ``UNAPPROVED``. When a reviewer
approves it, :func:`write_approved_copy` writes the same structure set as a new instance
(new SOPInstanceUID, same series, the same references to the CT and the same contours, LPS mm
unchanged) whose Approval module says ``APPROVED`` with ReviewerName, ReviewDate and
ReviewTime (PS3.3 C.8.8.16). The unapproved file is left as it is.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import RTStructureSetStorage, generate_uid

from model.errors import StructureSetError, UnreadableDicomError

#: Characters a PN component may not hold (component and group separators, controls).
_NOT_IN_NAME = re.compile(r"[\\^=\x00-\x1f\x7f]")
_PN_COMPONENT_MAX = 64


@dataclass(frozen=True)
class Approval:
    """Who approved a structure set, and when (local time of the reviewing site)."""

    reviewer: str
    when: datetime


def reviewer_name(name: str) -> str:
    """``name`` as the family-name component of a DICOM PN value (separators removed)."""
    cleaned = _NOT_IN_NAME.sub(" ", name).strip()
    return cleaned[:_PN_COMPONENT_MAX] or "unknown"


def approved_dataset(ds: pydicom.Dataset, approval: Approval) -> pydicom.Dataset:
    """A copy of the RTSTRUCT ``ds`` as a new, approved SOP Instance.

    Raises
    ------
    StructureSetError
        ``ds`` is not an RT Structure Set.
    """
    if str(ds.get("SOPClassUID", "")) != RTStructureSetStorage:
        raise StructureSetError("only an RT Structure Set can be approved here")
    copy = pydicom.Dataset(ds)
    copy.file_meta = pydicom.dataset.FileMetaDataset(ds.file_meta)
    uid = generate_uid()
    copy.SOPInstanceUID = uid
    copy.file_meta.MediaStorageSOPInstanceUID = uid
    date, clock = approval.when.strftime("%Y%m%d"), approval.when.strftime("%H%M%S")
    copy.InstanceCreationDate, copy.InstanceCreationTime = date, clock
    copy.ApprovalStatus = "APPROVED"
    copy.ReviewDate, copy.ReviewTime = date, clock
    copy.ReviewerName = reviewer_name(approval.reviewer)
    return copy


def write_approved_copy(source: Path, target: Path, approval: Approval) -> str:
    """Write the approved instance of the RTSTRUCT ``source`` to ``target`` (atomically).

    Returns
    -------
    str
        The SOPInstanceUID of the approved instance.

    Raises
    ------
    UnreadableDicomError
        ``source`` cannot be read.
    StructureSetError
        ``source`` is not an RT Structure Set.
    """
    try:
        ds = pydicom.dcmread(source)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise UnreadableDicomError("the structure set to approve is not readable DICOM") from exc
    approved = approved_dataset(ds, approval)
    partial = target.with_name(target.name + ".partial")
    try:
        approved.save_as(partial, enforce_file_format=True)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return str(approved.SOPInstanceUID)


def rejected_bytes(source: Path, reviewer: str, when: datetime) -> bytes:
    """The RTSTRUCT ``source`` as a new instance marked ``REJECTED`` (PS3.3 C.8.8.16), as bytes.

    For a reviewer who fetches a rejected structure set: the file itself says it must not be
    used. Nothing is stored.

    Raises
    ------
    UnreadableDicomError, StructureSetError
        As :func:`write_approved_copy`.
    """
    try:
        ds = pydicom.dcmread(source)
    except (InvalidDicomError, OSError) as exc:
        raise UnreadableDicomError("the structure set cannot be read") from exc
    marked = approved_dataset(ds, Approval(reviewer, when))
    marked.ApprovalStatus = "REJECTED"
    out = io.BytesIO()
    marked.save_as(out, enforce_file_format=True)
    return out.getvalue()
