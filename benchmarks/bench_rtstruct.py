"""Benchmark: llmctv's RTSTRUCT writer against rt-utils on the same mask.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rtstruct.py [--ct DIR] [--repeats 5]

Both writers start from the same in-memory mask and already-read CT headers (rt-utils reads the
series, pixels included, once, outside the timing) and end with a file on disk. Masks: the
union of Lung-Left and Lung-Right of the clinical LUNG1-001 structure set (rasterised through
the grid, centre-inside, even-odd), and a large LPS ellipsoid. Prints the median of the
repeats, the number of contours and points each writer produced, and the file size.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom

from model.dicom.rtstruct import ReferencedSeries, RoiSpec, WriterInfo, write_rtstruct
from model.dicom.rtstruct.polygons import polygons_to_mask
from model.imaging.geometry import Grid

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lung1_ct_rtstruct" / "LUNG1-001"
Mask = npt.NDArray[np.bool_]


def clinical_mask(rtstruct: Path, names: tuple[str, ...], reference: ReferencedSeries) -> Mask:
    """Union of ROIs of a structure set on the reference grid (LPS -> index via the grid)."""
    ds = pydicom.dcmread(rtstruct)
    numbers = {int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName in names}
    grid = reference.grid
    mask = np.zeros(grid.shape, dtype=bool)
    for item in ds.ROIContourSequence:
        if int(item.ReferencedROINumber) not in numbers:
            continue
        by_slice: dict[int, list[npt.NDArray[np.float64]]] = {}
        for contour in item.ContourSequence:
            kji = grid.lps_to_index(np.asarray(contour.ContourData, dtype=float).reshape(-1, 3))
            by_slice.setdefault(round(float(kji[0, 0])), []).append(kji[:, 1:])
        for k, polygons in by_slice.items():
            mask[k] |= polygons_to_mask(polygons, grid.shape[1:])
    return mask


def ellipsoid_mask(grid: Grid) -> Mask:
    """A large ellipsoid (about 60% of the field of view) centred in the grid."""
    k, j, i = np.indices(grid.shape, dtype=np.float64)
    centre = (np.asarray(grid.shape, dtype=np.float64) - 1) / 2
    radii = np.asarray(grid.shape, dtype=np.float64) * 0.3
    return np.asarray(
        ((k - centre[0]) / radii[0]) ** 2
        + ((j - centre[1]) / radii[1]) ** 2
        + ((i - centre[2]) / radii[2]) ** 2
        <= 1.0
    )


def median_time(run: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count(path: Path) -> tuple[int, int]:
    """Number of contours and points in a written structure set."""
    ds = pydicom.dcmread(path)
    contours = [c for item in ds.ROIContourSequence for c in item.get("ContourSequence", [])]
    return len(contours), sum(int(c.NumberOfContourPoints) for c in contours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, default=DATA / "image")
    parser.add_argument("--rtstruct", type=Path, default=DATA / "mask_rtstruct" / "1-1.dcm")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from rt_utils import RTStructBuilder  # imported here: optional for the package

    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(args.ct.glob("*.dcm"))]
    reference = ReferencedSeries.from_datasets(headers)
    masks = {
        "lungs L+R": clinical_mask(args.rtstruct, ("Lung-Left", "Lung-Right"), reference),
        "ellipsoid": ellipsoid_mask(reference.grid),
    }
    info = WriterInfo(model_name="benchmark", software_versions=("llmctv bench",))
    rt_utils_struct = RTStructBuilder.create_new(dicom_series_path=str(args.ct))
    print(f"CT {reference.grid.shape}, median of {args.repeats}")
    print(
        f"{'mask':<10} {'writer':<8} {'voxels':>9} {'time s':>7} {'contours':>8} "
        f"{'points':>7} {'file MB':>7}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for label, mask in masks.items():
            ours, theirs = Path(tmp, "ours.dcm"), Path(tmp, "rtutils.dcm")
            rois = [RoiSpec("ROI", mask)]

            def write_ours(rois: list[RoiSpec] = rois, out: Path = ours) -> None:
                write_rtstruct(out, ReferencedSeries.from_datasets(headers), rois, info)

            def write_theirs(mask: Mask = mask, out: Path = theirs) -> None:
                rt_utils_struct.ds.ROIContourSequence = pydicom.Sequence()
                rt_utils_struct.ds.StructureSetROISequence = pydicom.Sequence()
                rt_utils_struct.ds.RTROIObservationsSequence = pydicom.Sequence()
                rt_utils_struct.add_roi(mask=np.moveaxis(mask, 0, -1), name="ROI")
                with contextlib.redirect_stdout(io.StringIO()):  # rt-utils prints on save
                    rt_utils_struct.save(str(out))

            for name, run, path in (
                ("llmctv", write_ours, ours),
                ("rt-utils", write_theirs, theirs),
            ):
                seconds = median_time(run, args.repeats)
                contours, points = count(path)
                size = path.stat().st_size / 1e6
                print(
                    f"{label:<10} {name:<8} {int(mask.sum()):>9} {seconds:>7.3f} {contours:>8} "
                    f"{points:>7} {size:>7.2f}"
                )


if __name__ == "__main__":
    main()
