"""Self-tests of the independent phantom generator (small matrices, a few seconds in all).

Coordinates: LPS mm (+x patient left); arrays (k, j, i) = (slice, row, column), k toward +z.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from independent.anatomy import Tissue
from independent.generator import (
    IndependentCase,
    generate_case,
    render_note,
    with_record,
    write_case,
)
from independent.params import sample_record

MATRIX = 128


def _record(*diagnoses: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "diagnoses": [
            {"side": side, "surgery": surgery, "t_stage": "2", "n_stage": n}
            for side, surgery, n in diagnoses
        ],
        "age": 60,
        "pathology": "IDC",
        "neoadjuvant_chemotherapy": False,
    }


_CASES: dict[tuple[int, str, str], IndependentCase] = {}


def _case(seed: int, site: str = "A", record: dict[str, Any] | None = None) -> IndependentCase:
    key = (seed, site, json.dumps(record, sort_keys=True))
    if key not in _CASES:
        _CASES[key] = generate_case(seed, site, MATRIX, record=record)
    return _CASES[key]


def _true_distance(case: IndependentCase) -> np.ndarray:
    """Brute-force 3-D distance (mm) to the nearest outside voxel (scipy EDT on the volume)."""
    return np.asarray(ndimage.distance_transform_edt(case.body, sampling=case.grid.spacing))


def _centre_x(case: IndependentCase, mask: np.ndarray) -> float:
    return float(case.grid.xs()[np.nonzero(mask)[2]].mean())


def test_same_seed_same_pixels_and_masks(tmp_path: Path) -> None:
    first = generate_case(11, "B", 96)
    second = generate_case(11, "B", 96)
    assert first.hu.tobytes() == second.hu.tobytes()
    assert first.masks.keys() == second.masks.keys()
    assert all(np.array_equal(first.masks[k], second.masks[k]) for k in first.masks)
    assert first.clinical == second.clinical
    write_case(first, tmp_path / "a")
    write_case(second, tmp_path / "b")
    files_a = sorted((tmp_path / "a" / "ct").iterdir())
    files_b = sorted((tmp_path / "b" / "ct").iterdir())
    assert [f.name for f in files_a] == [f.name for f in files_b]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(files_a, files_b, strict=True))
    other = generate_case(12, "B", 96)
    assert other.hu.tobytes() != first.hu.tobytes()


def test_written_series_matches_the_case(tmp_path: Path) -> None:
    case = _case(3, "A", _record(("left", "breast_conserving", "1")))
    summary = write_case(case, tmp_path / "c")
    files = sorted((tmp_path / "c" / "ct").glob("*.dcm"))
    assert len(files) == case.grid.shape[0] == summary["n_slices"]
    uids = set()
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert ds.PatientPosition == "HFS" and ds.PatientName == f"INDEP^{case.case_id}"
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        ipp = [float(v) for v in ds.ImagePositionPatient]
        assert ipp == pytest.approx(
            [case.grid.origin[0], case.grid.origin[1], case.grid.zs()[k]], abs=1e-3
        )
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx(case.grid.spacing[1:], abs=1e-4)
        assert float(ds.SliceThickness) == case.grid.spacing[0]
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(hu, case.hu[k])
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == len(files)
    truth = np.load(tmp_path / "c" / "truth.npz")
    assert set(truth.files) == {"ctv", "breast_L", "axilla_L", "scf_L", "imn_L"}
    assert all(
        truth[name].shape == case.grid.shape and truth[name].dtype == bool for name in truth.files
    )
    assert np.array_equal(truth["ctv"], case.ctv)
    clinical = json.loads((tmp_path / "c" / "clinical.json").read_text())
    assert clinical == case.clinical
    assert summary["note"] == "N1, cT2, breast conserving surgery, left side"
    assert summary["volumes_cc"]["breast_L"] > 50


def test_masks_inside_the_body_and_off_the_skin() -> None:
    case = _case(
        21, "A", _record(("left", "breast_conserving", "2"), ("right", "total_mastectomy", "0"))
    )
    dist = _true_distance(case)
    assert case.ctv.any()
    for key, mask in case.masks.items():
        assert mask.any(), key
        assert not (mask & ~case.body).any(), key
    assert dist[case.masks[("breast", "L")]].min() >= 5.0
    assert dist[case.masks[("chest_wall", "R")]].min() >= 3.0
    assert ("breast", "R") not in case.candidates and ("chest_wall", "L") not in case.candidates


def test_node_negative_ctv_stays_3mm_below_the_skin() -> None:
    case = _case(23, "B", _record(("right", "breast_conserving", "1mi")))
    assert _true_distance(case)[case.ctv].min() >= 3.0


@pytest.mark.parametrize("side", ["left", "right"])
def test_breast_ctv_on_the_named_side(side: str) -> None:
    case = _case(5, "A", _record((side, "breast_conserving", "0")))
    letter = side[0].upper()
    assert set(case.masks) == {("breast", letter)}
    centre = case.params["body_centre_lps"][0]
    offset = _centre_x(case, case.ctv) - centre
    assert offset > 30 if side == "left" else offset < -30  # LPS +x is the patient's left
    x = case.grid.xs()[np.nonzero(case.ctv)[2]] - centre
    assert (x > 0).all() if side == "left" else (x < 0).all()  # never across the midline


@pytest.mark.parametrize(
    ("n_stage", "nodes"), [("0", False), ("1mi", False), ("1", True), ("2b", True), ("3", True)]
)
def test_nodes_follow_the_n_stage(n_stage: str, nodes: bool) -> None:
    case = _case(6, "A", _record(("right", "breast_conserving", "0")))
    if n_stage != "0":
        case = with_record(case, _record(("right", "breast_conserving", n_stage)))
    names = {name for name, _ in case.masks}
    assert bool(names & {"axilla", "scf", "imn"}) == nodes
    assert ({"axilla", "scf", "imn"} <= names) == nodes
    for name in ("axilla", "scf", "imn"):
        if nodes:
            assert case.masks[(name, "R")].sum() > 10
            assert _centre_x(case, case.masks[(name, "R")]) < case.params["body_centre_lps"][0]


def test_mastectomy_case_has_chest_wall_and_no_breast() -> None:
    case = _case(7, "A", _record(("left", "total_mastectomy", "1")))
    assert ("chest_wall", "L") in case.masks and ("breast", "L") not in case.masks
    assert ("breast", "L") not in case.candidates and ("breast", "R") in case.candidates
    cw = case.masks[("chest_wall", "L")]
    assert _centre_x(case, cw) > case.params["body_centre_lps"][0]
    # a thin wall over the ribs: never lung, and far thinner than the contralateral breast
    assert not (cw & (case.labels == Tissue.LUNG)).any()
    assert cw.sum() < case.candidates[("breast", "R")].sum()


def test_liver_lies_below_the_right_lung() -> None:
    case = _case(8, "B")
    liver = case.labels == Tissue.LIVER
    lung = case.labels == Tissue.LUNG
    assert liver.sum() * case.grid.voxel_cc > 20
    assert _centre_x(case, liver) < case.params["body_centre_lps"][0]
    _k, j, i = (round(c) for c in ndimage.center_of_mass(liver))
    column = lung[:, j, i]
    assert column.any() and np.nonzero(column)[0].min() > np.nonzero(liver[:, j, i])[0].max()


def test_perturbations_recompute_the_truth() -> None:
    case = _case(9, "A", _record(("left", "breast_conserving", "0")))
    flipped = with_record(case, _record(("right", "breast_conserving", "0")))
    assert set(flipped.masks) == {("breast", "R")}
    switched = with_record(case, _record(("left", "breast_conserving", "1")))
    assert switched.ctv.sum() > case.ctv.sum() and (case.ctv <= switched.ctv).all()
    with pytest.raises(ValueError, match="chest_wall"):
        with_record(case, _record(("left", "total_mastectomy", "0")))


def test_records_follow_the_site_mix() -> None:
    rng = np.random.default_rng(0)
    for site, left, both, n0, bcs in (("A", 0.50, 0.04, 0.40, 0.66), ("B", 0.50, 0.0, 0.66, 0.91)):
        records = [sample_record(rng, site) for _ in range(3000)]
        sides = Counter(tuple(d["side"] for d in r["diagnoses"]) for r in records)
        first = [r["diagnoses"][0] for r in records]
        assert sides[("left",)] / 3000 == pytest.approx(left, abs=0.04)
        assert sides[("left", "right")] / 3000 == pytest.approx(both, abs=0.015)
        assert sum(d["n_stage"] == "0" for d in first) / 3000 == pytest.approx(n0, abs=0.04)
        assert sum(d["surgery"] == "breast_conserving" for d in first) / 3000 == pytest.approx(
            bcs, abs=0.04
        )
        for r in records[:200]:
            assert set(r) == {"diagnoses", "age", "pathology", "neoadjuvant_chemotherapy"}
            assert 25 <= r["age"] <= 90 and r["pathology"] in ("IDC", "ILC", "DCIS")
            for d in r["diagnoses"]:
                assert re.fullmatch(r"is|1mi|1[abc]?|[23]|4[abcd]?", d["t_stage"])
                assert re.fullmatch(r"0|1mi|[123][abc]?", d["n_stage"])
            assert render_note(r).count(";") == len(r["diagnoses"]) - 1
