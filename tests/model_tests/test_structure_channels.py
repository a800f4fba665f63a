"""Separate CTV structures: labels from sub-volume ROIs, a multi-class head, warm start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.dicom.rtstruct.reader import RoiRule
from model.errors import CheckpointMismatchError, ConfigurationError
from model.imaging.geometry import Grid, Volume
from model.inference import Predictor
from model.network.config import preset
from model.network.segmenter import ContourNet
from model.network.structures import BREAST_STRUCTURES, PHANTOM_ROI_PATTERNS
from model.training.dataset import TargetRule, build_cache, load_cached
from model.training.trainer import expand_head


def _phantom_rule() -> TargetRule:
    return TargetRule(
        structures=tuple((n, RoiRule(include=p)) for n, p in PHANTOM_ROI_PATTERNS.items())
    )


def test_config_counts_one_class_per_structure() -> None:
    config = preset("tiny").with_structures(BREAST_STRUCTURES)
    assert config.out_channels == 6
    assert config.structure_names == BREAST_STRUCTURES
    assert preset("tiny").structure_names == ("ctv",)
    with pytest.raises(ConfigurationError):
        preset("tiny", out_channels=3)


def test_labels_hold_each_sub_volume_of_the_phantom(phantoms: list, tmp_path: Path) -> None:
    case = phantoms[0]
    data = case.directory.parent
    report = build_cache(data, tmp_path / "cache", rule=_phantom_rule())
    cached = {c.case_id: c for c in load_cached(tmp_path / "cache", report.built)}
    label = cached[case.case_id].label
    present = set(np.unique(label)) - {0}
    surgery = case.clinical.diagnoses[0].surgery.value
    first = 1 if surgery == "breast_conserving" else 2  # breast or chest wall
    assert first in present
    assert (3 in present) == case.clinical.diagnoses[0].node_positive
    assert present <= {1, 2, 3, 4, 5}


def test_expand_head_seeds_every_structure_from_the_single_ctv_head() -> None:
    torch.manual_seed(1)
    single = ContourNet(preset("tiny", multimodal=False))
    multi = ContourNet(preset("tiny", multimodal=False).with_structures(BREAST_STRUCTURES))
    multi.load_state_dict(expand_head(single.state_dict(), 1, 6))
    x = torch.rand(1, 1, 32, 64, 64)
    with torch.no_grad():
        p1 = torch.softmax(single(x, None), 1)
        p6 = torch.softmax(multi(x, None), 1)
    # The same foreground logit in five classes: the union can only grow.
    assert torch.all(1 - p6[:, 0] >= 1 - p1[:, 0] - 1e-6)
    assert torch.allclose(p6[:, 1], p6[:, 5])
    with pytest.raises(CheckpointMismatchError):
        expand_head(multi.state_dict(), 5, 6)


def test_predictor_names_structures_and_sides_on_the_ct_grid() -> None:
    torch.manual_seed(0)
    network = ContourNet(preset("tiny", multimodal=False).with_structures(BREAST_STRUCTURES))
    grid = Grid(shape=(16, 48, 48), origin=(-120.0, -120.0, 0.0), spacing=(6.0, 5.0, 5.0))
    hu = np.full(grid.shape, -1000.0, np.float32)
    yy, xx = np.mgrid[:48, :48]
    hu[:, (yy - 24) ** 2 + (xx - 24) ** 2 < 18**2] = 40.0
    predictor = Predictor(network, None, device="cpu")
    pred = predictor.predict(Volume(hu, grid))
    union = np.zeros(grid.shape, bool)
    for (name, side), mask in pred.structures.items():
        assert name in BREAST_STRUCTURES and side in ("L", "R")
        union |= mask
    assert np.array_equal(union, pred.mask)
    body = hu > -400
    assert not (pred.mask & ~body).any(), "nothing outside the body"


def test_structure_options_of_the_command_line() -> None:
    from model.cli import structure_patterns

    assert [n for n, _ in structure_patterns(["phantom"])] == list(BREAST_STRUCTURES)
    assert structure_patterns(["nodes=^ln_.*,^node"]) == (("nodes", ("^ln_.*", "^node")),)
    with pytest.raises(ConfigurationError):
        structure_patterns(["nodes"])


def test_real_lung1_ct_structures_stay_inside_the_body_in_one_piece() -> None:
    """The shipped model on a real chest CT (arms up, couch in the image)."""
    from scipy import ndimage

    from model.dicom.series import read_ct_series
    from model.imaging.postprocessing import body_mask
    from workers.model_loading import DEMO_CHECKPOINT

    folder = Path(__file__).resolve().parents[3] / "shared/data/lung1_ct_rtstruct/LUNG1-001/image"
    if not folder.is_dir():
        pytest.skip(f"shared data absent: {folder}")
    ct = read_ct_series(folder)
    predictor = Predictor.from_checkpoint(DEMO_CHECKPOINT, device="cpu")
    pred = predictor.predict(ct.volume, "N1, cT2, breast conserving surgery, left side")
    body = body_mask(ct.volume)
    assert pred.mask.any()
    assert not (pred.mask & ~body).any(), "every CTV voxel inside the body"
    raw = pred.probability_map() >= 0.5
    assert (pred.cleaning is not None and pred.cleaning.outside_body_cc > 0) or not (
        raw & ~body
    ).any()
    for key, mask in pred.structures.items():
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(labels.ravel())[1:]
        assert n >= 1 and sizes.max() >= 0.95 * sizes.sum(), key


def test_body_mask_leaves_out_the_couch_and_keeps_the_lungs() -> None:
    from model.imaging.postprocessing import body_mask
    from model.lab.phantoms import generate_case

    case = next(
        c
        for seed in range(20)
        if (c := generate_case("R0001", "R", seed, scale=0.25)).anatomy.params.extras.couch
    )
    body = body_mask(case.volume)
    truth_body = case.anatomy.body
    agree = (body == truth_body).mean()
    assert agree > 0.99, agree
    couch = case.hu > 200
    couch &= ~truth_body
    assert couch.any() and not (body & couch).any(), "the couch shell is not body"
    lungs = truth_body & (case.hu < -600)
    assert lungs.any() and body[lungs].mean() > 0.99, "lungs count as body"
    assert body[case.masks["CTV"]].all(), "the whole true CTV lies inside the body"


def test_structure_report_counts_a_missed_structure_apart() -> None:
    from model.lab.structure_eval import markdown, summarize

    base = {"dice": 0.9, "hd95": 5.0, "factors": {"couch": "yes"}, "dice_structure": {}}
    rows = [
        {**base, "hd95_structure": {"imn": 8.0}, "nodal_ratio_n1mi": 0.01},
        {**base, "hd95_structure": {"imn": float("inf")}, "nodal_ratio_n1mi": 0.03},
    ]
    summary = summarize(rows)
    assert summary["hd95_structure"]["imn"]["missed"] == 1
    assert summary["hd95_structure"]["imn"]["mean"] == pytest.approx(8.0)
    assert summary["nodal_ratio_n1mi"]["mean"] == pytest.approx(0.02)
    text = markdown({"x": summary, "pooled": summary})
    assert "missed 1" in text and "| couch | yes | 2 |" in text
