"""Patient position: the same anatomy stored head- or feet-first, supine or prone, in any pixel
encoding, gets the same structures in patient coordinates from the shipped model; decubitus is
refused before a job exists; PatientPosition that contradicts the cosines, is missing, or is
prone is a warning.

On e766665 the feet-first storage put the CTV on the opposite breast (Dice 0.003 against
head-first) because the network saw the series mirrored (``orientation: "source"``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from conftest import REPO

from model.dicom.ingest_policy import IngestPolicy
from model.dicom.patient_position import PatientPosition, position_from_cosines
from model.dicom.series import CtSeries, inspect_ct_series, read_ct_series
from model.errors import UnsupportedPatientPositionError
from model.inference import Predictor
from model.lab.phantoms.cohort import WrittenCase, write_cohort

#: ImageOrientationPatient of each storage (row cosines, column cosines).
STORAGE = {
    "HFS": (1, 0, 0, 0, 1, 0),
    "FFS": (-1, 0, 0, 0, 1, 0),
    "HFP": (-1, 0, 0, 0, -1, 0),
    "FFP": (1, 0, 0, 0, -1, 0),
}


def restore(
    case: WrittenCase,
    out: Path,
    iop: Sequence[int],
    *,
    position: str | None = "HFS",
    slope: float = 1.0,
    unsigned: bool = False,
) -> Path:
    """Write ``case`` again with other direction cosines and pixel encoding.

    Every voxel keeps its LPS position and HU: the pixel array is re-ordered so that pixel
    ``(r, c)`` of each new image lies at ``IPP + c * dx * row + r * dy * col``. (Test data
    only: the product never re-orders arrays by hand.)
    """
    out.mkdir(parents=True, exist_ok=True)
    slices = sorted(
        (pydicom.dcmread(p) for p in case.ct_files), key=lambda d: float(d.ImagePositionPatient[2])
    )
    flip_i, flip_j = iop[0] < 0, iop[4] < 0
    for ds in slices:
        new = copy.deepcopy(ds)
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        rows, cols = hu.shape
        dy, dx = (float(v) for v in ds.PixelSpacing)
        x0, y0, z = (float(v) for v in ds.ImagePositionPatient)
        if flip_i:
            hu, x0 = hu[:, ::-1], x0 + (cols - 1) * dx
        if flip_j:
            hu, y0 = hu[::-1, :], y0 + (rows - 1) * dy
        intercept = -1024.0 if unsigned else 0.0
        stored = np.round((hu - intercept) / slope)
        new.PixelRepresentation = 0 if unsigned else 1
        new.BitsStored, new.HighBit = 16, 15
        new.RescaleIntercept, new.RescaleSlope = f"{intercept:g}", f"{slope:g}"
        new.PixelData = stored.astype("<u2" if unsigned else "<i2").tobytes()
        new.ImageOrientationPatient = [str(v) for v in iop]
        new.ImagePositionPatient = [f"{x0:g}", f"{y0:g}", f"{z:g}"]
        if position is None:
            del new.PatientPosition
        else:
            new.PatientPosition = position
        new.save_as(out / f"{new.SOPInstanceUID}.dcm", enforce_file_format=True)
    return out


def on_reference(mask: npt.NDArray[np.bool_], ct: CtSeries, ref: CtSeries) -> npt.NDArray[np.bool_]:
    """``mask`` on ``ct``'s grid, moved voxel by voxel onto ``ref``'s grid through LPS."""
    index = np.argwhere(mask).astype(np.float64)
    target = np.rint(ref.volume.grid.lps_to_index(ct.volume.grid.index_to_lps(index)))
    out = np.zeros(ref.volume.grid.shape, dtype=bool)
    out[tuple(target.astype(np.int64).T)] = True
    return out


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


# --- the position rules, on headers ----------------------------------------------------------
@pytest.mark.parametrize("name", list(STORAGE))
def test_the_four_storages_are_recognised(name: str) -> None:
    iop = np.array(STORAGE[name], dtype=float)
    assert position_from_cosines(iop[:3], iop[3:]) is PatientPosition(name)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> WrittenCase:
    root = tmp_path_factory.mktemp("position")
    return write_cohort(root / "A", 1, "A", seed=4242, scale=0.5)[0]


def test_decubitus_is_refused_before_a_job(case: WrittenCase, tmp_path: Path) -> None:
    lateral = restore(case, tmp_path / "cos", (0, 1, 0, -1, 0, 0))
    with pytest.raises(UnsupportedPatientPositionError) as by_cosines:
        inspect_ct_series(lateral)
    tagged = restore(case, tmp_path / "tag", STORAGE["HFS"], position="HFDL")
    with pytest.raises(UnsupportedPatientPositionError) as by_tag:
        inspect_ct_series(tagged)
    assert by_cosines.value.code == by_tag.value.code == "unsupported_patient_position"
    assert "HFDL" in by_tag.value.detail


def test_position_tag_findings(case: WrittenCase, tmp_path: Path) -> None:
    plain = inspect_ct_series(restore(case, tmp_path / "plain", STORAGE["FFS"], position="FFS"))
    assert plain.warnings == ()
    missing = inspect_ct_series(restore(case, tmp_path / "none", STORAGE["FFS"], position=None))
    assert any("missing" in w and "FFS" in w for w in missing.warnings), missing.warnings
    wrong = inspect_ct_series(restore(case, tmp_path / "wrong", STORAGE["FFS"], position="HFS"))
    assert any("HFS contradicts" in w and "FFS" in w for w in wrong.warnings), wrong.warnings
    prone_folder = restore(case, tmp_path / "prone", STORAGE["HFP"], position="HFP")
    prone = inspect_ct_series(prone_folder)
    assert any("HFP" in w and "supine" in w for w in prone.warnings), prone.warnings
    with pytest.raises(UnsupportedPatientPositionError):
        inspect_ct_series(prone_folder, policy=IngestPolicy(refuse_untrained_positions=True))


# --- the shipped model, every encoding --------------------------------------------------------
ENCODINGS: dict[str, tuple[Sequence[int], dict[str, object]]] = {
    "FFS": (STORAGE["FFS"], {"position": "FFS"}),
    "HFP cosines": (STORAGE["HFP"], {"position": "HFS"}),
    "FFP cosines": (STORAGE["FFP"], {"position": "HFS"}),
    "unsigned, slope 0.5": (STORAGE["HFS"], {"unsigned": True, "slope": 0.5}),
    "FFS unsigned": (STORAGE["FFS"], {"position": "FFS", "unsigned": True}),
}


def test_every_storage_gives_the_same_structures(case: WrittenCase, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(REPO / "checkpoints" / "demo", device="cpu")
    reference = read_ct_series(case.directory)
    ref = predictor.predict_record(reference.volume, case.clinical)
    side = case.clinical.diagnoses[0].side.value
    centre_x = reference.volume.grid.index_to_lps(np.argwhere(ref.mask).mean(axis=0)[None])[0, 0]
    assert (centre_x > 0) == (side == "left"), "LPS +x is the patient's left"
    scores: dict[str, float] = {}
    for name, (iop, options) in ENCODINGS.items():
        folder = restore(case, tmp_path / name.replace(" ", "_"), iop, **options)  # type: ignore[arg-type]
        ct = read_ct_series(folder)
        found = predictor.predict_record(ct.volume, case.clinical)
        scores[name] = dice(on_reference(found.mask, ct, reference), ref.mask)
        for key, mask in ref.structures.items():
            if mask.sum() > 50:
                moved = on_reference(found.structures[key], ct, reference)
                assert dice(moved, mask) >= 0.98, (name, key)
    print("\nDice against head-first supine storage:", {k: round(v, 4) for k, v in scores.items()})
    assert all(v >= 0.98 for v in scores.values()), scores
