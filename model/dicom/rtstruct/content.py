"""What an RT structure set is made of: ROI specifications and the writer's identity.

The coded values (defined terms) are in :mod:`model.dicom.rtstruct.coded_values`.

These validating classes hold no geometry beyond the ROI masks, which are indexed ``(k, j, i)``
on the grid of the referenced series (see :mod:`model.dicom.rtstruct`).
"""

from __future__ import annotations

import colorsys
import hashlib
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import numpy.typing as npt

from model.dicom.rtstruct.coded_values import RoiGenerationAlgorithm, RoiInterpretedType
from model.errors import ConfigurationError, StructureSetWriteError

#: Maximum lengths of the DICOM value representations used here.
LO_MAX, SH_MAX, ST_MAX = 64, 16, 1024


def roi_color(name: str) -> tuple[int, int, int]:
    """Deterministic, saturated display colour for an ROI name (same on every machine)."""
    digest = hashlib.sha256(name.strip().casefold().encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return (round(red * 255), round(green * 255), round(blue * 255))


@dataclass(frozen=True)
class RoiSpec:
    """One ROI to write.

    Parameters
    ----------
    name
        ROI Name (LO, 64 characters including the writer's ``roi_name_suffix``).
    mask
        ``(k, j, i)`` mask on the referenced grid: boolean, or integers that are all 0 or 1
        (stored as a boolean copy).
    interpreted_type
        RT ROI Interpreted Type.
    color
        ROI Display Color as 0-255 RGB; ``None`` picks :func:`roi_color` of ``name``.
    description
        ROI Description (ST), optional.
    generation_algorithm
        ROI Generation Algorithm.
    """

    name: str
    mask: npt.NDArray[np.bool_]
    interpreted_type: RoiInterpretedType = RoiInterpretedType.CTV
    color: tuple[int, int, int] | None = None
    description: str | None = None
    generation_algorithm: RoiGenerationAlgorithm = RoiGenerationAlgorithm.AUTOMATIC

    def __post_init__(self) -> None:
        check_text(self.name, "ROI name", LO_MAX, required=True, error=StructureSetWriteError)
        check_text(self.description, "ROI description", ST_MAX, error=StructureSetWriteError)
        object.__setattr__(self, "mask", _checked_mask(self.mask, self.name))
        object.__setattr__(self, "interpreted_type", RoiInterpretedType(self.interpreted_type))
        object.__setattr__(
            self, "generation_algorithm", RoiGenerationAlgorithm(self.generation_algorithm)
        )
        if self.color is not None:
            rgb = tuple(self.color)
            if len(rgb) != 3 or not all(_is_int(c) and 0 <= c <= 255 for c in rgb):
                raise StructureSetWriteError(f"ROI {self.name!r}: color must be 3 ints in 0-255")
            object.__setattr__(self, "color", tuple(int(c) for c in rgb))

    @property
    def display_color(self) -> tuple[int, int, int]:
        """The colour that is written."""
        return self.color if self.color is not None else roi_color(self.name)


@dataclass(frozen=True)
class WriterInfo:
    """Who wrote the structure set, and how it is labelled.

    Parameters
    ----------
    model_name
        Manufacturer's Model Name: the contouring model.
    software_versions
        Software Versions: e.g. the llmctv version and the checkpoint hash (each LO, 64).
    manufacturer
        Manufacturer.
    series_description
        Series Description; the default marks the contours as AI-generated.
    structure_set_label
        Structure Set Label (SH: 1 to 16 characters).
    structure_set_name, structure_set_description
        Optional Structure Set Name (LO) and Description (ST).
    roi_name_suffix
        Appended to every ROI name, e.g. ``" (AI)"``.
    institution_name, station_name, device_serial_number
        Optional General Equipment attributes.
    series_number, instance_number
        Series Number (``None``: empty) and Instance Number, 0 to 2**31 - 1.
    uid_prefix
        Root for the generated UIDs (``None``: pydicom's root).
    """

    model_name: str
    software_versions: tuple[str, ...]
    manufacturer: str = "llmctv"
    series_description: str = "AI-generated contours (llmctv) - review before use"
    structure_set_label: str = "AI contours"
    structure_set_name: str | None = None
    structure_set_description: str | None = (
        "Generated automatically by llmctv. Not reviewed: check every contour before use."
    )
    roi_name_suffix: str = ""
    institution_name: str | None = None
    station_name: str | None = None
    device_serial_number: str | None = None
    series_number: int | None = 1
    instance_number: int = 1
    uid_prefix: str | None = None

    def __post_init__(self) -> None:
        check_text(self.model_name, "model_name", LO_MAX, required=True)
        versions = tuple(self.software_versions)
        if not versions:
            raise ConfigurationError("software_versions needs at least the model version")
        for version in versions:
            check_text(version, "software_versions item", LO_MAX, required=True)
        object.__setattr__(self, "software_versions", versions)
        check_text(self.manufacturer, "manufacturer", LO_MAX, required=True)
        check_text(self.series_description, "series_description", LO_MAX, required=True)
        check_text(self.structure_set_label, "structure_set_label", SH_MAX, required=True)
        check_text(self.structure_set_name, "structure_set_name", LO_MAX)
        check_text(self.structure_set_description, "structure_set_description", ST_MAX)
        check_text(self.roi_name_suffix, "roi_name_suffix", LO_MAX)
        check_text(self.institution_name, "institution_name", LO_MAX)
        check_text(self.station_name, "station_name", SH_MAX)
        check_text(self.device_serial_number, "device_serial_number", LO_MAX)
        for number in (self.series_number, self.instance_number):
            if number is not None and not (_is_int(number) and 0 <= number < 2**31):
                raise ConfigurationError("series and instance numbers must be ints in 0-2**31")
        if self.uid_prefix is not None and not (
            self.uid_prefix.endswith(".") and len(self.uid_prefix) <= 54
        ):
            raise ConfigurationError("uid_prefix must end with '.' and have at most 54 chars")


def check_text(
    value: str | None,
    what: str,
    max_length: int,
    *,
    required: bool = False,
    error: type[Exception] = ConfigurationError,
) -> None:
    """Validate a DICOM string value (no backslash, no control characters, length)."""
    if value is None and not required:
        return
    if not isinstance(value, str) or (required and not value.strip()):
        raise error(f"{what} must be a non-empty string")
    if len(value) > max_length:
        raise error(f"{what} has {len(value)} characters; at most {max_length} are allowed")
    if "\\" in value or any(ord(c) < 32 and c not in "\r\n" for c in value):
        raise error(f"{what} contains a backslash or control character")
    if max_length <= LO_MAX and any(c in "\r\n" for c in value):
        raise error(f"{what} contains a line break")


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _checked_mask(mask: npt.ArrayLike, name: str) -> npt.NDArray[np.bool_]:
    array = np.asarray(mask)
    if array.ndim != 3:
        raise StructureSetWriteError(
            f"ROI {name!r}: mask must be 3-D (k, j, i), not {array.ndim}-D"
        )
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.integer) and not np.any((array != 0) & (array != 1)):
        return array.astype(bool)
    raise StructureSetWriteError(f"ROI {name!r}: mask must be boolean (or 0/1 integers)")
