"""Reading one CT series from DICOM files into a :class:`~model.imaging.geometry.Volume`.

Coordinates: DICOM patient LPS in millimetres. The returned array is indexed ``(k, j, i)`` =
(slice, row, column), with ``k`` growing along the slice normal ``row x column`` of
ImageOrientationPatient; the grid origin is the ImagePositionPatient of slice ``k = 0``.
Arrays are never flipped: the grid's direction matrix carries the orientation.

Every refusal raises one of the :mod:`model.errors` DICOM errors. Logs and error details name
files by their position in the (sorted) input list and series by UID, never by path, patient
name or patient ID.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from model.dicom.ingest_policy import DEFAULT_POLICY, IngestPolicy
from model.dicom.series_geometry import build_grid
from model.errors import (
    DicomError,
    MixedSeriesError,
    NoSeriesError,
    NotCtError,
    TooFewSlicesError,
    UnreadableDicomError,
    UnsupportedTransferSyntaxError,
)
from model.imaging.geometry import Volume

logger = logging.getLogger(__name__)

#: Exceptions pydicom may raise while parsing a damaged or foreign file.
PARSE_ERRORS = (
    InvalidDicomError,
    OSError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    NotImplementedError,
    struct.error,
)
_DEFER_SIZE = "64 KB"
_NATIVE_BITS = (8, 16, 32)


@dataclass(frozen=True)
class CtSeries:
    """One CT series: its HU volume and its DICOM headers.

    Attributes
    ----------
    volume
        float32 Hounsfield units on an LPS grid, array ``(k, j, i)``.
    datasets
        The headers of the slices in ``k`` order, without PixelData and without top-level
        values of over 64 KB (large private blobs): they never refer back to the input files.
    warnings
        Findings about the patient position (:mod:`model.dicom.patient_position`).
    """

    volume: Volume
    datasets: tuple[Dataset, ...]
    warnings: tuple[str, ...] = ()

    @property
    def series_instance_uid(self) -> str:
        """SeriesInstanceUID shared by all slices."""
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        """StudyInstanceUID shared by all slices."""
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        """FrameOfReferenceUID shared by all slices (the LPS frame of the grid)."""
        return str(self.datasets[0].FrameOfReferenceUID)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """SOPInstanceUID of each slice, in ``k`` order."""
        return tuple(str(ds.SOPInstanceUID) for ds in self.datasets)


def read_ct_series(
    source: Path | Iterable[Path],
    *,
    series_instance_uid: str | None = None,
    policy: IngestPolicy = DEFAULT_POLICY,
) -> CtSeries:
    """Read and validate one CT series.

    Parameters
    ----------
    source
        A folder (searched recursively), one file, or several files.
    series_instance_uid
        The series to read where several arrive; by default the only CT series.
    policy
        Acceptance tolerances.

    Returns
    -------
    CtSeries
        The volume in HU on an LPS grid (array ``(k, j, i)``, ``k`` along the slice normal)
        and the slice headers in ``k`` order.

    Raises
    ------
    NoSeriesError, NotCtError, MixedSeriesError, ObliqueSeriesError,
    InconsistentGeometryError, MissingSlicesError, TooFewSlicesError,
    UnreadableDicomError, UnsupportedTransferSyntaxError, DicomError
    """
    accepted = _accepted_slices(source, series_instance_uid, policy)
    slices = accepted.slices
    geometry = build_grid(slices, policy)
    grid = geometry.grid
    ordered = [slices[n] for n in geometry.order]
    array = _decode_volume(ordered, grid.shape)
    for ds in ordered:
        _strip_bulk_data(ds)
    logger.info(
        "read CT series %s: %d slices of %dx%d",
        ordered[0].SeriesInstanceUID,
        grid.shape[0],
        grid.shape[1],
        grid.shape[2],
    )
    return CtSeries(
        volume=Volume(array=array, grid=grid),
        datasets=tuple(ordered),
        warnings=(*accepted.notes, *geometry.position_warnings),
    )


@dataclass(frozen=True)
class SeriesSummary:
    """What the headers of an accepted CT series say, before any pixel is decoded.

    Attributes
    ----------
    series_instance_uid, study_instance_uid
        The chosen series and its study.
    shape
        ``(k, j, i)``: slices, rows, columns.
    spacing
        ``(slice, row, column)`` spacing in mm.
    skipped_files
        Input files skipped (not DICOM, or a DICOMDIR).
    warnings
        Findings about the patient position (:mod:`model.dicom.patient_position`).
    """

    series_instance_uid: str
    study_instance_uid: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    skipped_files: int
    warnings: tuple[str, ...] = ()


def inspect_ct_series(
    source: Path | Iterable[Path],
    *,
    series_instance_uid: str | None = None,
    policy: IngestPolicy = DEFAULT_POLICY,
) -> SeriesSummary:
    """Run every check of :func:`read_ct_series` that needs headers only (fast, no pixels).

    Raises the same errors as :func:`read_ct_series`, except those found while decoding pixel
    data (a file truncated inside its pixel data passes here and fails at reading).
    """
    accepted = _accepted_slices(source, series_instance_uid, policy)
    slices = accepted.slices
    geometry = build_grid(slices, policy)
    grid = geometry.grid
    return SeriesSummary(
        series_instance_uid=str(slices[0].SeriesInstanceUID),
        study_instance_uid=str(slices[0].StudyInstanceUID),
        shape=grid.shape,
        spacing=tuple(float(v) for v in grid.spacing),  # type: ignore[arg-type]
        skipped_files=accepted.skipped_files,
        warnings=(*accepted.notes, *geometry.position_warnings),
    )


@dataclass(frozen=True)
class AcceptedSlices:
    """The chosen series' slice headers after every header check, the files skipped, and
    what was ignored inside the series (warnings)."""

    slices: list[Dataset]
    skipped_files: int
    notes: tuple[str, ...]


def _accepted_slices(
    source: Path | Iterable[Path], series_uid: str | None, policy: IngestPolicy
) -> AcceptedSlices:
    """The chosen series' slice headers after every header check, and the files skipped."""
    paths = _list_files(source)
    headers = _read_headers(paths, policy)
    images, notes = _without_non_images(_choose_series(headers, series_uid))
    slices = _check_series(images)
    if len(slices) < policy.min_slices:
        raise TooFewSlicesError(
            f"series has {len(slices)} slices; at least {policy.min_slices} are needed"
        )
    return AcceptedSlices(slices, len(paths) - len(headers), notes)


# --- files and headers -------------------------------------------------------------------------
def _list_files(source: Path | Iterable[Path]) -> list[Path]:
    if isinstance(source, (str, Path)):
        root = Path(source)
        if root.is_dir():
            return sorted(p for p in root.rglob("*") if p.is_file())
        if root.is_file():
            return [root]
        raise NoSeriesError("the source path does not exist")
    return [Path(p) for p in source]


def _looks_like_dicom(path: Path) -> tuple[bool, bool]:
    """Return ``(has_part10_header, looks_like_raw_dataset)`` from the first bytes."""
    with path.open("rb") as fh:
        head = fh.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True, False
    # A DICOM data set without preamble starts with a group 0002 or 0008 tag (little endian).
    return False, head[:2] in (b"\x02\x00", b"\x08\x00")


def _read_one(path: Path, number: int, policy: IngestPolicy) -> Dataset | None:
    """Read one file's header (PixelData deferred); ``None`` for a skipped file."""
    try:
        part10, raw = _looks_like_dicom(path)
    except OSError as exc:
        raise UnreadableDicomError(f"input file #{number} cannot be opened") from exc
    if part10 or raw:
        try:
            ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE, force=raw)
        except PARSE_ERRORS as exc:
            if part10:
                raise UnreadableDicomError(
                    f"input file #{number} is DICOM but cannot be parsed (truncated or corrupt)"
                ) from exc
        else:
            if part10 or "SOPClassUID" in ds:  # a forced read of a foreign file finds none
                return ds
    if not policy.skip_non_dicom:
        raise UnreadableDicomError(f"input file #{number} is not DICOM")
    logger.warning("skipping input file #%d: not DICOM", number)
    return None


def _read_headers(paths: Sequence[Path], policy: IngestPolicy) -> list[Dataset]:
    headers: list[Dataset] = []
    for number, path in enumerate(paths, start=1):
        ds = _read_one(path, number, policy)
        if ds is None:
            continue
        media_class = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
        if media_class == MediaStorageDirectoryStorage:
            logger.info("skipping input file #%d: a DICOMDIR", number)
            continue
        if "SeriesInstanceUID" not in ds or "SOPInstanceUID" not in ds:
            raise UnreadableDicomError(
                f"input file #{number} lacks SeriesInstanceUID or SOPInstanceUID "
                "(truncated or corrupt)"
            )
        headers.append(ds)
    if not headers:
        raise NoSeriesError(f"no readable DICOM file among the {len(paths)} received")
    return headers


# --- series selection and consistency ----------------------------------------------------------
def _choose_series(headers: Sequence[Dataset], wanted: str | None) -> list[Dataset]:
    groups: dict[str, list[Dataset]] = {}
    for ds in headers:
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    if wanted is not None:
        if wanted not in groups:
            raise NoSeriesError(f"series {wanted} is not among the {len(groups)} series received")
        return groups[wanted]
    images = {uid: g for uid, g in groups.items() if any("PixelData" in ds for ds in g)}
    ct = {uid: g for uid, g in images.items() if any(_is_ct_image(ds) for ds in g)}
    if len(ct) == 1:
        (chosen,) = ct.values()
        if len(groups) > 1:
            logger.info("ignoring %d non-CT series", len(groups) - 1)
        return chosen
    if len(ct) > 1:
        raise MixedSeriesError(f"{len(ct)} CT series received ({', '.join(sorted(ct))}); name one")
    if images:
        found = sorted(
            {
                str(ds.get("Modality", "unknown"))
                for g in images.values()
                for ds in g
                if "PixelData" in ds
            }
        )
        raise NotCtError(f"no CT series received; image modalities found: {', '.join(found)}")
    raise NoSeriesError(f"no image series among the {len(groups)} series received")


def _is_ct_image(ds: Dataset) -> bool:
    return "PixelData" in ds and str(ds.get("Modality", "")) == "CT"


def _unique(values: Iterable[object], what: str) -> None:
    distinct = {str(v) for v in values}
    if len(distinct) > 1:
        raise MixedSeriesError(f"one series holds instances of {len(distinct)} different {what}")


def _without_non_images(slices: Sequence[Dataset]) -> tuple[list[Dataset], tuple[str, ...]]:
    """The series without objects that hold no image and are not CT (an RTSTRUCT, a report, a
    presentation state stored under the CT's SeriesInstanceUID), and a warning naming them.

    Such an object never blocks the series: it is not part of the volume. A CT object without
    pixel data stays (it is a truncated slice, refused by :func:`_check_series`).
    """
    image = [("PixelData" in ds or str(ds.get("Modality", "")) == "CT") for ds in slices]
    if all(image):
        return list(slices), ()
    kept = [ds for ds, keep in zip(slices, image, strict=True) if keep]
    others = [ds for ds, keep in zip(slices, image, strict=True) if not keep]
    dropped = sorted({str(ds.get("Modality", "unknown")) for ds in others})
    count = len(others)
    note = f"ignored {count} non-image object(s) ({', '.join(dropped)}) stored in the CT series"
    logger.warning("%s", note)
    return kept, (note,)


def _check_series(slices: Sequence[Dataset]) -> list[Dataset]:
    """Modality, identity and per-file checks; drops repeated copies of one instance."""
    modalities = {str(ds.get("Modality", "")) for ds in slices}
    if modalities != {"CT"}:
        raise NotCtError(f"series modality is {', '.join(sorted(modalities))}, not CT")
    unique: dict[str, Dataset] = {}
    for ds in slices:
        unique.setdefault(str(ds.SOPInstanceUID), ds)
    if len(unique) < len(slices):
        logger.warning("ignoring %d repeated copies of instances", len(slices) - len(unique))
    kept = [ds for ds in unique.values() if not _is_localizer(ds)]
    if len(kept) < len(unique):
        logger.warning("ignoring %d localizer images in the series", len(unique) - len(kept))
    for ds in kept:
        if "PixelData" not in ds:
            raise UnreadableDicomError(
                f"CT instance {ds.SOPInstanceUID} has no pixel data (truncated or corrupt)"
            )
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise NotCtError("multi-frame (enhanced) CT is not supported; send single-frame CT")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise NotCtError("CT pixels must be single-channel (SamplesPerPixel 1)")
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if any(keyword not in ds for ds in kept):
            raise DicomError(f"a CT slice lacks {keyword}")
    _unique((ds.StudyInstanceUID for ds in kept), "studies")
    _unique((ds.FrameOfReferenceUID for ds in kept), "frames of reference")
    return kept


def _is_localizer(ds: Dataset) -> bool:
    image_type = ds.get("ImageType", [])
    values = [image_type] if isinstance(image_type, str) else list(image_type or [])
    return any(str(v).upper() == "LOCALIZER" for v in values)


def _strip_bulk_data(ds: Dataset) -> None:
    """Remove PixelData and the top-level values whose reading was deferred.

    The kept headers then never go back to the input files, which may be gone.
    """
    deferred = [
        tag
        for tag in tuple(ds.keys())
        if isinstance(elem := ds.get_item(tag, keep_deferred=True), RawDataElement)
        and elem.value is None
        and elem.length
    ]
    for tag in deferred:
        del ds[tag]
    if "PixelData" in ds:
        del ds.PixelData
    if deferred:
        logger.debug("dropped %d large header values of one slice", len(deferred))


# --- pixels ----------------------------------------------------------------------------------
def _decode_volume(slices: Sequence[Dataset], shape: tuple[int, int, int]) -> npt.NDArray[Any]:
    """Decode every slice into one float32 HU array ``(k, j, i)``."""
    out = np.empty(shape, dtype=np.float32)
    for k, ds in enumerate(slices):
        pixels = _stored_values(ds)
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        if slope == 1.0:
            # One pass, the same values: float32(p) * 1 is float32(p), then + intercept.
            np.add(pixels, np.float32(intercept), out=out[k], dtype=np.float32, casting="unsafe")
            continue
        np.multiply(pixels, np.float32(slope), out=out[k], casting="unsafe")
        if intercept:
            out[k] += np.float32(intercept)
    return out


def _stored_values(ds: Dataset) -> npt.NDArray[Any]:
    """The stored pixel values of one single-frame slice, shape ``(rows, columns)``."""
    syntax = _transfer_syntax(ds)
    if syntax.is_compressed:
        return _decode_compressed(ds, syntax)
    rows, cols = int(ds.Rows), int(ds.Columns)
    allocated, stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if allocated not in _NATIVE_BITS or not 0 < stored <= allocated:
        raise UnreadableDicomError(
            f"CT instance {ds.SOPInstanceUID}: unsupported BitsAllocated/BitsStored "
            f"{allocated}/{stored}"
        )
    order = "<" if syntax.is_little_endian else ">"
    data = ds.PixelData
    count = rows * cols
    if len(data) < count * allocated // 8:
        raise UnreadableDicomError(f"CT instance {ds.SOPInstanceUID}: pixel data is truncated")
    dtype = f"{order}{'i' if signed else 'u'}{allocated // 8}"
    raw = np.frombuffer(data, dtype=dtype, count=count).reshape(rows, cols)
    unused = allocated - stored
    if unused == 0:
        return raw
    if signed:
        return (raw << unused) >> unused  # sign-extend from BitsStored
    masked: npt.NDArray[Any] = raw & raw.dtype.type((1 << stored) - 1)
    return masked


def _transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax; inferred from the parse for files without file meta."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return UID(meta.TransferSyntaxUID)
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _decode_compressed(ds: Dataset, syntax: UID) -> npt.NDArray[Any]:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntaxError(
            f"pixel data in transfer syntax {syntax.name} ({syntax}) cannot be decoded"
        ) from exc
    if not decoder.is_available:
        raise UnsupportedTransferSyntaxError(
            f"no decoder plugin installed for transfer syntax {syntax.name} ({syntax})"
        )
    try:
        return np.asarray(ds.pixel_array)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntaxError(
            f"pixel data in transfer syntax {syntax.name} ({syntax}) cannot be decoded"
        ) from exc
    except (RuntimeError, *PARSE_ERRORS) as exc:
        raise UnreadableDicomError(
            f"CT instance {ds.SOPInstanceUID}: compressed pixel data cannot be decoded"
        ) from exc
