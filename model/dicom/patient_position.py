"""Patient position: what the direction cosines and the PatientPosition tag (0018,5100) say.

Coordinates: DICOM patient LPS. A transverse CT stores its rows along ImageOrientationPatient's
row cosines and its columns along the column cosines. The four positions this service accepts
store them, by convention of the scanners, as::

    HFS  row +x  column +y        FFS  row -x  column +y
    HFP  row -x  column -y        FFP  row +x  column -y

(rounded to the nearest axis). Whatever the storage, the network sees every series resampled
onto one LPS-canonical grid (:class:`model.imaging.preprocessing.PreprocessConfig`,
``orientation="lps"``), so the same anatomy stored in any of the four gives the same contours
in patient coordinates. What the cosines cannot tell is how the patient lay on the couch:
that is the PatientPosition tag. Hence:

* rows or columns along the patient's anterior-posterior axis in the image plane (a
  decubitus storage), or a decubitus PatientPosition (``HFDL``, ``HFDR``, ``FFDL``, ``FFDR``),
  are refused with ``unsupported_patient_position`` before a job is queued;
* a PatientPosition that contradicts the cosines, or none at all, is a warning naming both;
* a prone PatientPosition (``HFP``, ``FFP``: anatomy the model was not trained on, the breast
  hangs) is a warning naming the position, or refused where the policy says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from model.errors import UnsupportedPatientPositionError

FloatArray = npt.NDArray[np.float64]


class PatientPosition(StrEnum):
    """Defined terms of PatientPosition (0018,5100) for a patient on the couch."""

    HFS = "HFS"
    FFS = "FFS"
    HFP = "HFP"
    FFP = "FFP"
    HFDL = "HFDL"
    HFDR = "HFDR"
    FFDL = "FFDL"
    FFDR = "FFDR"

    @property
    def prone(self) -> bool:
        """Lying face down."""
        return self in (PatientPosition.HFP, PatientPosition.FFP)

    @property
    def decubitus(self) -> bool:
        """Lying on a side."""
        return self.value[2] == "D"


#: Positions whose anatomy the shipped models were trained on.
TRAINED_POSITIONS = frozenset({PatientPosition.HFS, PatientPosition.FFS})

#: (sign of the row cosine's x, sign of the column cosine's y) -> the position it stores.
_BY_SIGNS = {
    (1, 1): PatientPosition.HFS,
    (-1, 1): PatientPosition.FFS,
    (-1, -1): PatientPosition.HFP,
    (1, -1): PatientPosition.FFP,
}


def position_from_cosines(row: FloatArray, col: FloatArray) -> PatientPosition:
    """The position whose storage convention the (axial) row and column cosines follow.

    Raises
    ------
    UnsupportedPatientPositionError
        Rows along the patient's y axis (anterior-posterior) or columns along x: a decubitus
        storage.
    """
    row_axis, col_axis = int(np.argmax(np.abs(row))), int(np.argmax(np.abs(col)))
    if (row_axis, col_axis) != (0, 1):
        raise UnsupportedPatientPositionError(
            "the image rows run along the patient's "
            f"{'LPS'[row_axis]} axis and the columns along {'LPS'[col_axis]}: a decubitus "
            "(lateral) storage; only head- or feet-first supine or prone series are contoured"
        )
    signs = (1 if row[0] > 0 else -1, 1 if col[1] > 0 else -1)
    return _BY_SIGNS[signs]


def tagged_position(slices: Sequence[Dataset]) -> PatientPosition | None:
    """The PatientPosition the slices state (``None`` when missing or not a defined term).

    Raises
    ------
    UnsupportedPatientPositionError
        A decubitus position.
    """
    values = {str(ds.get("PatientPosition") or "").strip().upper() for ds in slices}
    values.discard("")
    if len(values) != 1:
        return None
    (value,) = values
    try:
        position = PatientPosition(value)
    except ValueError:
        return None
    if position.decubitus:
        raise UnsupportedPatientPositionError(
            f"PatientPosition {position.value} (decubitus): only head- or feet-first supine "
            "or prone series are contoured"
        )
    return position


def position_findings(
    slices: Sequence[Dataset],
    row: FloatArray,
    col: FloatArray,
    *,
    refuse_untrained: bool = False,
) -> list[str]:
    """Warnings about the patient position of one axial series (none for a plain HFS/FFS).

    Raises
    ------
    UnsupportedPatientPositionError
        Decubitus (cosines or tag); a position outside :data:`TRAINED_POSITIONS` when
        ``refuse_untrained``.
    """
    stored = position_from_cosines(row, col)
    tagged = tagged_position(slices)
    found: list[str] = []
    if tagged is None:
        found.append(
            f"PatientPosition is missing or not a defined term; the direction cosines follow "
            f"{stored.value} storage, and the anatomy is assumed supine"
        )
    elif tagged is not stored:
        found.append(
            f"PatientPosition {tagged.value} contradicts the direction cosines "
            f"({stored.value} storage); contours follow the cosines (ImageOrientationPatient)"
        )
    position = tagged or stored
    if tagged is not None and position not in TRAINED_POSITIONS:
        if refuse_untrained:
            raise UnsupportedPatientPositionError(
                f"PatientPosition {position.value}: the model was trained on supine patients "
                "only, and this site refuses other positions"
            )
        found.append(
            f"PatientPosition {position.value}: the model was trained on supine patients "
            "only; review every structure with care (breast shape and position differ)"
        )
    return found
