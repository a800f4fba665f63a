"""The synthetic department of issue 24: its CTV convention and its rt-utils export.

Masks are ``(k, j, i)`` on the CT grid (LPS mm). The department (phantom site ``S``) treats the
internal mammary nodes only for N2-N3 and draws its supraclavicular CTV up to 85 mm above the
breast top (the spec: N1-N3 and 70 mm).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from model.dataset.dataset_command import register
from model.dicom.rtstruct.reader import rasterize, read_structure_set
from model.dicom.series import read_ct_series
from model.evaluation.metrics import dice
from model.lab.department import (
    SITE_STRUCTURE_MAP,
    UNION_NAME,
    department_rois,
    write_department_export,
)
from model.lab.phantoms import generate_case
from model.lab.phantoms.cohort import case_seed
from model.lab.phantoms.rules import ROI_IMN, ROI_SCF
from model.lab.phantoms.sites import IMN_N2_CONVENTION, SPEC_CONVENTION, get_site
from model.text.clinical import ClinicalRecord, Diagnosis, Side, Surgery, read_clinical_csv


def _record(n_stage: str, side: Side = Side.LEFT) -> ClinicalRecord:
    diagnosis = Diagnosis(
        side=side, surgery=Surgery.BREAST_CONSERVING, t_stage="2", n_stage=n_stage
    )
    return ClinicalRecord(diagnoses=(diagnosis,))


@pytest.mark.parametrize(
    ("n_stage", "spec_imn", "site_imn"),
    [
        ("1", True, False),
        ("2a", True, True),
        ("3", True, True),
        ("1mi", False, False),
        ("0", False, False),
    ],
)
def test_the_site_convention_draws_imn_only_for_n2_n3(
    n_stage: str, spec_imn: bool, site_imn: bool
) -> None:
    """IMN for N1 at the spec, not at the department; N2-N3 at both; N0/N1mi at neither."""
    record = _record(n_stage)
    spec_case = generate_case("A0001", "A", 11, 0.25, clinical=record)
    site_case = generate_case("S0001", "S", 11, 0.25, clinical=record)
    assert (ROI_IMN in spec_case.masks) is spec_imn
    assert (ROI_IMN in site_case.masks) is site_imn
    assert SPEC_CONVENTION.treats_imn(n_stage) is (n_stage[0] in "123")
    assert IMN_N2_CONVENTION.treats_imn(n_stage) is (n_stage[0] in "23")


def test_the_site_scf_reaches_15_mm_higher_inside_its_scan() -> None:
    """The SCF's cranial end: 70 mm above the breast top at the spec, 85 mm at the site."""
    record = _record("2")
    tops = {}
    for site in ("A", "S"):
        case = generate_case(f"{site}0002", site, 23, 0.5, clinical=record)
        scf = case.masks[ROI_SCF]
        z_of_k = case.grid.origin[2] + np.arange(case.grid.shape[0]) * case.grid.spacing[0]
        breast_top = case.anatomy.params.breasts[Side.LEFT].top
        top = float(z_of_k[np.flatnonzero(scf.any(axis=(1, 2)))].max()) - breast_top
        tops[site] = top
        assert not scf[-1].any(), "the SCF stays inside the scan (no cut at the cranial edge)"
    assert 70.0 - 4.0 <= tops["A"] <= 70.0
    assert 85.0 - 4.0 <= tops["S"] <= 85.0
    assert get_site("S").convention is IMN_N2_CONVENTION


def test_the_rt_utils_export_reads_back_in_place_with_the_site_names(tmp_path: Path) -> None:
    """Each ROI rt-utils wrote, rasterised by our reader on the CT, matches the mask it was
    given: Dice >= 0.85 from 20 cc (rt-utils' polygons run through boundary voxel centres,
    half a 4 mm voxel inside) and centroids within a voxel (4 mm); a wrong slice order or a
    transposed mask would put the CTV elsewhere (Dice near 0)."""
    out = tmp_path / "export"
    exported = write_department_export(out, 2, seed=5, scale=0.25, first=7)
    assert [e.case_id for e in exported] == ["case0007", "case0008"]
    rows = read_clinical_csv(out / "clinical.csv")
    assert list(rows) == ["case0007", "case0008"]
    for entry in exported:
        index = int(entry.case_id[4:])
        case = generate_case(f"S{index:04d}", "S", case_seed(5, "S", index), 0.25)
        ct = read_ct_series(sorted((entry.directory / "CT").glob("*.dcm")))
        assert ct.volume.grid.shape == case.grid.shape
        assert str(ct.datasets[0].PatientID) != entry.case_id  # the folder is a pseudonym
        structure_set = read_structure_set(entry.rtstruct)
        names = set(structure_set.roi_names)
        voxel_cc = float(np.prod(ct.volume.grid.spacing)) / 1000.0
        rois = department_rois(case)
        assert names == set(rois)
        assert {UNION_NAME, "BODY", "z_Ring"} <= names
        side = " Lt" if case.clinical.diagnoses[0].side is Side.LEFT else " Rt"
        assert any(n.startswith("PTV") and n.endswith(side) for n in names)
        for name in (n for n in rois if n.startswith("CTV")):
            read_back = rasterize(structure_set, name, ct.volume.grid)
            if rois[name].sum() * voxel_cc >= 20.0:  # an 8 mm IMN loses half to rt-utils
                assert dice(read_back, rois[name]) >= 0.85, name
            shift = ct.volume.grid.spacing * (_centroid(read_back) - _centroid(rois[name]))
            assert float(np.abs(shift).max()) <= 4.0, (name, shift)  # one voxel
        assert all(not r.interpreted_type for r in structure_set.rois)  # rt-utils: empty


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


def test_dataset_check_reads_the_export_without_false_problems(tmp_path: Path) -> None:
    """``llmctv dataset check`` with the site's map: every structure found on its side, the
    PTVs, BODY, ring and union never counted as structures, no problem at all."""
    out = tmp_path / "export"
    write_department_export(out, 3, seed=9, scale=0.25)
    site_map = tmp_path / "site.toml"
    site_map.write_text(SITE_STRUCTURE_MAP, encoding="utf-8")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    report = tmp_path / "check"
    args = parser.parse_args(
        ["dataset", "check", str(out), "--structure-map", str(site_map), "--out", str(report)]
    )
    assert args.func(args) == 0
    inventory = json.loads((report / "inventory.json").read_text(encoding="utf-8"))
    assert inventory["verdict"] == "pass"
    assert inventory["problems"] == []
    assert inventory["summary"]["cases_checked"] == 3

    # The same export against a rule it does not follow (IMN for N3 only): the N2 case (seed
    # 9 draws N1c, N2, N0) is reported, the N1 and N0 cases are not.
    strict = tmp_path / "strict.toml"
    strict.write_text(SITE_STRUCTURE_MAP.replace('n_stages = ["2", "3"]', 'n_stages = ["3"]'))
    args = parser.parse_args(
        ["dataset", "check", str(out), "--structure-map", str(strict), "--out", str(report)]
    )
    assert args.func(args) == 0
    inventory = json.loads((report / "inventory.json").read_text(encoding="utf-8"))
    found = [p for p in inventory["problems"] if p["code"] == "nodal_vs_stage_rule"]
    assert [p["case"] for p in found] == ["case0002"]
    assert "is N2 and has imn (drawn for N3)" in found[0]["detail"]
    assert inventory["verdict"] == "pass"  # a warning, not blocking
