"""Partial labels (``llmctv train --partial-labels``): a nodal structure the department's rule
does not draw for a case's N stage is unlabelled there, and the marginal loss neither teaches
the network to draw it nor to erase it.

With ``--teacher-labels`` the warm-start model draws them there before training starts.
Labels are network-grid class maps ``(k, j, i)``: 1 breast, 2 chest wall, 3 axilla, 4 SCF,
5 IMN. The department draws the IMN for N2-N3 only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses.dice import DiceCELoss

from model.errors import ConfigurationError, DatasetError
from model.training.augmentation import AugmentConfig, Augmenter
from model.training.convention_variants import convention_variants, with_partial_labels
from model.training.partial_loss import PartialDiceCELoss, unlabelled_classes
from model.training.sampling import UNLABELLED_FLAG, TrainingCase, encode_unlabelled, random_crop
from model.training.teacher_labels import calibrate, fill_unlabelled
from model.workflows import DataOptions, TrainOptions, train_from_dicom

SITE_RULE = {3: ("1", "2", "3"), 4: ("1", "2", "3"), 5: ("2", "3")}
ROI = (4, 6, 6)
NOTE = "{}, cT2, breast conserving surgery, left side"


def _case(case_id: str, n_stage: str, classes: tuple[int, ...]) -> TrainingCase:
    label = np.zeros(ROI, dtype=np.uint8)
    for k, c in enumerate(classes):
        label[k, 1:5, 1:5] = c
    image = np.linspace(0, 1, label.size, dtype=np.float32).reshape(ROI)
    note = NOTE.format(f"N{n_stage}")
    return TrainingCase(case_id, image, label, note, (6.0, 4.0, 4.0), group=f"ct-{case_id}")


def test_the_rule_leaves_the_n1_imn_unlabelled_and_nothing_else() -> None:
    cases = [
        _case("n1", "1", (1, 3, 4)),
        _case("n2", "2a", (1, 3, 4, 5)),
        _case("n0", "0", (1,)),
        _case("n1-drawn", "1", (1, 3, 4, 5)),  # drawn against the rule: trusted as drawn
    ]
    marked = {c.case_id: c.unlabelled_classes for c in with_partial_labels(cases, SITE_RULE)}
    assert marked == {"n1": (5,), "n2": (), "n0": (), "n1-drawn": ()}
    variants = {v.case_id: v for v in convention_variants(cases[1:2], SITE_RULE, partial=True)}
    assert variants["n2~N1"].dropped_classes == (5,)
    assert variants["n2~N1"].unlabelled_classes == (5,)
    assert variants["n2~N0"].unlabelled_classes == ()  # N0: no nodes in any protocol
    plain = {v.case_id: v for v in convention_variants(cases[1:2], SITE_RULE)}
    assert plain["n2~N1"].unlabelled_classes == ()


def test_crops_carry_the_flag_through_augmentation() -> None:
    """The flag rides on every background voxel, survives the affine, elastic and mirror
    transforms (nearest-neighbour labels), and names exactly the unlabelled class."""
    roi = (16, 32, 32)
    small = _case("n1", "1", (1, 3, 4))
    big = np.zeros(roi, dtype=np.uint8)
    big[4:8, 8:24, 8:24] = np.repeat(np.repeat(small.label, 4, axis=1), 4, axis=2)[:, :16, :16]
    source = TrainingCase("n1", np.zeros(roi, np.float32), big, small.note, small.spacing)
    (case,) = with_partial_labels([source], SITE_RULE)
    _, label = random_crop(case, roi, np.random.default_rng(0), 0.0)
    assert set(np.unique(label)) == {1, 3, 4, UNLABELLED_FLAG | (1 << 4)}
    augmenter = Augmenter(AugmentConfig(geometry=1.0, elastic=1.0, intensity=1.0, mirror=1.0))
    images = torch.zeros((1, 1, *roi))
    labels = torch.from_numpy(label.astype(np.int64))[None, None]
    _, moved, _ = augmenter.batch(images, labels, [case.note], np.random.default_rng(1))
    assert unlabelled_classes(moved, 6).tolist() == [[False, False, False, False, False, True]]
    with pytest.raises(DatasetError):
        encode_unlabelled(label, (8,))


def _logits(classes: torch.Tensor, n_classes: int = 6, scale: float = 4.0) -> torch.Tensor:
    """Confident logits ``(B, C, ...)`` for the class map ``classes`` ``(B, 1, ...)``."""
    onehot = torch.zeros((classes.shape[0], n_classes, *classes.shape[2:]))
    return scale * onehot.scatter_(1, classes, 1.0) + 0.1 * torch.randn(onehot.shape)


def test_without_flags_the_loss_is_monais_dice_ce() -> None:
    torch.manual_seed(0)
    logits = torch.randn((3, 6, 4, 6, 6))
    labels = torch.randint(0, 6, (3, 1, 4, 6, 6))
    loss = PartialDiceCELoss(1.0, 0.7)
    reference = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=1.0, lambda_ce=0.7)
    expected = float(reference(logits, labels))
    assert float(loss(logits, labels)) == pytest.approx(expected, abs=1e-6)
    assert float(loss.marginal(logits, labels)) == pytest.approx(expected, abs=1e-5)


def test_drawing_an_unlabelled_class_costs_nothing_and_elsewhere_it_does() -> None:
    """On the background of a crop flagged "IMN not drawn", drawing the IMN costs what drawing
    background costs; on an unflagged crop the same drawing is a loss."""
    torch.manual_seed(1)
    truth = torch.zeros((1, 1, 4, 6, 6), dtype=torch.int64)
    truth[0, 0, 1:3, 1:4, 1:4] = 3  # an axilla
    flagged = torch.from_numpy(encode_unlabelled(truth.numpy().astype(np.uint8), (5,)))
    flagged = flagged.to(torch.int64)
    drawn = truth.clone()
    drawn[0, 0, 0, :, :] = 5  # the network draws IMN over a background slice
    loss = PartialDiceCELoss()
    noise = 0.1 * torch.randn((1, 6, 4, 6, 6))
    as_truth, with_imn = _logits(truth) + noise, _logits(drawn) + noise
    assert float(loss(with_imn, flagged)) == pytest.approx(float(loss(as_truth, flagged)), abs=2e-3)
    assert float(loss(with_imn, truth)) > float(loss(as_truth, truth)) + 0.1


def test_a_network_trained_with_partial_labels_keeps_drawing_the_structure() -> None:
    """A one-layer network learns a structure shown on half of its crops and absent (not
    drawn, by the rule) from the other half. With the absence as background it learns to
    erase the structure; with partial labels it keeps drawing it where the image shows it."""
    torch.manual_seed(2)
    image = torch.zeros((1, 1, 4, 6, 6))
    image[0, 0, :, 2:4, 2:4] = 1.0  # what the structure looks like
    label = (image > 0.5).to(torch.int64) * 5
    as_background = torch.zeros_like(label)
    unlabelled = torch.from_numpy(encode_unlabelled(as_background.numpy().astype(np.uint8), (5,)))
    drawn_fraction = {}
    for mode, absent in (("background", as_background), ("partial", unlabelled.long())):
        torch.manual_seed(3)
        net = torch.nn.Conv3d(1, 6, 1)
        optim = torch.optim.Adam(net.parameters(), lr=0.05)
        loss = PartialDiceCELoss()
        images = image.repeat(4, 1, 1, 1, 1)
        labels = torch.cat([label, absent, absent, absent])  # drawn once, absent three times
        for _ in range(150):
            optim.zero_grad()
            loss(net(images), labels).backward()
            optim.step()
        with torch.no_grad():
            predicted = net(image).argmax(1)[0]
        drawn_fraction[mode] = float((predicted[label[0, 0] == 5] == 5).float().mean())
    assert drawn_fraction["partial"] == 1.0
    assert drawn_fraction["background"] == 0.0


def test_teacher_labels_draw_the_unlabelled_structure_on_background_only() -> None:
    """``--teacher-labels``: where the warm-start model draws the IMN of an N1 case (left
    unlabelled by the rule), the label gets it, but never over a structure the department
    drew; the case is then fully labelled, and the shared label array is not written to."""
    (n1,) = with_partial_labels([_case("n1", "1", (1, 3, 4))], SITE_RULE)
    n2 = _case("n2", "2", (1, 3, 4, 5))
    before = n1.label.copy()

    def teacher(case: TrainingCase) -> np.ndarray:
        probs = np.zeros((6, *ROI), dtype=np.float32)
        probs[0] = 1.0
        probs[0, 1:3, :, :] = 0.0
        probs[5, 1:3, :, :] = 1.0  # the teacher's IMN: over the axilla slice and around it
        return probs

    (filled, same), summary = fill_unlabelled([n1, n2], teacher)
    assert same is n2  # nothing unlabelled: not even run
    assert filled.unlabelled_classes == ()
    axilla = before == 3
    assert (filled.label[axilla] == 3).all()  # the department's drawing wins
    imn = np.zeros(ROI, bool)
    imn[1:3] = True
    imn &= before == 0
    assert (filled.label[imn] == 5).all() and imn.any()
    assert set(np.unique(filled.label[~imn])) == set(np.unique(before[~imn]))
    np.testing.assert_array_equal(n1.label, before)
    assert summary.cases == 1 and summary.voxels == {5: int(imn.sum())}


def test_teacher_labels_need_partial_labels_and_a_warm_start(tmp_path: Path) -> None:
    data = DataOptions(tmp_path)
    for options in (
        TrainOptions(data, out=tmp_path, teacher_labels=True, partial_labels=True),
        TrainOptions(data, out=tmp_path, teacher_labels=True, init_from=tmp_path),
    ):
        with pytest.raises(ConfigurationError, match="--teacher-labels"):
            train_from_dicom(options)


def test_a_teacher_drawn_structure_leaves_the_node_negative_variant() -> None:
    """An N1 case whose IMN the teacher drew: its N0/N1mi variant has no nodes at all (a
    variant that kept the teacher's IMN taught the network to draw it for N0: 13 cc of IMN
    on every N0 test case of the synthetic department)."""
    (n1,) = with_partial_labels([_case("n1", "1", (1, 3, 4))], SITE_RULE)
    (filled,), _ = fill_unlabelled([n1], lambda case: _teacher_imn_probs(0.9))
    assert 5 in np.unique(filled.label)
    (variant,) = convention_variants([filled], SITE_RULE, partial=True)
    assert variant.note.startswith("N0, ")
    assert _crop_classes(variant) == {1}


def _teacher_imn_probs(imn: float) -> np.ndarray:
    """Teacher probabilities: IMN ``imn`` on slices 1-2 (background the rest), else background."""
    probs = np.zeros((6, *ROI), dtype=np.float32)
    probs[0] = 1.0
    probs[0, 1:3] = 1.0 - imn
    probs[5, 1:3] = imn
    return probs


def _crop_classes(case: TrainingCase) -> set[int]:
    _, label = random_crop(case, ROI, np.random.default_rng(0), 0.0)
    return {int(c) for c in np.unique(label)} - {0}


def test_the_teacher_is_cut_where_it_best_matches_the_departments_own_drawing() -> None:
    """The teacher draws the IMN wide (most probable class in a rim around its core, at
    probability 0.45); the department drew only the core where it drew the IMN at all. The
    threshold calibrated on that drawing keeps the core, and so does the N1 case's
    pseudo-label, where the uncalibrated teacher would take the rim too."""
    core = np.zeros(ROI, bool)
    core[3, 1:5, 1:5] = True
    rim = np.zeros(ROI, bool)
    rim[3] = ~core[3]
    drawn = _case("n2", "2", (1, 3, 4, 5))  # the department's IMN: the core of slice 3
    assert ((drawn.label == 5) == core).all()
    (n1,) = with_partial_labels([_case("n1", "1", (1, 3, 4))], SITE_RULE)

    def teacher(case: TrainingCase) -> np.ndarray:
        probs = np.zeros((6, *ROI), dtype=np.float32)
        probs[0] = 1.0
        probs[5][core], probs[0][core] = 0.9, 0.1
        probs[5][rim], probs[0][rim], probs[1][rim] = 0.45, 0.35, 0.2
        return probs

    thresholds = calibrate([drawn, n1], teacher, [5])
    assert thresholds == {5: 0.5}  # the lowest threshold that keeps the rim out
    (wide,), _ = fill_unlabelled([n1], teacher)
    (cut,), _ = fill_unlabelled([n1], teacher, thresholds)
    assert ((wide.label == 5) == (core | rim)).all()
    assert ((cut.label == 5) == core).all()
