"""The protocol's skin margin, applied on the CT grid (``model/imaging/skin_margin.py``).

The specification crops the breast CTV 5 mm and the chest wall 3 mm below the skin (3-D
distance to the air outside the body). The network's 4 mm grid cannot hold that margin: before
the crop, the shipped model drew the chest wall of an independently generated mastectomy from
the skin itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from independent.generator import write_cohort
from scipy import ndimage

from model.dataset.structure_map import parse_structure_map, skin_margins_of
from model.dicom.series import read_ct_series
from model.errors import ConfigurationError
from model.evaluation.metrics import dice
from model.imaging.postprocessing import body_mask
from model.imaging.skin_margin import SPEC_SKIN_MARGINS_MM, crop_below_skin
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


def test_the_crop_is_the_distance_to_the_outside_of_the_body() -> None:
    body, structures = _body_and_structures()
    crop = crop_below_skin(body, structures, SPACING, SPEC_SKIN_MARGINS_MM)
    # Against the distance over the whole grid (the crop reads only each structure's box).
    depth = ndimage.distance_transform_edt(body, sampling=SPACING)
    for (name, side), mask in structures.items():
        margin = SPEC_SKIN_MARGINS_MM.get(name, 0.0)
        expected = mask & (depth >= margin)
        np.testing.assert_array_equal(crop.structures[(name, side)], expected)
        removed = float((mask & ~expected).sum()) * np.prod(SPACING) / 1000.0
        assert crop.removed_cc.get(f"{name} {side}", 0.0) == pytest.approx(removed, abs=0.01)
    assert crop.removed_cc["breast L"] > 0 and crop.removed_cc["chest_wall R"] > 0
    assert crop.structures[("axilla", "L")] is structures[("axilla", "L")]  # no margin: kept
    whole = crop_below_skin(body, structures, SPACING, {"breast": 0.0})
    assert whole.removed_cc == {}


def test_a_structure_map_sets_its_own_margins() -> None:
    assert skin_margins_of(None) == {"breast": 5.0, "chest_wall": 3.0}
    site = SITE_STRUCTURE_MAP.replace(
        'patterns = ["CTV CW"]', 'patterns = ["CTV CW"]\nskin_margin_mm = 0'
    )
    margins = skin_margins_of(parse_structure_map(site))
    assert margins == {"breast": 5.0, "chest_wall": 0.0}
    assert "skin_margin_mm" in parse_structure_map(site).describe()["structures"]["chest_wall"]
    for bad, message in (("25", "between 0 and 20"), ('"3 mm"', "a number"), ("true", "number")):
        text = site.replace("skin_margin_mm = 0", f"skin_margin_mm = {bad}")
        with pytest.raises(ConfigurationError, match=message):
            parse_structure_map(text)


def test_the_served_chest_wall_keeps_the_margin_on_an_independent_mastectomy(
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
    predictor.skin_margins = {}
    uncropped = predictor.predict_record(ct.volume, record).structures[("chest_wall", "L")]
    assert (uncropped & (depth < 3.0)).sum() * np.prod(spacing) / 1000 > 5.0  # the old contour
    assert not (served & (depth < 3.0)).any()
    assert dice(served, truth) > dice(uncropped, truth) + 0.03
