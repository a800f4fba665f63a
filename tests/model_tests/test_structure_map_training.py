"""Training and evaluation take the site's structure map; patients never straddle the split.

A tiny synthetic department (three phantoms at scale 0.125) is written twice: once with the
phantom's own ROI names (``CTV``, ``CTV_Breast``, ``CTV_LN_Axilla``...) and once as a foreign
site exports it, written the rt-utils way (empty RTROIInterpretedType), with the example map's
conventions: sides in the names (``CTV_Breast_Lt``, ``CTVp_CW Right``, ``Lt_CTVn_IMN``), the
axilla as three ESTRO level ROIs that overlap on one slice (``CTVn_L1_L``...), the union ROI
``CTV_Total``, and ROIs to ignore (a PTV larger than the breast, ``BODY``, a ``z_`` helper).
The training targets of both must be the same voxels, per structure and side.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from factories import make_rtstruct

from model.cli import main
from model.dataset.inventory import check_dataset
from model.dataset.structure_map import StructureMap, load_structure_map
from model.dataset.structure_targets import map_from_meta, structure_side_masks
from model.dicom.rtstruct.reader import RoiRule, StructureSet, read_structure_set
from model.dicom.series import read_ct_series
from model.errors import DatasetError, RoiNotFoundError
from model.imaging.postprocessing import body_mask, midline_x
from model.imaging.preprocessing import PreprocessConfig
from model.lab.phantoms.case import generate_case
from model.lab.phantoms.cohort import write_case
from model.network.checkpoint import load_checkpoint
from model.network.structures import BREAST_STRUCTURES, PHANTOM_ROI_PATTERNS
from model.text.clinical import ClinicalRecord, parse_clinical, write_clinical_csv
from model.training.dataset import (
    TargetRule,
    build_cache,
    iter_cases,
    load_cached,
    load_case,
    patient_salt,
)
from model.training.trainer import split_cases

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_MAP = REPO / "deploy" / "structure-map.example.toml"
SPACING = ("6", "8", "8")
PRE = PreprocessConfig(target_spacing=(6.0, 8.0, 8.0))
PHANTOM_TARGET = TargetRule(
    structures=tuple((n, RoiRule(include=p)) for n, p in PHANTOM_ROI_PATTERNS.items())
)


def _diagnosis(side: str, surgery: str, n_stage: str) -> dict[str, str]:
    return {"side": side, "surgery": surgery, "t_stage": "2", "n_stage": n_stage}


RECORDS = {
    "S0001": [_diagnosis("left", "breast_conserving", "1")],
    "S0002": [_diagnosis("right", "total_mastectomy", "0")],
    "S0003": [
        _diagnosis("left", "breast_conserving", "2"),
        _diagnosis("right", "breast_conserving", "0"),
    ],
}
#: The (structure, side) pairs each case's ground truth holds.
EXPECTED = {
    "S0001": {("breast", "L"), ("axilla", "L"), ("scf", "L"), ("imn", "L")},
    "S0002": {("chest_wall", "R")},
    "S0003": {("breast", "L"), ("breast", "R"), ("axilla", "L"), ("scf", "L"), ("imn", "L")},
}

Points = list[list[float]]


def _foreign_name(name: str, side: str) -> str:
    left = side == "L"
    return {
        "CTV_Breast": "CTV_Breast_Lt" if left else "CTV_Breast_Rt",
        "CTV_ChestWall": "CTVp_CW Left" if left else "CTVp_CW Right",
        "CTV_LN_SCF": f"CTVn_L4_{side}",
        "CTV_LN_IMN": "Lt_CTVn_IMN" if left else "Rt_CTVn_IMN",
    }[name]


def _foreign_rois(phantom: StructureSet, mid_x: float) -> dict[str, list[Points]]:
    """The phantom's ROIs under the foreign site's names, plus ROIs the map must ignore."""
    rois: dict[str, list[Points]] = {}
    for roi in phantom.rois:
        contours = [c.points for c in roi.contours]
        if roi.name == "CTV":
            rois["CTV_Total"] = [p.tolist() for p in contours]
            continue
        for side in ("L", "R"):  # LPS +x is the patient's left
            mine = [p for p in contours if (float(np.mean(p[:, 0])) > mid_x) == (side == "L")]
            if not mine:
                continue
            if roi.name == "CTV_LN_Axilla":  # three level ROIs, L2 and L3 share one slice
                zs = sorted({round(float(p[0, 2]), 3) for p in mine})
                cut1, cut2 = zs[len(zs) // 3], zs[2 * len(zs) // 3]
                levels = {
                    1: [p for p in mine if p[0, 2] < cut1],
                    2: [p for p in mine if cut1 <= p[0, 2] <= cut2],
                    3: [p for p in mine if p[0, 2] >= cut2],
                }
                for level, part in levels.items():
                    if part:
                        rois[f"CTVn_L{level}_{side}"] = [p.tolist() for p in part]
                continue
            rois[_foreign_name(roi.name, side)] = [p.tolist() for p in mine]
            if roi.name == "CTV_Breast":  # a PTV 10 mm wider than the breast, to be ignored
                rois[f"PTV_Breast_{side}"] = [_grown(p, 10.0) for p in mine]
    first = phantom.rois[0].contours[0].points
    z = float(first[0, 2])
    rois["BODY"] = [
        [[-300.0, -300.0, z], [300.0, -300.0, z], [300.0, 300.0, z], [-300.0, 300.0, z]]
    ]
    rois["z_CTV_helper"] = [_grown(first, 20.0)]
    return rois


def _grown(points: npt.NDArray[np.float64], mm: float) -> Points:
    """The bounding box of a planar contour, grown by ``mm``."""
    (x0, y0), (x1, y1) = points[:, :2].min(axis=0) - mm, points[:, :2].max(axis=0) + mm
    z = float(points[0, 2])
    return [[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]]


def _export_foreign(phantom_dir: Path, out: Path) -> None:
    for case_id in RECORDS:
        source = phantom_dir / case_id
        shutil.copytree(source / "ct", out / case_id / "CT")
        ct = read_ct_series(source / "ct")
        mid_x = midline_x(body_mask(ct.volume), ct.volume.grid)
        rois = _foreign_rois(read_structure_set(source / "rtstruct.dcm"), mid_x)
        ds = make_rtstruct(
            ct.frame_of_reference_uid,
            rois,
            types=dict.fromkeys(rois, ""),  # rt-utils leaves RTROIInterpretedType empty
            series_uid=ct.series_instance_uid,
        )
        ds.PatientID = str(ct.datasets[0].PatientID)
        ds.save_as(out / case_id / "RS_foreign.dcm", enforce_file_format=True)
    shutil.copy(phantom_dir / "clinical.csv", out / "clinical.csv")


@pytest.fixture(scope="module")
def department(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(phantom names, foreign names)``: the same three cases, two naming conventions."""
    root = tmp_path_factory.mktemp("department")
    phantom, foreign = root / "phantom", root / "foreign"
    rows: list[tuple[str, ClinicalRecord]] = []
    for seed, (case_id, diagnoses) in enumerate(RECORDS.items(), start=11):
        record = parse_clinical({"diagnoses": diagnoses})
        write_case(generate_case(case_id, "A", seed, 0.125, clinical=record), phantom / case_id)
        rows.append((case_id, record))
    write_clinical_csv(phantom / "clinical.csv", rows)
    _export_foreign(phantom, foreign)
    return phantom, foreign


@pytest.fixture(scope="module")
def example_map() -> StructureMap:
    return load_structure_map(EXAMPLE_MAP)


def _structure_set(case_dir: Path) -> StructureSet:
    (path,) = [p for p in case_dir.glob("*.dcm")]
    return read_structure_set(path)


def test_map_targets_equal_the_phantom_names_per_structure_and_side(
    department: tuple[Path, Path], example_map: StructureMap
) -> None:
    phantom, foreign = department
    by_map = TargetRule.from_structure_map(example_map)
    assert by_map.structure_names == BREAST_STRUCTURES
    for case_id, folder, record in iter_cases(foreign):
        names = set(_structure_set(folder).roi_names)
        assert {"CTV_Total", "BODY", "z_CTV_helper"} <= names and "CTV" not in names
        mine = load_case(folder, record, by_map)
        theirs = load_case(phantom / case_id, record, PHANTOM_TARGET)
        assert mine.mask.dtype == np.uint8
        assert np.array_equal(mine.mask, theirs.mask), case_id
        volume = mine.ct.volume
        sided = structure_side_masks(_structure_set(folder), volume, example_map)
        reference = structure_side_masks(
            read_structure_set(phantom / case_id / "rtstruct.dcm"), volume, example_map
        )
        assert set(sided) == set(reference) == EXPECTED[case_id], case_id
        for key, mask in sided.items():
            assert np.array_equal(mask, reference[key]), (case_id, key)
        # The label classes are the structures (the first listed wins where two overlap).
        claimed = np.zeros(volume.grid.shape, bool)
        for index, structure in enumerate(BREAST_STRUCTURES, start=1):
            mask = np.zeros(volume.grid.shape, bool)
            for (name, _), part in sided.items():
                mask |= part if name == structure else False
            assert np.array_equal(mine.mask == index, mask & ~claimed), (case_id, structure)
            claimed |= mask
        assert np.array_equal(claimed, mine.mask > 0), "the union ROI and the PTV add nothing"


def test_patterns_without_the_map_get_the_foreign_names_wrong(
    department: tuple[Path, Path],
) -> None:
    _, foreign = department
    (_, folder, record), *_ = iter_cases(foreign)
    # The phantom's patterns find no structure among the site's names: an empty label.
    assert not load_case(folder, record, PHANTOM_TARGET).mask.any()
    with pytest.raises(RoiNotFoundError):  # the default CTV rule finds no ROI named CTV
        load_case(folder, record, RoiRule(include=(r"^ctv$",)))
    naive = TargetRule(structures=(("breast", RoiRule(include=("breast",))),), union=RoiRule())
    mapped = TargetRule.from_structure_map(load_structure_map(EXAMPLE_MAP))
    wide = load_case(folder, record, naive).mask == 1
    exact = load_case(folder, record, mapped).mask == 1
    assert wide.sum() > exact.sum() and np.all(wide[exact]), "a regex takes the PTV in"


def test_the_check_and_the_training_read_the_export_alike(
    department: tuple[Path, Path], example_map: StructureMap
) -> None:
    _, foreign = department
    inventory = check_dataset(foreign, example_map)
    assert inventory.blocking == [], [(p.code, p.case, p.detail) for p in inventory.blocking]
    # The phantoms' case ids are their PatientIDs: the report shows them by CSV line.
    shown = {f"csv-line-{line}": case_id for line, case_id in enumerate(RECORDS, start=2)}
    for case in inventory.cases:
        found = {(s.structure, s.side) for s in case.structures}
        assert found == EXPECTED[shown[case.case_id]], case.case_id
        assert case.union is not None and case.union["rois"] == ["CTV_Total"]


def test_train_and_evaluate_take_the_structure_map(
    department: tuple[Path, Path], example_map: StructureMap, tmp_path: Path
) -> None:
    phantom, foreign = department
    run = tmp_path / "run"
    train = ["train", "--data", str(foreign), "--out", str(run), "--preset", "tiny"]
    train += ["--text-encoder", "tiny-llama", "--epochs", "1", "--steps-per-epoch", "1"]
    train += ["--spacing", *SPACING, "--device", "cpu", "--structure-map", str(EXAMPLE_MAP)]
    assert main(train) == 0
    ckpt = load_checkpoint(run / "best")
    assert ckpt.config.structures == BREAST_STRUCTURES
    assert ckpt.meta["structure_map"]["sha256"] == example_map.digest
    assert ckpt.meta["roi_rule"] is None
    stored = map_from_meta(ckpt.meta)
    assert stored is not None and stored.structures == example_map.structures

    # The network-grid targets the run trained on equal those of the phantom's own names.
    build_cache(phantom, tmp_path / "reference", rule=PHANTOM_TARGET, preprocess=PRE)
    trained = {c.case_id: c for c in load_cached(run / "cache")}
    reference = {c.case_id: c for c in load_cached(tmp_path / "reference")}
    assert sorted(trained) == sorted(reference) == sorted(RECORDS)
    for case_id, case in trained.items():
        assert np.array_equal(case.label, reference[case_id].label), case_id
        assert set(np.unique(case.label)) > {0}

    # Evaluation: the map's structures are the reference CTV, as `CTV` is for the phantom.
    reports = {}
    for name, data, extra in (
        ("foreign", foreign, ["--structure-map", str(EXAMPLE_MAP)]),
        ("phantom", phantom, []),
    ):
        out = tmp_path / name
        argv = ["evaluate", "--data", str(data), "--model", f"m={run / 'best'}"]
        assert main([*argv, "--out", str(out), "--device", "cpu", *extra]) == 0
        reports[name] = json.loads((out / "report.json").read_text())["models"]["m"]["cases"]
    assert len(reports["foreign"]) == 3
    assert reports["foreign"] == reports["phantom"]


def test_structure_map_and_structure_patterns_exclude_each_other(
    department: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, foreign = department
    argv = ["train", "--data", str(foreign), "--out", str(tmp_path / "run"), "--preset", "tiny"]
    argv += ["--structure-map", str(EXAMPLE_MAP), "--structure", "phantom"]
    assert main(argv) == 2
    assert "error [invalid_configuration]" in capsys.readouterr().err


SECRET = "MRN-4711-SECRET"


def _set_patient(case_dir: Path, patient_id: str) -> None:
    for path in case_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PatientID = patient_id
        ds.save_as(path)


def test_cases_of_one_patient_share_a_hashed_label_and_a_split(
    department: tuple[Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    phantom, _ = department
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    _set_patient(data / "S0001", SECRET)  # two CT series of one patient
    _set_patient(data / "S0003", SECRET)
    _set_patient(data / "S0002", "MRN-0815-OTHER")
    cache = tmp_path / "cache"
    with caplog.at_level(logging.DEBUG):
        report = build_cache(data, cache, rule=PHANTOM_TARGET, preprocess=PRE)
        print(report.summary())
        cases = {c.case_id: c for c in load_cached(cache)}
    assert len({c.group for c in cases.values()}) == 3, "three CT series"
    assert cases["S0001"].patient == cases["S0003"].patient != cases["S0002"].patient
    assert all(c.patient.startswith("P-") and len(c.patient) == 18 for c in cases.values())
    assert SECRET not in caplog.text + "".join(capsys.readouterr())
    for path in cache.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path.name
    assert (cache / ".patient-salt").stat().st_mode & 0o077 == 0, "owner-only salt"
    for seed in range(8):
        train, val = split_cases(list(cases.values()), 0.34, seed=seed)
        val_ids = {c.case_id for c in val}
        assert len(train) + len(val) == 3
        assert ("S0001" in val_ids) == ("S0003" in val_ids), seed
    again = build_cache(data, cache, rule=PHANTOM_TARGET, preprocess=PRE)
    assert again.built == [] and sorted(again.reused) == sorted(RECORDS), "the salt is kept"
    assert {c.case_id: c.patient for c in load_cached(cache)} == {
        k: c.patient for k, c in cases.items()
    }


def test_the_patient_salt_is_kept_and_a_foreign_file_refused(tmp_path: Path) -> None:
    first = patient_salt(tmp_path)
    assert len(first) == 16 and patient_salt(tmp_path) == first
    assert [p.name for p in tmp_path.iterdir()] == [".patient-salt"], "no temporary file left"
    (tmp_path / ".patient-salt").write_text("not hex")
    with pytest.raises(DatasetError):
        patient_salt(tmp_path)
