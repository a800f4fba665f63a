"""Tests of model.lab.phantoms: synthetic breast-RT cases (spec v1.1), LPS mm, arrays (k, j, i)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from scipy.ndimage import distance_transform_edt

from model.cli import main as cli_main
from model.dicom.rtstruct.reader import rasterize, read_structure_set
from model.dicom.series import read_ct_series
from model.errors import ConfigurationError
from model.lab.phantoms import (
    LATERALITY_FLIP,
    N_SWITCH,
    PhantomCase,
    case_seed,
    generate_case,
    get_site,
    perturb,
    write_cohort,
)
from model.lab.phantoms.anatomy import Anatomy
from model.lab.phantoms.case import eligible_perturbations
from model.lab.phantoms.cohort import case_id_for
from model.lab.phantoms.params import PhantomParams, randomise_domain, sample_params
from model.lab.phantoms.render import render_hu
from model.lab.phantoms.rules import (
    ROI_AXILLA,
    ROI_BREAST,
    ROI_CHEST_WALL,
    ROI_CTV,
    ROI_IMN,
    ROI_SCF,
    ctv_masks,
)
from model.lab.phantoms.sites import sample_clinical
from model.text.clinical import ClinicalRecord, Diagnosis, Side, Surgery, read_clinical_csv

SCALE = 0.25
NODES = (ROI_AXILLA, ROI_SCF, ROI_IMN)
N_STAGES = ("0", "1mi", "1", "2", "3")
OTHER = {Side.LEFT: Side.RIGHT, Side.RIGHT: Side.LEFT}


def record(*diagnoses: tuple[Side, Surgery, str]) -> ClinicalRecord:
    """A record with one diagnosis per (side, surgery, N) triple."""
    return ClinicalRecord(
        diagnoses=tuple(
            Diagnosis(side=side, surgery=surgery, t_stage="2", n_stage=n)
            for side, surgery, n in diagnoses
        ),
        age=60,
    )


def make(
    *diagnoses: tuple[Side, Surgery, str], seed: int = 5, site: str = "A", scale: float = SCALE
) -> PhantomCase:
    return generate_case("T0001", site, seed, scale, clinical=record(*diagnoses))


def x_of_columns(case: PhantomCase) -> npt.NDArray[np.float64]:
    """LPS x (mm) of every column ``i`` (axial grid, identity direction)."""
    ni = case.grid.shape[2]
    return case.grid.origin[0] + case.grid.spacing[2] * np.arange(ni, dtype=np.float64)


def centroid_x(case: PhantomCase, mask: npt.NDArray[np.bool_]) -> float:
    return float(x_of_columns(case)[np.nonzero(mask)[2]].mean())


def skin_depth_full(case: PhantomCase) -> npt.NDArray[np.float64]:
    """Reference skin depth over the whole volume (mm), to check the cropped one."""
    return np.asarray(distance_transform_edt(case.anatomy.body, sampling=case.grid.spacing))


# --- geometry --------------------------------------------------------------------------------
@pytest.mark.parametrize("site", ["A", "B"])
def test_grid_extent_in_mm_does_not_depend_on_scale(site: str) -> None:
    small = generate_case("G0001", site, 21, 0.125)
    large = generate_case("G0001", site, 21, 0.5)
    ps = small.anatomy.params.scanner.pixel_spacing
    assert small.anatomy.params == large.anatomy.params
    assert small.clinical == large.clinical
    assert small.grid.shape[1:] == (64, 64)
    assert large.grid.shape[1:] == (256, 256)
    for case in (small, large):
        extent = [n * sp for n, sp in zip(case.grid.shape, case.grid.spacing, strict=True)]
        assert extent[1] == pytest.approx(512 * ps, abs=1e-3)
        assert extent[2] == pytest.approx(512 * ps, abs=1e-3)
        centre = case.grid.index_to_lps(
            [0, (case.grid.shape[1] - 1) / 2, (case.grid.shape[2] - 1) / 2]
        )
        assert centre[:2] == pytest.approx([0.0, 0.0], abs=1e-3)
    assert small.grid.shape[0] == large.grid.shape[0]
    assert small.grid.origin[2] == large.grid.origin[2]
    for name, cc in small.volumes_cc().items():
        assert large.volumes_cc()[name] == pytest.approx(cc, rel=0.15), name


def test_body_centre_shift_and_scan_extent_follow_the_spec() -> None:
    profile = get_site("A")
    for seed in range(200):
        params = sample_params(np.random.default_rng(seed), profile)
        body = params.body
        assert abs(body.cx) <= 20 and abs(body.cy) <= 20
        assert 140 <= body.a <= 190 and 95 <= body.b <= 130
        assert 8 <= body.fat <= 25 and 8 <= body.pectoralis <= 15
        top = max(b.top for b in params.breasts.values())
        bottom = min(b.bottom for b in params.breasts.values())
        assert 70 <= params.scan_top - top <= 100
        assert 20 <= bottom - params.scan_bottom <= 40
        for breast in params.breasts.values():
            assert 90 <= breast.length <= 150 and 25 <= breast.projection <= 80
            assert 0.45 <= breast.centre_frac <= 0.6
            assert breast.radius <= min(80.0, breast.centre_frac * body.a - 15.0) + 1e-9


def test_body_mask_is_centred_on_the_shifted_body_centre() -> None:
    case = make((Side.LEFT, Surgery.BREAST_CONSERVING, "0"))
    body = case.anatomy.params.body
    top_slice = case.anatomy.body[-1]  # above both breasts: the bare elliptic cylinder
    cols = np.nonzero(top_slice.any(axis=0))[0]
    rows = np.nonzero(top_slice.any(axis=1))[0]
    x = x_of_columns(case)
    y = case.grid.origin[1] + case.grid.spacing[1] * np.arange(case.grid.shape[1])
    spacing = case.grid.spacing[2]
    assert (x[cols[0]] + x[cols[-1]]) / 2 == pytest.approx(body.cx, abs=spacing)
    assert (y[rows[0]] + y[rows[-1]]) / 2 == pytest.approx(body.cy, abs=spacing)
    assert (x[cols[-1]] - x[cols[0]]) / 2 == pytest.approx(body.a, abs=spacing)


# --- the CTV rule --------------------------------------------------------------------------------
@pytest.mark.parametrize("side", [Side.LEFT, Side.RIGHT])
@pytest.mark.parametrize("surgery", [Surgery.BREAST_CONSERVING, Surgery.TOTAL_MASTECTOMY])
@pytest.mark.parametrize("n_stage", N_STAGES)
def test_ctv_rule(side: Side, surgery: Surgery, n_stage: str) -> None:
    case = make((side, surgery, n_stage), seed=7)
    masks, anatomy = case.masks, case.anatomy
    conserving = surgery is Surgery.BREAST_CONSERVING
    node_positive = n_stage not in ("0", "1mi")
    assert (ROI_BREAST in masks) is conserving
    assert (ROI_CHEST_WALL in masks) is not conserving
    for name in NODES:
        assert (name in masks) is node_positive, name
    union = np.zeros(case.grid.shape, dtype=bool)
    for name, mask in masks.items():
        assert mask.dtype == bool and mask.shape == case.grid.shape and mask.any(), name
        if name != ROI_CTV:
            union |= mask
    assert np.array_equal(masks[ROI_CTV], union)
    # every CTV voxel lies on the named side of the body's midline (LPS: +x = left)
    x = x_of_columns(case)[np.nonzero(masks[ROI_CTV])[2]]
    cx = anatomy.params.body.cx
    assert np.all(x > cx) if side is Side.LEFT else np.all(x < cx)
    assert not (masks[ROI_CTV] & ~anatomy.body).any()
    # the contralateral breast is on the CT and not in the CTV
    other = OTHER[side]
    assert anatomy.breast_present(other)
    assert (anatomy.breasts[other] & anatomy.body).sum() > 1000
    assert not (anatomy.breasts[other] & masks[ROI_CTV]).any()
    # mastectomy: nothing of the body stands in front of the chest on that side
    beyond_chest = anatomy.body & (anatomy.surface.depth < 0)[None]
    beyond_chest &= anatomy.breasts[side]
    assert bool(beyond_chest.any()) is conserving
    assert anatomy.breast_present(side) is conserving


def test_ctv_respects_the_skin_margins_and_the_ribs() -> None:
    conserving = make((Side.LEFT, Surgery.BREAST_CONSERVING, "1"), seed=3)
    mastectomy = make((Side.RIGHT, Surgery.TOTAL_MASTECTOMY, "0"), seed=3)
    depth = skin_depth_full(conserving)
    breast = conserving.masks[ROI_BREAST]
    assert depth[breast].min() >= 5.0
    # the cropped transform decides exactly as a whole-volume one
    candidates = conserving.anatomy.breasts[Side.LEFT] & conserving.anatomy.body
    assert np.array_equal(breast, candidates & (depth >= 5.0))
    depth = skin_depth_full(mastectomy)
    wall = mastectomy.masks[ROI_CHEST_WALL]
    assert depth[wall].min() >= 3.0
    body = mastectomy.anatomy.params.body
    above_ribs = mastectomy.anatomy.surface.depth < body.fat + body.pectoralis
    assert not (wall & ~above_ribs[None]).any()


def test_bilateral_case_treats_both_sides_by_their_own_rule() -> None:
    case = make(
        (Side.LEFT, Surgery.BREAST_CONSERVING, "2"), (Side.RIGHT, Surgery.TOTAL_MASTECTOMY, "0")
    )
    cx = case.anatomy.params.body.cx
    assert centroid_x(case, case.masks[ROI_BREAST]) > cx
    assert centroid_x(case, case.masks[ROI_CHEST_WALL]) < cx
    for name in NODES:
        x = x_of_columns(case)[np.nonzero(case.masks[name])[2]]
        assert np.all(x > cx), name
    assert case.clinical.prompt_text().count("; ") == 1
    assert eligible_perturbations(case.clinical) == ()


def test_nodal_regions_follow_the_breast() -> None:
    case = make((Side.RIGHT, Surgery.BREAST_CONSERVING, "1"), seed=9)
    z = case.grid.origin[2] + case.grid.spacing[0] * np.arange(case.grid.shape[0])
    breast = case.anatomy.params.breasts[Side.RIGHT]
    body = case.anatomy.params.body
    ks = {name: z[np.nonzero(case.masks[name].any(axis=(1, 2)))[0]] for name in NODES}
    step = case.grid.spacing[0]
    assert ks[ROI_AXILLA].min() >= breast.top - breast.length / 3 - step
    assert ks[ROI_AXILLA].max() <= breast.top + 60 + step
    assert ks[ROI_SCF].min() >= breast.top + 20 - step
    assert ks[ROI_SCF].max() <= breast.top + 70 + step
    assert ks[ROI_IMN].min() >= breast.top - 0.6 * breast.length - step
    assert ks[ROI_IMN].max() <= breast.top + step
    y = case.grid.origin[1] + case.grid.spacing[1] * np.arange(case.grid.shape[1])
    assert np.all(y[np.nonzero(case.masks[ROI_AXILLA])[1]] < body.cy)


# --- determinism and profiles ----------------------------------------------------------------
def test_same_seed_same_case_and_different_seed_different_case() -> None:
    first = generate_case("D0001", "B", 1234, SCALE)
    again = generate_case("D0001", "B", 1234, SCALE)
    other = generate_case("D0001", "B", 1235, SCALE)
    assert first.hu.tobytes() == again.hu.tobytes()
    assert first.masks.keys() == again.masks.keys()
    assert all(np.array_equal(first.masks[k], again.masks[k]) for k in first.masks)
    assert first.uids == again.uids
    assert first.clinical == again.clinical
    assert first.hu.shape != other.hu.shape or first.hu.tobytes() != other.hu.tobytes()
    assert first.uids.study != other.uids.study
    assert set(first.uids.instances).isdisjoint(other.uids.instances)


@pytest.mark.parametrize("site", ["A", "B"])
def test_scanner_profile_ranges(site: str) -> None:
    profile = get_site(site)
    for seed in range(100):
        scanner = sample_params(np.random.default_rng(seed), profile).scanner
        assert profile.pixel_spacing[0] <= scanner.pixel_spacing <= profile.pixel_spacing[1]
        assert scanner.slice_thickness in profile.slice_thicknesses
        assert profile.noise_sigma[0] <= scanner.noise_sigma <= profile.noise_sigma[1]
        assert profile.hu_offset[0] <= scanner.hu_offset <= profile.hu_offset[1]
    expected = {"A": ((0.9, 1.1), (3.0,)), "B": ((1.1, 1.4), (2.5, 5.0))}[site]
    assert (profile.pixel_spacing, profile.slice_thicknesses) == expected


@pytest.mark.parametrize(
    ("site", "both", "n0", "n_positive", "mastectomy"),
    [("A", 0.04, 0.40, 0.54, 0.34), ("B", 0.0, 0.66, 0.30, 0.09)],
)
def test_clinical_mix_follows_the_site(
    site: str, both: float, n0: float, n_positive: float, mastectomy: float
) -> None:
    rng = np.random.default_rng(0)
    records = [sample_clinical(rng, get_site(site)) for _ in range(3000)]
    diagnoses = [d for r in records for d in r.diagnoses]
    share_both = np.mean([len(r.diagnoses) == 2 for r in records])
    share_left = np.mean(
        [r.diagnoses[0].side is Side.LEFT for r in records if len(r.diagnoses) == 1]
    )
    assert share_both == pytest.approx(both, abs=0.015)
    assert share_left == pytest.approx(0.5 / (1 - both) if both else 0.5, abs=0.04)
    assert np.mean([d.n_stage == "0" for d in diagnoses]) == pytest.approx(n0, abs=0.03)
    assert np.mean([d.node_positive for d in diagnoses]) == pytest.approx(n_positive, abs=0.03)
    share_tm = np.mean([d.surgery is Surgery.TOTAL_MASTECTOMY for d in diagnoses])
    assert share_tm == pytest.approx(mastectomy, abs=0.03)
    assert all(25 <= (r.age or 0) <= 90 for r in records)


def test_site_b_noise_and_offset_reach_the_image() -> None:
    case = generate_case("B0001", "B", 77, SCALE)
    scanner = case.anatomy.params.scanner
    air = case.hu[~case.anatomy.body].astype(np.float64)
    air = air[air > -1000 - 3 * scanner.noise_sigma + scanner.hu_offset]  # clear of the clip
    assert air.std() > 0.5 * scanner.noise_sigma
    assert case.profile.unsigned_storage is False
    assert get_site("a").unsigned_storage is True


# --- perturbations ---------------------------------------------------------------------------
def test_laterality_flip_moves_the_ctv_to_the_other_breast() -> None:
    case = make((Side.LEFT, Surgery.BREAST_CONSERVING, "1"), seed=13)
    flipped = perturb(case, LATERALITY_FLIP)
    cx = case.anatomy.params.body.cx
    assert flipped.hu is case.hu and flipped.uids == case.uids
    assert flipped.clinical.diagnoses[0].side is Side.RIGHT
    assert "right side" in flipped.clinical.prompt_text()
    assert flipped.perturbation == LATERALITY_FLIP
    assert centroid_x(case, case.masks[ROI_CTV]) > cx
    assert centroid_x(flipped, flipped.masks[ROI_CTV]) < cx
    assert not (flipped.masks[ROI_CTV] & case.masks[ROI_CTV]).any()
    right_breast = case.anatomy.breasts[Side.RIGHT]
    assert not (flipped.masks[ROI_BREAST] & ~right_breast).any()
    assert set(flipped.masks) == set(case.masks)
    with pytest.raises(ConfigurationError):
        perturb(make((Side.LEFT, Surgery.TOTAL_MASTECTOMY, "1")), LATERALITY_FLIP)


@pytest.mark.parametrize(("before", "after"), [("0", "1"), ("1mi", "1"), ("2", "0"), ("3", "0")])
def test_n_switch_adds_or_removes_the_nodes(before: str, after: str) -> None:
    case = make((Side.RIGHT, Surgery.TOTAL_MASTECTOMY, before), seed=17)
    switched = perturb(case, N_SWITCH)
    assert switched.clinical.diagnoses[0].n_stage == after
    assert switched.hu is case.hu
    assert np.array_equal(switched.masks[ROI_CHEST_WALL], case.masks[ROI_CHEST_WALL])
    gained = after == "1"
    for name in NODES:
        assert (name in switched.masks) is gained and (name in case.masks) is not gained
    grew = bool(switched.masks[ROI_CTV].sum() > case.masks[ROI_CTV].sum())
    assert grew is gained


def test_unknown_or_bilateral_perturbation_is_refused() -> None:
    case = make(
        (Side.LEFT, Surgery.BREAST_CONSERVING, "0"), (Side.RIGHT, Surgery.BREAST_CONSERVING, "0")
    )
    with pytest.raises(ConfigurationError):
        perturb(case, N_SWITCH)
    with pytest.raises(ConfigurationError):
        perturb(make((Side.LEFT, Surgery.BREAST_CONSERVING, "0")), "side_swap")


# --- written files ---------------------------------------------------------------------------
COHORTS = {"A": (3, 31), "B": (2, 32)}  # site: (cases, seed)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phantoms")
    out = {}
    for site, (cases, seed) in COHORTS.items():
        out[site] = root / f"cohort_{site}"
        written = write_cohort(out[site], cases, site, seed, SCALE)
        assert [w.case_id for w in written] == [case_id_for(site, i + 1) for i in range(cases)]
        assert all(w.rtstruct.is_file() and w.directory.parent == out[site] for w in written)
    return out


def regenerate(site: str, index: int) -> PhantomCase:
    _, seed = COHORTS[site]
    return generate_case(case_id_for(site, index), site, case_seed(seed, site, index), SCALE)


@pytest.mark.parametrize("site", ["A", "B"])
def test_written_index_files(cohorts: dict[str, Path], site: str) -> None:
    out = cohorts[site]
    records = read_clinical_csv(out / "clinical.csv")
    index = json.loads((out / "cohort.json").read_text(encoding="utf-8"))
    assert (index["site"], index["seed"], index["scale"]) == (site, COHORTS[site][1], SCALE)
    assert index["spec_version"] == "1.1"
    assert [c["case_id"] for c in index["cases"]] == list(records)
    for number, entry in enumerate(index["cases"], start=1):
        case = regenerate(site, number)
        assert records[entry["case_id"]] == case.clinical
        assert entry["sides"] == [d.side.value for d in case.clinical.diagnoses]
        assert [d["n_stage"] for d in entry["diagnoses"]] == [
            d.n_stage for d in case.clinical.diagnoses
        ]
        assert entry["volumes_cc"] == case.volumes_cc()
        assert (out / entry["case_id"] / "rtstruct.dcm").is_file()


@pytest.mark.parametrize("site", ["A", "B"])
def test_written_ct_is_a_valid_consistent_series(cohorts: dict[str, Path], site: str) -> None:
    case = regenerate(site, 1)
    files = sorted((cohorts[site] / case.case_id / "ct").glob("*.dcm"))
    assert len(files) == case.grid.shape[0]
    slices = [pydicom.dcmread(f) for f in files]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    dk, dj, di = case.grid.spacing
    for k, ds in enumerate(slices):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.SOPInstanceUID == case.uids.instances[k]
        assert (ds.Modality, ds.PatientPosition) == ("CT", "HFS")
        assert ds.PatientName == f"PHANTOM^{case.case_id}" and ds.PatientID == case.case_id
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([dj, di])
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == dk
        expected = case.grid.index_to_lps([k, 0, 0])
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(expected, abs=1e-4)
        assert (ds.Rows, ds.Columns) == case.grid.shape[1:]
        assert ds.PixelRepresentation == (0 if case.profile.unsigned_storage else 1)
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        assert np.array_equal(hu, case.hu[k])
    assert {ds.SeriesInstanceUID for ds in slices} == {case.uids.series}
    assert {ds.FrameOfReferenceUID for ds in slices} == {case.uids.frame_of_reference}
    assert sorted(int(ds.InstanceNumber) for ds in slices) == list(range(1, len(slices) + 1))


@pytest.mark.parametrize("site", ["A", "B"])
def test_written_files_round_trip_through_the_readers(cohorts: dict[str, Path], site: str) -> None:
    for number in range(1, COHORTS[site][0] + 1):
        case = regenerate(site, number)
        folder = cohorts[site] / case.case_id
        series = read_ct_series(folder / "ct")
        assert series.volume.grid.shape == case.grid.shape
        assert np.allclose(series.volume.grid.affine_lps(), case.grid.affine_lps(), atol=1e-4)
        assert np.array_equal(series.volume.array, case.hu.astype(np.float32))
        structure_set = read_structure_set(folder / "rtstruct.dcm")
        assert structure_set.roi_names == tuple(case.masks)
        assert structure_set.frame_of_reference_uid == case.uids.frame_of_reference
        assert structure_set.roi(ROI_CTV).interpreted_type == "CTV"
        for name, mask in case.masks.items():
            back = rasterize(structure_set, name, series.volume.grid)
            dice = 2 * (back & mask).sum() / (back.sum() + mask.sum())
            assert dice >= 0.98, (case.case_id, name, dice)


def test_same_arguments_write_identical_ct_files(tmp_path: Path) -> None:
    for name in ("one", "two"):
        write_cohort(tmp_path / name, 1, "A", 99, 0.125)
    files = sorted((tmp_path / "one" / "A0001" / "ct").glob("*.dcm"))
    assert files
    for path in files:
        twin = tmp_path / "two" / "A0001" / "ct" / path.name
        assert path.read_bytes() == twin.read_bytes()
    assert (tmp_path / "one" / "clinical.csv").read_bytes() == (
        tmp_path / "two" / "clinical.csv"
    ).read_bytes()


def test_write_cohort_refuses_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ConfigurationError):
        write_cohort(tmp_path / "full", 1, "A", 1, SCALE)
    with pytest.raises(ConfigurationError):
        write_cohort(tmp_path / "new", 0, "A", 1, SCALE)
    with pytest.raises(ConfigurationError):
        write_cohort(tmp_path / "new", 1, "C", 1, SCALE)
    with pytest.raises(ConfigurationError):
        write_cohort(tmp_path / "new", 1, "A", 1, 1.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_command_writes_a_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cohort"
    argv = [
        "phantoms",
        "--out",
        str(out),
        "--cases",
        "2",
        "--site",
        "B",
        "--seed",
        "3",
        "--scale",
        "0.125",
    ]
    assert cli_main(argv) == 0
    assert len(read_clinical_csv(out / "clinical.csv")) == 2
    assert "wrote 2 cases" in capsys.readouterr().out
    assert cli_main(argv) == 2  # the folder is no longer empty
    assert "not empty" in capsys.readouterr().err


def test_counterfactual_cohort_pairs_one_ct_with_each_allowed_note(tmp_path: Path) -> None:
    written = write_cohort(tmp_path / "cf", 3, "A", seed=101, scale=0.125, counterfactuals=True)
    by_id = {w.case_id: w for w in written}
    records = read_clinical_csv(tmp_path / "cf" / "clinical.csv")
    assert set(records) == set(by_id)
    for base_id in ("A0001", "A0002", "A0003"):
        base = by_id[base_id]
        kinds = eligible_perturbations(base.clinical)
        variants = [v for v in by_id if v.startswith(f"{base_id}-")]
        assert len(variants) == len(kinds)
        ct = read_ct_series(base.ct_files)
        truth = rasterize(read_structure_set(base.rtstruct), "CTV", ct.volume.grid)
        for variant_id in variants:
            variant = by_id[variant_id]
            other = read_ct_series(variant.ct_files)
            assert np.array_equal(other.volume.array, ct.volume.array)  # the same CT
            assert variant.clinical != base.clinical
            target = rasterize(read_structure_set(variant.rtstruct), "CTV", ct.volume.grid)
            assert not np.array_equal(target, truth)  # the note changed the target


def _rendered(anatomy: Anatomy, seed: int) -> npt.NDArray[np.int16]:
    """The CT of ``anatomy`` with the texture and noise streams of ``seed``."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]
    return render_hu(anatomy, streams[2], streams[3])


def test_domain_randomised_mediastinum_is_drawn_and_never_covers_the_nodes() -> None:
    """Site D paints great vessels (their HU), a trachea of air above the carina and a deeper
    sternum into the CT; the ground truth is the one without them, and nothing of it lies in a
    node region (nodes must be learnt beside vessels, not inside one). Seed 3's superior vena
    cava crossed the right SCF before the regions were kept free."""
    record = ClinicalRecord(
        diagnoses=tuple(
            Diagnosis(side=s, surgery=Surgery.BREAST_CONSERVING, t_stage="2", n_stage="1")
            for s in (Side.LEFT, Side.RIGHT)
        )
    )
    checked = 0
    for seed in (3, 4, 5, 165):
        case = generate_case("D0001", "D", seed, scale=0.25, clinical=record)
        inside = case.anatomy.params.mediastinum
        assert inside is not None and len(inside.vessels) == 4
        plain = replace(case.anatomy.params, mediastinum=None)
        anatomy = replace(case.anatomy, params=plain, cache={})
        vessels = replace(plain, mediastinum=replace(inside, anterior_lung=None))
        without = _rendered(anatomy, seed)
        changed = _rendered(replace(case.anatomy, params=vessels, cache={}), seed) != without
        assert changed.sum() > 1000, "the mediastinum reaches the image"
        for name in (ROI_AXILLA, ROI_SCF, ROI_IMN):  # both sides' node regions
            nodes = case.masks[name]
            assert not (changed & nodes).any(), (seed, name)
            checked += int(nodes.sum())
        air = (case.hu < -900) & ~(without < -900)
        assert air.any(), "the trachea is air inside the body"
        assert ctv_masks(anatomy, record, case.profile.convention).keys() == case.masks.keys()
    assert checked > 0


def test_domain_randomised_lungs_may_reach_the_internal_mammary_nodes() -> None:
    """In some site-D phantoms the lungs reach the front of the chest beside the sternum, so
    the IMN (a label: nothing visible marks it) lies over lung, as in real patients and in
    the independent cohort (57-100 % lung); the spec's sites never have it there."""
    record = ClinicalRecord(
        diagnoses=(
            Diagnosis(side=Side.LEFT, surgery=Surgery.BREAST_CONSERVING, t_stage="2", n_stage="1"),
        )
    )
    fractions = {}
    for site in ("A", "D"):
        for seed in range(6):
            case = generate_case(f"{site}0001", site, seed, scale=0.25, clinical=record)
            imn = case.masks[ROI_IMN]
            fractions[(site, seed)] = float((case.hu[imn] < -400).mean())
    assert max(v for (site, _), v in fractions.items() if site == "A") == 0.0
    over_lung = [v for (site, _), v in fractions.items() if site == "D" and v > 0.5]
    assert 1 <= len(over_lung) <= 5, fractions


def test_domain_randomised_breasts_are_often_alike_and_the_scan_still_covers_them() -> None:
    """Site D draws most patients' two breasts alike (the spec samples sizes per case; RTOG's
    chest wall takes its borders from the contralateral breast), so the network can learn
    where a mastectomy side's footprint was. The spec's sites A and B keep each side's own
    draw, and every site keeps the spec's scan extent around the breasts."""

    def alike(params: PhantomParams) -> bool:
        left, right = params.breasts[Side.LEFT], params.breasts[Side.RIGHT]
        return (
            abs(left.top - right.top) <= 4.0 + 1e-9
            and abs(left.length / right.length - 1.0) <= 0.07
            and abs(left.centre_frac - right.centre_frac) <= 0.02 + 1e-9
            and abs(left.radius - right.radius) <= 4.0 + 1e-9
        )

    counts = {"A": 0, "D": 0}
    for seed in range(100):
        base = sample_params(np.random.default_rng(seed), get_site("R"))
        spec = sample_params(np.random.default_rng(seed), get_site("A"))
        drawn = randomise_domain(np.random.default_rng(10_000 + seed), base)
        counts["A"] += alike(spec)
        counts["D"] += alike(drawn)
        top = max(b.top for b in drawn.breasts.values())
        bottom = min(b.bottom for b in drawn.breasts.values())
        assert 70 <= drawn.scan_top - top <= 100
        assert 20 <= bottom - drawn.scan_bottom <= 100  # up to 60 mm more of the abdomen
        for breast in drawn.breasts.values():
            assert breast.radius <= breast.centre_frac * drawn.body.a - 15.0 + 1e-9
    assert counts["A"] <= 5, counts
    assert 55 <= counts["D"] <= 85, counts
