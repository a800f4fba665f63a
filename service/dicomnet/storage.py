"""Atomic storage of received DICOM instances.

Layout: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

An instance is written to a hidden temporary file (``.<random>.tmp``) in its final folder, so
on the same file system, flushed and fsynced, then renamed over its final name with
:func:`os.replace`, and the folder is fsynced. A reader therefore sees either no file or the
complete file under the final name, never a partial one; an instance received twice replaces
the earlier copy atomically. UIDs are checked (digits and dots only, at most 64 characters)
before they are used as path components.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pydicom

from model.dicom.series import PARSE_ERRORS
from model.files import TEMP_SUFFIX, write_atomically
from service.dicomnet.errors import (
    DicomStorageError,
    IdentityConflictError,
    InstanceConflictError,
    InvalidUidError,
)

logger = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_UID_MAX = 64
INSTANCE_SUFFIX = ".dcm"
#: A study's note of instances refused for a reason its orders should report.
REFUSAL_NOTE = "refused.json"
#: Touched at the storage root whenever a manifest or refusal note is written.
CHANGE_MARKER = ".manifests"
#: The Pixel Data tag, compared as decoded values rather than bytes.
PIXEL_DATA = 0x7FE00010
#: What reading or decoding a stored or received instance may raise (then: not the same).
_READ_ERRORS = (*PARSE_ERRORS, RuntimeError, NotImplementedError)
#: Beside the received tree: per series, a hash of the PatientID of its first instance.
IDENTITY = "identity"
#: Beside the received tree: instances refused for an identity conflict, kept for admins.
QUARANTINE = "quarantine"


def check_uid(value: str, what: str) -> str:
    """Return ``value`` when it is a UID usable as a path component.

    Parameters
    ----------
    value
        The UID (trailing NUL or space padding is removed first).
    what
        The attribute name, for the error message.

    Raises
    ------
    InvalidUidError
        When the value is empty, longer than 64 characters, or not digits and dots.
    """
    uid = value.rstrip("\0 ")
    if len(uid) > _UID_MAX or not _UID.match(uid):
        shown = uid[:80].encode("ascii", "backslashreplace").decode("ascii")
        raise InvalidUidError(f"{what} {shown!r} is not a UID (digits and dots, at most 64)")
    return uid


def instance_path(root: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """The final path of an instance (UIDs are checked, nothing is created).

    Raises
    ------
    InvalidUidError
        When one of the UIDs is not digits and dots.
    """
    study = check_uid(study_uid, "StudyInstanceUID")
    series = check_uid(series_uid, "SeriesInstanceUID")
    sop = check_uid(sop_uid, "SOPInstanceUID")
    return root / study / series / f"{sop}{INSTANCE_SUFFIX}"


def store_instance(
    root: Path,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    data: bytes,
    *,
    patient_id: str = "",
) -> Path:
    """Store one encoded instance atomically and return its final path.

    The first instance of a series leaves the patient's identity (a hash of PatientID,
    :func:`identity_marker`); an instance of another patient for the same study and
    series UIDs is never merged: it is kept aside under ``<root>/../quarantine/`` and refused
    (:class:`IdentityConflictError`), so two patients can never meet in one series.

    Parameters
    ----------
    root
        The storage root (created when missing).
    study_uid, series_uid, sop_uid
        The instance's UIDs; they name the folders and the file.
    data
        The complete DICOM Part 10 file (preamble, file meta, data set).

    Returns
    -------
    Path
        ``<root>/<study>/<series>/<sop>.dcm``.

    Raises
    ------
    InvalidUidError
        When a UID is not digits and dots; nothing is written.
    DicomStorageError
        When the file system refuses (full disk, permissions); no partial file remains.
    IdentityConflictError
        The series folder holds another patient's instances.
    InstanceConflictError
        The SOPInstanceUID is already stored with other content (a reused UID). The same
        instance sent again (same content, in any transfer syntax) is stored again.
    """
    final = instance_path(root, study_uid, series_uid, sop_uid)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _check_identity(root, final, patient_id, data)
        if final.exists():
            _check_same_content(root, final, data)
        write_atomically(final, data)
    except OSError as exc:
        raise DicomStorageError(
            f"cannot store instance {final.stem} of series {final.parent.name}: "
            f"{exc.strerror or type(exc).__name__}"
        ) from exc
    return final


def _identity_of(patient_id: str) -> str:
    return hashlib.sha256(patient_id.strip().encode()).hexdigest()


def identity_marker(root: Path, study: str, series: str) -> Path:
    """Where the patient of a received series is recorded: ``<root>/../identity/<st>/<se>``.

    Outside the series folder, which holds instances only.
    """
    return root.parent / IDENTITY / study / series


def _check_identity(root: Path, final: Path, patient_id: str, data: bytes) -> None:
    """Record the series' patient on its first instance; quarantine another patient's."""
    marker = identity_marker(root, final.parent.parent.name, final.parent.name)
    identity = _identity_of(patient_id)
    try:
        known = marker.read_text().strip()
    except FileNotFoundError:
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(marker, identity.encode())
        return
    if known == identity:
        return
    _quarantine(root, final, data)
    raise IdentityConflictError(
        f"instance {final.stem}: series {final.parent.name} of study {final.parent.parent.name} "
        "already holds another patient's instances; kept aside (quarantine), not merged"
    )


def _quarantine(root: Path, final: Path, data: bytes) -> None:
    """Keep a refused instance aside for an administrator: ``<root>/../quarantine/``."""
    kept = root.parent / QUARANTINE / f"{time.time_ns()}-{final.name}"
    kept.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(kept, data)


def _check_same_content(root: Path, final: Path, data: bytes) -> None:
    """Refuse (and keep aside) another object stored under an existing SOPInstanceUID."""
    if same_instance_content(final.read_bytes(), data):
        return
    _quarantine(root, final, data)
    raise InstanceConflictError(
        f"instance {final.stem} of series {final.parent.name} is already stored with other "
        "content (a reused SOPInstanceUID); kept aside (quarantine), not overwritten"
    )


def same_instance_content(stored: bytes, received: bytes) -> bool:
    """Whether two encodings hold the same instance: the same attributes (file meta aside)
    and the same pixel values, whatever the transfer syntax. Unreadable means different."""
    if stored == received:
        return True
    try:
        a = pydicom.dcmread(io.BytesIO(stored))
        b = pydicom.dcmread(io.BytesIO(received))
    except _READ_ERRORS:
        return False
    if _attributes(a) != _attributes(b):
        return False
    if ("PixelData" in a) != ("PixelData" in b):
        return False
    if "PixelData" not in a or a.PixelData == b.PixelData:
        return True
    try:
        return bool(np.array_equal(a.pixel_array, b.pixel_array))
    except _READ_ERRORS:
        return False


def _attributes(ds: pydicom.Dataset) -> dict[int, object]:
    """Every element but the pixel data, by tag, with values as read (encoding aside)."""
    return {int(e.tag): e.value for e in ds if e.tag != PIXEL_DATA}


def quarantined(root: Path) -> list[Path]:
    """Instances kept aside for an administrator (identity conflicts), oldest first."""
    folder = root.parent / QUARANTINE
    return sorted(folder.glob("*.dcm")) if folder.is_dir() else []


def touch_change_marker(root: Path) -> None:
    """Tell readers in any process that manifests or refusal notes under ``root`` changed."""
    write_atomically(root / CHANGE_MARKER, str(time.time()).encode())


def record_refusal(
    root: Path, study_uid: str, code: str, detail: str, accession_number: str | None
) -> None:
    """Note that instances of a study were refused (``<root>/<study>/refused.json``).

    The order desk fails waiting orders of the study with ``code`` when nothing usable
    arrived. ``detail`` names UIDs only. A study UID that is not a UID is not noted.

    Raises
    ------
    DicomStorageError
        When the note cannot be written.
    """
    try:
        folder = root / check_uid(study_uid, "StudyInstanceUID")
    except InvalidUidError:
        return
    note = {"code": code, "detail": detail, "accession_number": accession_number}
    note["refused_at"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / REFUSAL_NOTE, json.dumps(note).encode())
        touch_change_marker(root)
    except OSError as exc:
        raise DicomStorageError(f"cannot note a refusal: {exc.strerror}") from exc


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporary files left by a crash during a write; returns how many were removed.

    Only hidden ``.*.tmp`` files in series folders, study folders (refusal notes) and the
    root (the change marker) are touched. Call it before the listener accepts associations,
    never while it is writing.
    """
    removed = 0
    temps = [t for pattern in ("*/*/", "*/", "") for t in root.glob(f"{pattern}.*{TEMP_SUFFIX}")]
    for temp in temps:
        try:
            temp.unlink()
        except OSError as exc:
            logger.warning("cannot remove stale temporary %s: %s", temp.name, exc.strerror)
            continue
        removed += 1
    if removed:
        logger.warning("removed %d stale temporary file(s) under the DICOM storage", removed)
    return removed
