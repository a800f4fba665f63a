"""``llmctv dataset check``: the structure map, the inventory of synthetic and real exports.

Synthetic exports are small CTs (64 x 64 x 8, 1 mm pixels, 2 mm slices, voxel centres on
whole millimetres) with an elliptic body around x = -0.5 mm, and RTSTRUCTs whose contours
run along voxel boundaries, so volumes are exact: one voxel is 0.002 cc. LPS +x is the
patient's left.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from factories import BREAST_DIR, LUNG1_DIR, CtSpec, make_rtstruct, write_ct_series
from pydicom.dataset import FileDataset
from pydicom.uid import generate_uid
from scipy import ndimage

from model.dataset.dataset_command import register
from model.dataset.inventory import PROBLEM_CODES, CheckOptions, Severity
from model.dataset.structure_map import (
    RoiKind,
    StructureMap,
    load_structure_map,
    parse_structure_map,
)
from model.dicom.rtstruct.reader import (
    parse_structure_set,
    rasterize,
    read_structure_set,
)
from model.dicom.series import read_ct_series
from model.errors import ConfigurationError, DatasetError
from model.imaging.geometry import Grid

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_MAP = REPO / "deploy" / "structure-map.example.toml"
VOXEL_CC = 0.002
SLICES = (4.0, 6.0, 8.0, 10.0)  # z (mm) of slices k = 2..5
NODE_SLICES = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0)
SECRET_NAME = "Doe^Jane"  # PatientName of every synthetic CT slice (tests/factories.py)

Points = list[list[float]]


# --- synthetic exports --------------------------------------------------------------------------
def ct_spec() -> CtSpec:
    return CtSpec(
        n_slices=8,
        rows=64,
        columns=64,
        pixel_spacing=(1.0, 1.0),
        slice_spacing=2.0,
        origin=(-32.0, -32.0, 0.0),
    )


def body_pixels() -> npt.NDArray[np.uint16]:
    """Stored values (HU + 1024) of one slice: water in an ellipse, air around it."""
    y, x = np.mgrid[-32:32, -32:32].astype(float)
    inside = ((x + 0.5) / 30.0) ** 2 + ((y + 0.5) / 28.0) ** 2 <= 1.0
    return np.where(inside, 1024, 24).astype(np.uint16)


def box(x0: int, x1: int, y0: int, y1: int, z: float) -> Points:
    """Contour around the voxels with centres x0..x1, y0..y1 (mm, inclusive) on slice z."""
    a, b, c, d = x0 - 0.5, x1 + 0.5, y0 - 0.5, y1 + 0.5
    return [[a, c, z], [b, c, z], [b, d, z], [a, d, z]]


def prism(x0: int, x1: int, y0: int, y1: int, zs: Sequence[float] = SLICES) -> list[Points]:
    return [box(x0, x1, y0, y1, z) for z in zs]


def cc(nx: int, ny: int, slices: int = len(SLICES)) -> float:
    return round(nx * ny * slices * VOXEL_CC, 3)


LEFT_BREAST = prism(5, 20, -10, 5)  # 16 x 16 voxels on 4 slices
RIGHT_BREAST = prism(-21, -6, -10, 5)
LEFT_BREAST_CC = cc(16, 16)


def write_case(
    root: Path,
    case_id: str,
    rois: dict[str, list[Points]],
    *,
    patient: str,
    frame: str | None = None,
    types: dict[str, str] | None = None,
) -> CtSpec:
    """CT series in ``root/case_id/CT`` and an RTSTRUCT ``root/case_id/RS.dcm``."""
    spec = ct_spec()
    pixels = body_pixels().tobytes()

    def edit(_k: int, ds: FileDataset) -> None:
        ds.PixelData = pixels
        ds.PatientID = patient
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240102", "101112", "S1"

    write_ct_series(root / case_id / "CT", spec, edit=edit)
    ds = make_rtstruct(frame or spec.frame_uid, rois, types=types, series_uid=spec.series_uid)
    ds.PatientID, ds.PatientName = patient, SECRET_NAME
    ds.save_as(root / case_id / "RS.dcm", enforce_file_format=True)
    return spec


@dataclass(frozen=True)
class Row:
    case_id: str
    side: str = "left"
    surgery: str = "breast_conserving"
    n_stage: str = "0"
    split: str | None = None


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    fields = ["case_id", "side", "surgery", "t_stage", "n_stage"]
    with_split = any(r.split is not None for r in rows)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields + (["split"] if with_split else []))
        for r in rows:
            t_stage = ";".join("2" for _ in r.side.split(";"))
            extra = [r.split or ""] if with_split else []
            writer.writerow([r.case_id, r.side, r.surgery, t_stage, r.n_stage, *extra])


def run_check(data: Path, out: Path, *extra: str, structure_map: Path = EXAMPLE_MAP) -> int:
    """``llmctv dataset check`` through the command's own parser."""
    parser = argparse.ArgumentParser(prog="llmctv")
    register(parser.add_subparsers(dest="command", required=True))
    argv = ["dataset", "check", str(data), "--structure-map", str(structure_map)]
    args = parser.parse_args([*argv, "--out", str(out), *extra])
    return int(args.func(args))


def codes(report: dict[str, Any], case: str | None) -> dict[str, str]:
    """``{code: severity}`` of one case's problems (``case=None``: data-set level ones)."""
    return {p["code"]: p["severity"] for p in report["problems"] if p["case"] == case}


def case_of(report: dict[str, Any], case_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in report["cases"] if c["case_id"] == case_id]
    (case,) = found
    return case


def structures_of(report: dict[str, Any], case_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s["structure"], s["side"]): s for s in case_of(report, case_id)["structures"]}


# Keyhole/XOR case: a 20 x 20 square with a 6 x 6 hole, plus a 20 x 4 island on each slice.
OUTER = (2, 21, -12, 7)
HOLE = (8, 13, -5, 0)
ISLAND = (2, 21, 10, 13)
HOLES_CC = round((20 * 20 - 6 * 6 + 20 * 4) * len(SLICES) * VOXEL_CC, 3)


def keyhole(outer: tuple[int, int, int, int], hole: tuple[int, int, int, int], z: float) -> Points:
    """One contour: the outer square, a zero-width cut at x = 10.5 mm, the hole reversed."""
    a, b, c, d = outer[0] - 0.5, outer[1] + 0.5, outer[2] - 0.5, outer[3] + 0.5
    p, q, h0, h1 = hole[0] - 0.5, hole[1] + 0.5, hole[2] - 0.5, hole[3] + 0.5
    m = 10.5
    return [
        [m, c, z],
        [b, c, z],
        [b, d, z],
        [a, d, z],
        [a, c, z],
        [m, c, z],
        [m, h0, z],
        [p, h0, z],
        [p, h1, z],
        [q, h1, z],
        [q, h0, z],
        [m, h0, z],
    ]


def holes_contours() -> list[Points]:
    """XOR form (outer and hole as two contours) on two slices, keyhole form on two."""
    out: list[Points] = []
    for n, z in enumerate(SLICES):
        if n < 2:
            out += [box(*OUTER, z), box(*HOLE, z)]
        else:
            out.append(keyhole(OUTER, HOLE, z))
        out.append(box(*ISLAND, z))
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export with one problem (or none) per case; see the tests for what each holds."""
    root = tmp_path_factory.mktemp("export")
    write_case(
        root,
        "c01",
        {
            "CTV_Breast_L": LEFT_BREAST,
            "CTV": LEFT_BREAST,
            "PTV_Breast_L": prism(4, 21, -11, 6),
            "BODY": prism(-25, 25, -20, 20),
            "z_help": prism(0, 1, 0, 1),
            "Heart": prism(-4, 2, -4, 2),
        },
        patient="PAT-A",
        types={"Heart": "ORGAN", "BODY": "EXTERNAL", "PTV_Breast_L": "PTV"},
    )
    write_case(
        root,
        "c02",
        {
            "CTV ChestWall Right": prism(-21, -6, -10, 5),
            "Rt_CTVn_Axilla": prism(-22, -14, -15, -11, zs=NODE_SLICES),
            "CTVn_SCF_Rt": prism(-14, -6, 8, 12, zs=NODE_SLICES),
            "CTV IMC Right": prism(-5, -1, -20, -11, zs=NODE_SLICES),
        },
        patient="PAT-B",
    )
    write_case(root, "c03", {"CTV_Breast_R": RIGHT_BREAST}, patient="PAT-C")
    write_case(root, "c04", {"CTV_Breast_L": LEFT_BREAST}, patient="PAT-D", frame=generate_uid())
    write_case(root, "c05", {"CTVp_Breast_L": LEFT_BREAST}, patient="PAT-A")
    write_case(root, "c06", {"CTV_Breast_L": holes_contours()}, patient="PAT-E")
    write_case(root, "c07", {"CTV_Breast_R": LEFT_BREAST}, patient="PAT-F")
    write_case(root, "c08", {"CTV_Breast_L": prism(22, 31, 20, 31)}, patient="PAT-G")
    write_case(
        root,
        "c09",
        {
            "CTV_Breast_L": LEFT_BREAST,
            "CTVn_IMN_L": [box(3, 4, -1, 0, 6.0)],
            "CTV_Boob_L": prism(6, 8, 6, 8),
        },
        patient="PAT-H",
    )
    write_case(root, "PAT-I_left", {"CTV_Breast_L": LEFT_BREAST}, patient="PAT-I")
    write_case(root, "stray", {"CTV_Breast_L": LEFT_BREAST}, patient="PAT-J")
    write_case(root, "PAT-K", {"CTV_Breast_L": LEFT_BREAST}, patient="PAT-K")
    write_csv(
        root / "clinical.csv",
        [
            Row("c01"),
            Row("c02", side="right", surgery="total_mastectomy", n_stage="2"),
            Row("c03"),
            Row("c04"),
            Row("c05"),
            Row("c06", n_stage="1"),
            Row("c07", side="right"),
            Row("c08"),
            Row("c09", n_stage="1a"),
            Row("PAT-I_left"),
            Row("c11"),  # no folder
        ],
    )
    return root


@pytest.fixture(scope="module")
def checked(
    export: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("report")
    status = run_check(export, out)
    return status, json.loads((out / "inventory.json").read_text()), out


# --- the export with problems ------------------------------------------------------------------
def test_blocking_problems_give_exit_1(checked: tuple[int, dict[str, Any], Path]) -> None:
    status, report, _ = checked
    assert status == 1
    assert report["verdict"] == "blocked"
    severities = [p["severity"] for p in report["problems"]]
    assert severities == sorted(severities, key=lambda s: s != "blocking")  # blocking first
    assert report["summary"]["cases"] == 10
    assert report["summary"]["csv_rows"] == 11


def test_clean_case_inventory(checked: tuple[int, dict[str, Any], Path]) -> None:
    _, report, _ = checked
    assert codes(report, "c01") == {}
    case = case_of(report, "c01")
    kinds = {r["name"]: r["kind"] for r in case["rois"]}
    assert kinds == {
        "CTV_Breast_L": "structure",
        "CTV": "union",
        "PTV_Breast_L": "ignored",
        "BODY": "ignored",
        "z_help": "ignored",
        "Heart": "unmatched",
    }
    found = structures_of(report, "c01")
    assert list(found) == [("breast", "L")]
    assert found["breast", "L"]["volume_cc"] == pytest.approx(LEFT_BREAST_CC)
    assert found["breast", "L"]["side_from"] == "name"
    assert found["breast", "L"]["outside_body_fraction"] == 0.0
    # the union ROI is reported beside the structures, never counted as one
    assert case["target_cc"] == pytest.approx(LEFT_BREAST_CC)
    assert case["union"]["volume_cc"] == pytest.approx(LEFT_BREAST_CC)
    assert case["union"]["structures_covered"] == 1.0


def test_site_names_and_side_forms(checked: tuple[int, dict[str, Any], Path]) -> None:
    _, report, _ = checked
    assert codes(report, "c02") == {}
    found = structures_of(report, "c02")
    assert set(found) == {("chest_wall", "R"), ("axilla", "R"), ("scf", "R"), ("imn", "R")}
    assert found["chest_wall", "R"]["volume_cc"] == pytest.approx(cc(16, 16))
    assert found["imn", "R"]["volume_cc"] == pytest.approx(cc(5, 10, len(NODE_SLICES)))
    assert found["axilla", "R"]["nodal"] is True
    assert found["chest_wall", "R"]["nodal"] is False


def test_structure_on_the_side_the_csv_does_not_name(
    checked: tuple[int, dict[str, Any], Path],
) -> None:
    _, report, _ = checked
    assert codes(report, "c03") == {
        "structure_on_untreated_side": "blocking",
        "no_target_on_treated_side": "blocking",
    }


def test_frame_of_reference_mismatch(checked: tuple[int, dict[str, Any], Path]) -> None:
    _, report, _ = checked
    assert codes(report, "c04") == {"frame_of_reference_mismatch": "blocking"}
    case = case_of(report, "c04")
    assert case["checked"] is False
    assert [r["name"] for r in case["rois"]] == ["CTV_Breast_L"]  # listed, not rasterised
    assert case["rois"][0]["volume_cc"] is None


def test_same_patient_in_two_case_folders(checked: tuple[int, dict[str, Any], Path]) -> None:
    _, report, _ = checked
    assert codes(report, None)["patient_in_several_cases"] == "warning"
    c01, c05 = case_of(report, "c01"), case_of(report, "c05")
    assert c01["patient"] == c05["patient"]
    assert c01["patient"].startswith("P-")
    assert len({c["patient"] for c in report["cases"]}) == 9  # 10 folders, 9 patients


def test_keyhole_and_xor_holes_give_the_analytic_volume(
    checked: tuple[int, dict[str, Any], Path],
) -> None:
    _, report, _ = checked
    found = structures_of(report, "c06")
    assert found["breast", "L"]["volume_cc"] == pytest.approx(HOLES_CC, abs=1e-9)
    (roi,) = case_of(report, "c06")["rois"]
    assert roi["contours"] == 2 * 3 + 2 * 2
    assert roi["interpreted_type"] == "CTV"
    # N1 without nodal structures: a warning only (sites differ)
    assert codes(report, "c06") == {"nodal_absent_node_positive": "warning"}


def test_name_contradicting_position(checked: tuple[int, dict[str, Any], Path]) -> None:
    _, report, _ = checked
    assert codes(report, "c07") == {"side_name_contradicts_position": "blocking"}
    (roi,) = case_of(report, "c07")["rois"]
    assert roi["left_share"] == 1.0


def test_contour_outside_the_body(checked: tuple[int, dict[str, Any], Path]) -> None:
    _, report, _ = checked
    assert codes(report, "c08") == {"outside_body": "blocking"}
    assert structures_of(report, "c08")["breast", "L"]["outside_body_fraction"] == 1.0


def test_tiny_and_unmatched_target(checked: tuple[int, dict[str, Any], Path]) -> None:
    _, report, _ = checked
    assert codes(report, "c09") == {"tiny_structure": "warning", "unmatched_target_roi": "warning"}
    assert structures_of(report, "c09")["imn", "L"]["volume_cc"] == pytest.approx(4 * VOXEL_CC)


def test_missing_and_stray_folders(checked: tuple[int, dict[str, Any], Path]) -> None:
    _, report, _ = checked
    assert codes(report, "c11") == {"case_folder_missing": "blocking"}
    assert codes(report, "stray") == {"folder_without_csv_row": "warning"}


def test_no_patient_identifiers_in_the_report(checked: tuple[int, dict[str, Any], Path]) -> None:
    _, report, out = checked
    # the case id "PAT-I_left" holds its PatientID: shown by its CSV line
    assert codes(report, "csv-line-11") == {}
    assert case_of(report, "csv-line-11")["structures"][0]["volume_cc"] == LEFT_BREAST_CC
    assert codes(report, None) == {
        "patient_in_several_cases": "warning",
        "case_id_holds_patient_id": "warning",
        "folder_without_csv_row": "warning",  # PAT-K: counted, not named
    }
    for name in ("inventory.json", "inventory.html"):
        text = (out / name).read_text()
        assert "PAT-" not in text
        assert "Doe" not in text


def test_nodal_tables(checked: tuple[int, dict[str, Any], Path]) -> None:
    _, report, _ = checked
    table = report["tables"]["n_stage"]
    # checked sides: c01 c03 c05 c07 c08 PAT-I (N0), c06 (N1), c09 (N1a), c02 (N2)
    assert table["N0"]["sides"] == 6
    assert table["N0"]["any_nodal"] == 0
    assert table["N1"] == {
        "sides": 2,
        "any_nodal": 1,
        "structures": {"breast": 2, "chest_wall": 0, "axilla": 0, "scf": 0, "imn": 1},
    }
    assert table["N2"]["structures"]["imn"] == 1
    assert report["tables"]["surgery"]["total_mastectomy"]["structures"]["chest_wall"] == 1


def test_html_lists_problems_first(checked: tuple[int, dict[str, Any], Path]) -> None:
    _, _, out = checked
    page = (out / "inventory.html").read_text()
    assert "BLOCKED" in page
    assert page.index("<h2>Problems</h2>") < page.index("<h2>Summary</h2>")
    assert page.index("frame_of_reference_mismatch") < page.index("<h2>Cases</h2>")
    assert "CTV_Boob_L" in page


def test_explicit_splits_with_one_patient_block(export: Path, tmp_path: Path) -> None:
    split_csv = tmp_path / "split.csv"
    write_csv(split_csv, [Row("c01", split="train"), Row("c05", split="validation")])
    status = run_check(export, tmp_path / "out", "--csv", str(split_csv))
    report = json.loads((tmp_path / "out" / "inventory.json").read_text())
    assert status == 1
    assert codes(report, None)["patient_in_several_splits"] == "blocking"
    assert [p["code"] for p in report["problems"] if p["severity"] == "blocking"] == [
        "patient_in_several_splits"
    ]
    assert case_of(report, "c05")["split"] == "val"


def test_clean_export_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    write_case(data, "a", {"CTV_Breast_L": LEFT_BREAST, "CTV_L": LEFT_BREAST}, patient="PAT-1")
    rois = {
        "CTV_Breast_L": LEFT_BREAST,
        "CTV_Breast_R": RIGHT_BREAST,
        "CTV_LN_Axilla": prism(10, 16, -15, -11) + prism(-17, -11, -15, -11),  # both sides
    }
    write_case(data, "b", rois, patient="PAT-2")
    write_csv(
        data / "clinical.csv",
        [
            Row("a"),
            Row(
                "b", side="left;right", surgery="breast_conserving;breast_conserving", n_stage="1;2"
            ),
        ],
    )
    assert run_check(data, tmp_path / "out", "--min-cc", "0.1") == 0
    printed = capsys.readouterr().out
    assert "0 blocking problems" in printed
    assert "PAT-" not in printed
    report = json.loads((tmp_path / "out" / "inventory.json").read_text())
    assert report["verdict"] == "pass"
    assert report["problems"] == []
    found = structures_of(report, "b")
    # one side-less ROI over both sides is split at the midline
    assert found["axilla", "L"]["volume_cc"] == pytest.approx(cc(7, 5))
    assert found["axilla", "R"]["volume_cc"] == pytest.approx(cc(7, 5))
    assert found["axilla", "L"]["side_from"] == "position"
    assert report["options"]["min_cc"] == 0.1


def test_min_cc_option_flags_small_structures(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_case(data, "a", {"CTV_Breast_L": LEFT_BREAST}, patient="PAT-1")
    write_csv(data / "clinical.csv", [Row("a")])
    assert run_check(data, tmp_path / "out", "--min-cc", "5") == 0  # a warning, not blocking
    report = json.loads((tmp_path / "out" / "inventory.json").read_text())
    assert codes(report, "a") == {"tiny_structure": "warning"}


def test_references_surgery_nodes_union_and_ambiguity(tmp_path: Path) -> None:
    data = tmp_path / "data"
    half = prism(5, 20, -10, -3)  # the union ROI holds half of the breast
    rois = {
        "CTV_Breast_L": LEFT_BREAST,
        "CTV_Ax_L": prism(10, 16, -15, -11),
        "CTVn_IMN_L": [],
        "CTV": half,
    }
    spec = write_case(data, "m1", rois, patient="PAT-M")
    (data / "m1" / "RS.dcm").rename(data / "m1" / "RS2.dcm")
    first = make_rtstruct(spec.frame_uid, {"CTV_Breast_L": LEFT_BREAST}, series_uid="1.2.3")
    first.PatientID = "PAT-M"
    first.save_as(data / "m1" / "RS1.dcm", enforce_file_format=True)  # first in file order
    write_csv(data / "clinical.csv", [Row("m1", surgery="total_mastectomy")])
    site_map = tmp_path / "map.toml"
    site_map.write_text(
        "[union]\npatterns = ['CTV']\n"
        "[structures.breast]\npatterns = ['CTV_Breast']\n"
        "[structures.chest_wall]\npatterns = ['CTV_CW']\n"
        "[structures.axilla]\npatterns = ['CTV_Ax']\n"
        "[structures.tumour_bed]\npatterns = ['CTV_Br*']\n"
    )
    assert run_check(data, tmp_path / "one", structure_map=site_map) == 1
    report = json.loads((tmp_path / "one" / "inventory.json").read_text())
    assert codes(report, "m1") == {
        "ambiguous_roi": "blocking",
        "several_rtstructs": "warning",
        "referenced_series_mismatch": "warning",
        "structure_vs_surgery": "warning",
    }
    (data / "m1" / "RS1.dcm").unlink()
    assert run_check(data, tmp_path / "two", "--min-cc", "0.1", structure_map=site_map) == 1
    report = json.loads((tmp_path / "two" / "inventory.json").read_text())
    assert codes(report, "m1") == {
        "ambiguous_roi": "blocking",
        "structure_vs_surgery": "warning",
        "nodal_present_node_negative": "warning",
        "union_differs_from_structures": "warning",
        "unmatched_target_roi": "warning",  # CTVn_IMN_L: no imn in this map
    }
    case = case_of(report, "m1")
    assert case["union"]["structures_covered"] == pytest.approx(
        cc(16, 8) / (LEFT_BREAST_CC + cc(7, 5)), abs=1e-4
    )
    assert case["union"]["union_covered"] == 1.0
    site_map.write_text(site_map.read_text() + "[structures.imn]\npatterns = ['CTVn_IMN']\n")
    assert run_check(data, tmp_path / "three", "--min-cc", "0.1", structure_map=site_map) == 1
    report = json.loads((tmp_path / "three" / "inventory.json").read_text())
    assert codes(report, "m1")["empty_roi"] == "warning"
    assert ("imn", "L") not in structures_of(report, "m1")


def test_missing_csv_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetError):
        run_check(tmp_path / "data", tmp_path / "out")


def test_every_problem_code_is_documented() -> None:
    doc = (REPO / "docs" / "dataset-check.md").read_text()
    for code, (severity, _) in PROBLEM_CODES.items():
        assert f"`{code}`" in doc, code
        assert isinstance(severity, Severity)


# --- RTSTRUCTs written by rt-utils --------------------------------------------------------------
def test_rt_utils_export(tmp_path: Path) -> None:
    """rt-utils writes an empty RTROIInterpretedType, one contour per boundary (holes as
    separate contours) or, with a pin hole, one keyhole contour through a 2-voxel cut."""
    rt_utils = pytest.importorskip("rt_utils")
    data = tmp_path / "data"
    write_case(data, "rtu", {}, patient="PAT-R")
    (data / "rtu" / "RS.dcm").unlink()
    builder = rt_utils.RTStructBuilder.create_new(dicom_series_path=str(data / "rtu" / "CT"))
    ring = np.zeros((64, 64, 8), dtype=bool)  # rt-utils order: (row j, column i, slice k)
    ring[22:38, 37:53, 2:6] = True  # x 5..20, y -10..5
    ring[27:33, 42:48, 2:6] = False  # a 6 x 6 hole
    builder.add_roi(mask=ring, name="CTV_Breast_L")
    keyhole_ring = np.zeros_like(ring)
    keyhole_ring[40:52, 38:50, 2:6] = True
    keyhole_ring[44:48, 42:46, 2:6] = False
    builder.add_roi(mask=keyhole_ring, name="CTVn_SCF_L", use_pin_hole=True)
    builder.save(str(data / "rtu" / "RS.dcm"))
    write_csv(data / "clinical.csv", [Row("rtu", n_stage="1")])

    assert run_check(data, tmp_path / "out", "--min-cc", "0.1") == 0
    report = json.loads((tmp_path / "out" / "inventory.json").read_text())
    assert {r["interpreted_type"] for r in case_of(report, "rtu")["rois"]} == {""}
    found = structures_of(report, "rtu")
    assert set(found) == {("breast", "L"), ("scf", "L")}

    ct = read_ct_series(data / "rtu" / "CT")
    structure_set = read_structure_set(data / "rtu" / "RS.dcm")
    assert len(structure_set.roi("CTVn_SCF_L").contours) == 4  # one keyhole contour per slice
    for name, drawn, hole in (
        ("CTV_Breast_L", ring, (slice(27, 33), slice(42, 48))),
        ("CTVn_SCF_L", keyhole_ring, (slice(44, 48), slice(42, 46))),
    ):
        mask = rasterize(structure_set, name, ct.volume.grid)
        given = drawn.transpose(2, 0, 1)
        # rt-utils traces the centres of the boundary voxels: what is read lies within what
        # was drawn, the hole stays empty, and at most the boundary voxels are lost
        assert not np.any(mask & ~given), name
        assert not np.any(mask[2:6][:, hole[0], hole[1]]), name
        lost = int(given.sum() - mask.sum())
        boundary = int((given & ~ndimage.binary_erosion(given, np.ones((1, 3, 3)))).sum())
        assert 0 < lost <= boundary, name
        structure = "breast" if name == "CTV_Breast_L" else "scf"
        assert found[structure, "L"]["volume_cc"] == pytest.approx(mask.sum() * VOXEL_CC)


# --- the rasteriser on holes, keyholes and several contours per slice ---------------------------
def _circle(radius: float, z: float, n: int = 720, clockwise: bool = False) -> Points:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    if clockwise:
        t = -t
    return [[radius * math.cos(a), radius * math.sin(a), z] for a in t]


def test_annulus_xor_and_keyhole_match_the_analytic_area() -> None:
    grid = Grid(shape=(3, 64, 64), origin=(-31.5, -31.5, 0.0), spacing=(2.0, 1.0, 1.0))
    frame = generate_uid()
    outer, inner = _circle(20.0, 2.0), _circle(8.0, 2.0, clockwise=True)
    key = [*outer, outer[0], inner[0], *inner, inner[0]]  # in along the +x axis and out again
    satellite = box(24, 27, 24, 27, 2.0)  # a second island on the same slice
    sets = {
        name: parse_structure_set(make_rtstruct(frame, {"R": contours}))
        for name, contours in {
            "xor": [outer, inner, satellite],
            "keyhole": [key, satellite],
        }.items()
    }
    masks = {
        name: rasterize(s, "R", grid, frame_of_reference_uid=frame) for name, s in sets.items()
    }
    np.testing.assert_array_equal(masks["xor"], masks["keyhole"])
    area = math.pi * (20.0**2 - 8.0**2) + 16.0
    assert int(masks["xor"].sum()) == pytest.approx(area, rel=0.01)
    assert not masks["xor"][1, 31, 31]  # the hole's centre
    assert masks["xor"][1].sum() == masks["xor"].sum()


# --- the structure map ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def example_map() -> StructureMap:
    return load_structure_map(EXAMPLE_MAP)


@pytest.mark.parametrize(
    ("name", "kind", "structure", "side"),
    [
        ("CTV_Breast_L", RoiKind.STRUCTURE, "breast", "L"),
        ("CTVp_Breast_Rt", RoiKind.STRUCTURE, "breast", "R"),
        ("CTV Breast Left", RoiKind.STRUCTURE, "breast", "L"),
        ("Lt_CTV_Breast", RoiKind.STRUCTURE, "breast", "L"),
        ("ctv_breast", RoiKind.STRUCTURE, "breast", None),
        ("CTV_ChestWall", RoiKind.STRUCTURE, "chest_wall", None),
        ("CTVn_L2_R", RoiKind.STRUCTURE, "axilla", "R"),
        ("CTVn_L4_L", RoiKind.STRUCTURE, "scf", "L"),
        ("CTV_LN_IMN", RoiKind.STRUCTURE, "imn", None),
        ("CTVn_Axilla_L1-3_Left", RoiKind.STRUCTURE, "axilla", "L"),
        ("CTV", RoiKind.UNION, None, None),
        ("CTV_Total_R", RoiKind.UNION, None, "R"),
        ("PTV_Breast_L", RoiKind.IGNORED, None, None),
        ("BODY", RoiKind.IGNORED, None, None),
        ("z_ring", RoiKind.IGNORED, None, None),
        ("CTV_Boost_L", RoiKind.IGNORED, None, None),
        ("Heart", RoiKind.UNMATCHED, None, None),
    ],
)
def test_classify_site_names(
    example_map: StructureMap, name: str, kind: RoiKind, structure: str | None, side: str | None
) -> None:
    found = example_map.classify(name)
    assert (found.kind, found.structure, found.side) == (kind, structure, side)


def test_map_sides_and_ambiguity() -> None:
    smap = parse_structure_map(
        """
        [sides]
        suffixes = [["_Li", "_Re"]]
        [structures.breast]
        patterns = ["Brust*"]
        [structures.boost]
        patterns = ["re:brust.?tb"]
        """
    )
    assert smap.split_side("Brust_Li") == ("Brust", "L")
    assert smap.split_side("Brust_L") == ("Brust_L", None)  # only the listed forms
    found = smap.classify("BrustTB_Re")
    assert (found.structure, found.side, found.also) == ("breast", "R", ("boost",))
    assert smap.nodal_names == ()


def test_breast_example_roi_names(example_map: StructureMap) -> None:
    """A clinical breast RTSTRUCT (dicompyler's example): PTV/BODY/boost ignored, none mapped."""
    if not (BREAST_DIR / "rtss.dcm").is_file():
        pytest.skip("shared breast example absent")
    rois = read_structure_set(BREAST_DIR / "rtss.dcm").rois
    kinds = {roi.name: example_map.classify(roi.name).kind for roi in rois}
    assert kinds["BODY"] is RoiKind.IGNORED
    assert kinds["Tumor Bed"] is RoiKind.IGNORED
    assert kinds["Lt Lung"] is RoiKind.UNMATCHED
    assert RoiKind.STRUCTURE not in kinds.values()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[structures.breast]\npatterns = ['re:ctv(']", "invalid regular expression"),
        ("[structures.breast]\npatterns = []", "non-empty list"),
        ("[structures.breast]\npatterns = ['CTV_B']\ncolour = 1", "unknown keys"),
        ("[structures.Breast]\npatterns = ['CTV_B']", "structure name"),
        ("[structures.breast]\npatterns = ['CTV_B']\nnodal = 'yes'", "true or false"),
        ("[structures.a]\npatterns = ['X']\n[structures.b]\npatterns = ['x']", "both"),
        ("[union]\npatterns = ['CTV']", "no \\[structures"),
        ("version = 2\n[structures.a]\npatterns = ['X']", "version"),
        ("[sides]\nsuffixes = [['_L']]\n[structures.a]\npatterns = ['X']", "pair"),
        ("[sides]\nsuffixes = [['_L', '_l']]\n[structures.a]\npatterns = ['X']", "pair"),
        ("[structures.a]\npatterns = ['X']\n[ignore]\npattern = ['Y']", "unknown keys"),
        ("structures = [", "not valid TOML"),
        ("typo = 1\n[structures.a]\npatterns = ['X']", "unknown keys"),
    ],
)
def test_invalid_maps_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        parse_structure_map(text, source="site.toml")
    assert info.value.code == "invalid_configuration"
    assert "site.toml" in info.value.detail


def test_invalid_map_file_stops_the_command(tmp_path: Path) -> None:
    bad = tmp_path / "map.toml"
    bad.write_text("[structures.breast]\npatterns = 'CTV'\n")
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigurationError):
        run_check(tmp_path / "data", tmp_path / "out", structure_map=bad)
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_structure_map(tmp_path / "missing.toml")


def test_options_are_validated() -> None:
    with pytest.raises(ConfigurationError):
        CheckOptions(min_cc=-1.0)
    with pytest.raises(ConfigurationError):
        CheckOptions(outside_warn=0.5, outside_block=0.2)


# --- real data ----------------------------------------------------------------------------------
@pytest.fixture
def lung1_export(tmp_path: Path) -> Path:
    if not (LUNG1_DIR / "image").is_dir():
        pytest.skip("shared LUNG1 data absent")
    case = tmp_path / "data" / "lung1"
    (case / "image").mkdir(parents=True)
    for path in sorted((LUNG1_DIR / "image").glob("*.dcm")):
        (case / "image" / path.name).symlink_to(path)
    (case / "RS.dcm").symlink_to(LUNG1_DIR / "mask_rtstruct" / "1-1.dcm")
    write_csv(
        tmp_path / "data" / "clinical.csv",
        [
            Row(
                "lung1",
                side="left;right",
                surgery="breast_conserving;breast_conserving",
                n_stage="0;0",
            )
        ],
    )
    return tmp_path / "data"


def test_lung1_clinical_export(lung1_export: Path, tmp_path: Path) -> None:
    """A clinical CT and RTSTRUCT (LUNG1-001): names with '-Left'/'-Right' agree with the
    midline; lungs have adult volumes, inside the body."""
    lung_map = tmp_path / "lungs.toml"
    lung_map.write_text(
        "[sides]\nsuffixes = [['-Left', '-Right']]\n"
        "[ignore]\npatterns = ['GTV*', 'Spinal*']\n"
        "[structures.lung]\npatterns = ['Lung']\n"
    )
    status = run_check(lung1_export, tmp_path / "out", structure_map=lung_map)
    report = json.loads((tmp_path / "out" / "inventory.json").read_text())
    assert report["problems"] == []
    assert status == 0
    found = structures_of(report, "lung1")
    left, right = found["lung", "L"], found["lung", "R"]
    assert 1500.0 < left["volume_cc"] < right["volume_cc"] < 4000.0
    assert max(left["outside_body_fraction"], right["outside_body_fraction"]) < 0.01
    shares = {r["name"]: r["left_share"] for r in case_of(report, "lung1")["rois"]}
    assert shares["Lung-Left"] > 0.99
    assert shares["Lung-Right"] < 0.01
    assert shares["GTV-1"] is None  # ignored ROIs are not rasterised


def test_breast_example_with_one_ct_slice_is_reported(tmp_path: Path) -> None:
    """dicompyler's breast export ships 1 of its 98 CT slices: a blocking finding, no crash."""
    if not (BREAST_DIR / "rtss.dcm").is_file():
        pytest.skip("shared breast example absent")
    case = tmp_path / "data" / "breast"
    case.mkdir(parents=True)
    for name in ("ct.0.dcm", "rtss.dcm", "rtplan.dcm"):
        (case / name).symlink_to(BREAST_DIR / name)
    write_csv(tmp_path / "data" / "clinical.csv", [Row("breast")])
    assert run_check(tmp_path / "data", tmp_path / "out") == 1
    report = json.loads((tmp_path / "out" / "inventory.json").read_text())
    assert codes(report, "breast") == {"ct_unreadable": "blocking"}
    detail = report["problems"][0]["detail"]
    assert detail.startswith("[too_few_slices]")
