"""The protocol's borders of the superficial CTVs, on the CT grid (``model/imaging/borders.py``).

The specification crops the breast CTV 5 mm and the chest wall 3 mm below the skin (3-D
distance to the air outside the body) and takes the chest wall "down to the ribs". The
network's 4 mm grid cannot hold either: before these borders, the shipped model drew the chest
wall of an independently generated mastectomy from the skin itself, and through the ribs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from independent.generator import write_cohort
from scipy import ndimage

from model.dataset.structure_map import borders_of, parse_structure_map
from model.dicom.series import read_ct_series
from model.errors import ConfigurationError
from model.evaluation.metrics import dice
from model.imaging.borders import SPEC_BORDERS, BorderPolicy, apply_borders
from model.imaging.geometry import Grid, Volume
from model.imaging.plausibility import check_structures, find_landmarks
from model.imaging.postprocessing import body_mask
from model.inference import Predictor
from model.lab.department import SITE_STRUCTURE_MAP
from model.text.clinical import ClinicalRecord

SPACING = (3.0, 1.5, 1.2)


def _body_and_structures() -> tuple[np.ndarray, dict[tuple[str, str], np.ndarray]]:
    """An elliptic body with a lumpy surface; a breast and a chest wall reaching the skin,
    and an axilla that no margin applies to."""
    k, j, i = np.mgrid[0:20, 0:80, 0:90]
    rng = np.random.default_rng(4)
    bumps = ndimage.gaussian_filter(rng.normal(size=(20, 80, 90)), 3) * 30
    body = ((j - 40) * 1.5 / 50) ** 2 + ((i - 45) * 1.2 / 48) ** 2 + bumps * 0.02 < 1.0
    breast = body & (j < 30) & (i > 45) & (k > 2)
    chest_wall = body & (j < 30) & (i <= 45) & (k < 17)
    axilla = body & (j > 50) & (i > 60)
    return body, {("breast", "L"): breast, ("chest_wall", "R"): chest_wall, ("axilla", "L"): axilla}


def test_the_skin_margin_is_the_distance_to_the_outside_of_the_body() -> None:
    body, structures = _body_and_structures()
    hu = np.where(body, 40.0, -1000.0)  # no bone: the ribs' border removes nothing
    crop = apply_borders(hu, body, structures, SPACING, SPEC_BORDERS)
    # Against the distance over the whole grid (the crop reads only each structure's box).
    depth = ndimage.distance_transform_edt(body, sampling=SPACING)
    for (name, side), mask in structures.items():
        margin = SPEC_BORDERS.skin_margins_mm.get(name, 0.0)
        expected = mask & (depth >= margin)
        np.testing.assert_array_equal(crop.structures[(name, side)], expected)
        removed = float((mask & ~expected).sum()) * np.prod(SPACING) / 1000.0
        got = crop.removed_cc.get("skin margin", {}).get(f"{name} {side}", 0.0)
        assert got == pytest.approx(removed, abs=0.01)
    assert set(crop.removed_cc) == {"skin margin"}
    assert crop.removed_cc["skin margin"].keys() == {"breast L", "chest_wall R"}
    assert crop.structures[("axilla", "L")] is structures[("axilla", "L")]  # no border: kept
    whole = apply_borders(hu, body, structures, SPACING, BorderPolicy({"breast": 0.0}))
    assert whole.removed_cc == {}


def test_a_structure_wholly_within_the_margin_is_gone_and_the_job_goes_on() -> None:
    """A thin breast sheet under the skin has nothing left 5 mm deep: it is dropped, not
    handed on empty under its old box (which crashed the plausibility rules: a fine-tuned
    network on the independent cohort, flipped note)."""
    body, structures = _body_and_structures()
    depth = ndimage.distance_transform_edt(body, sampling=SPACING)
    sheet = structures[("breast", "L")] & (depth < 3.0)
    hu = np.where(body, 40.0, -1000.0)
    result = apply_borders(hu, body, {("breast", "L"): sheet}, SPACING, SPEC_BORDERS)
    assert ("breast", "L") not in result.structures
    assert result.removed_cc["skin margin"]["breast L"] > 0
    volume = Volume(hu.astype(np.float32), Grid(body.shape, (0.0, 0.0, 0.0), SPACING))
    marks = find_landmarks(volume, body, 0.0)
    box = tuple(slice(0, n) for n in body.shape)
    kept, _ = check_structures(
        volume,
        {("breast", "L"): np.zeros(body.shape, bool)},
        marks,
        0.0,
        0.5,
        boxes={("breast", "L"): box},
    )
    assert kept == {}


def test_the_chest_wall_stops_at_the_ribs_also_between_them() -> None:
    """A flat chest: air in row 0, skin, muscle, ribs 10-13 mm deep (rows 10-13) in 4 of every
    8 slices (3 mm), lung from 17 mm; a chest wall drawn 20 mm deep keeps rows 3-9 (the skin
    margin: 3 mm between voxel centres), in the intercostal slices too; a clip is no rib."""
    body = np.zeros((40, 40, 30), dtype=bool)
    body[:, 1:, :] = True  # j = 0 is the air in front of the skin
    hu = np.where(body, 40.0, -1000.0)
    rib_slices = np.arange(40) % 8 < 4
    hu[np.ix_(rib_slices, np.arange(10, 14), np.arange(30))] = 700.0
    hu[20, 5, 15] = 1500.0  # a clip
    hu[:, 17:, :] = -800.0  # lung
    chest_wall = body & (np.arange(40) <= 20)[None, :, None]
    result = apply_borders(
        hu, body, {("chest_wall", "L"): chest_wall}, (3.0, 1.0, 1.0), SPEC_BORDERS
    )
    kept = result.structures[("chest_wall", "L")]
    rows = np.flatnonzero(kept.any(axis=(0, 2)))
    assert (rows.min(), rows.max()) == (3, 9)  # from 3 mm below the skin to the ribs' front
    assert kept[~rib_slices].any(axis=(0, 2)).sum() == 7  # between the ribs as well
    assert result.removed_cc["behind the ribs"]["chest_wall L"] > 0
    no_ribs = BorderPolicy({"chest_wall": 3.0})  # a convention that keeps them (RTOG)
    assert (
        apply_borders(hu, body, {("chest_wall", "L"): chest_wall}, (3.0, 1.0, 1.0), no_ribs)
        .structures[("chest_wall", "L")]
        .any(axis=(0, 2))[20]
    )


def test_a_structure_map_sets_its_own_borders() -> None:
    assert borders_of(None) == SPEC_BORDERS
    site = SITE_STRUCTURE_MAP.replace(
        'patterns = ["CTV CW"]', 'patterns = ["CTV CW"]\nskin_margin_mm = 0\nstop_at_ribs = false'
    )
    policy = borders_of(parse_structure_map(site))
    assert dict(policy.skin_margins_mm) == {"breast": 5.0, "chest_wall": 0.0}
    assert policy.stop_at_ribs == frozenset()
    described = parse_structure_map(site).describe()["structures"]["chest_wall"]
    assert described["skin_margin_mm"] == 0.0 and described["stop_at_ribs"] is False
    for bad, message in (("25", "between 0 and 20"), ('"3 mm"', "a number"), ("true", "number")):
        text = site.replace("skin_margin_mm = 0", f"skin_margin_mm = {bad}")
        with pytest.raises(ConfigurationError, match=message):
            parse_structure_map(text)
    with pytest.raises(ConfigurationError, match="true or false"):
        parse_structure_map(site.replace("stop_at_ribs = false", "stop_at_ribs = 1"))


def test_the_served_chest_wall_keeps_its_borders_on_an_independent_mastectomy(
    tmp_path: Path,
) -> None:
    """Independent generator (never trained on), case 0 of seed 0: a left mastectomy."""
    (summary,) = write_cohort(tmp_path / "A", 1, "A", 0, 256)
    folder = Path(summary["folder"])
    record = ClinicalRecord.model_validate(json.loads((folder / "clinical.json").read_text()))
    truth = np.load(folder / "truth.npz")["chest_wall_L"]
    ct = read_ct_series(folder / "ct")
    spacing = ct.volume.grid.spacing
    depth = ndimage.distance_transform_edt(body_mask(ct.volume), sampling=spacing)
    assert not (truth & (depth < 3.0)).any()  # the independent truth keeps the margin too

    predictor = Predictor.from_checkpoint(REPO / "checkpoints" / "demo", device="cpu")
    served = predictor.predict_record(ct.volume, record).structures[("chest_wall", "L")]
    predictor.borders = BorderPolicy()
    uncropped = predictor.predict_record(ct.volume, record).structures[("chest_wall", "L")]
    assert (uncropped & (depth < 3.0)).sum() * np.prod(spacing) / 1000 > 5.0  # the old contour
    assert not (served & (depth < 3.0)).any()
    assert dice(served, truth) > dice(uncropped, truth) + 0.03
