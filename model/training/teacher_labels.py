"""Unlabelled structures drawn by the model being fine-tuned, before it learns anything new.

With partial labels (:mod:`model.training.partial_loss`) a structure the department's rule does
not draw for a case's N stage is left unlabelled: the loss is silent there. Silence is enough
where the department's other cases show the structure in every anatomy; it is not where they
do not. The synthetic department's 24 training cases hold no mastectomy case at N2-N3, so not
one of them shows the internal mammary nodes (IMN) of a chest wall: fine-tuned on them, the
network forgets a structure it drew well before (IMN Dice 0 on every mastectomy N2-N3 test
case, against 0.51-0.71 for the shipped model it started from).

``llmctv train --teacher-labels`` (with ``--partial-labels`` and ``--init-from``) fills those
unlabelled structures with what the warm-start model draws there, once, before the first step:
a background voxel of the case's label becomes class ``c`` when ``c`` is unlabelled in the case
and the warm-start model's most probable class (the *teacher*'s pseudo-label, "learning without
forgetting", Li and Hoiem, IEEE TPAMI 2018). The department's own drawing always wins: a voxel
it labelled keeps its class.

The teacher follows another convention, and may draw the structure wider or narrower than the
department does (the shipped model's IMN is about 1.5 times the site's volume). So the
teacher's probability is cut at the threshold that best reproduces the department's own
drawing of that structure: on the training cases where the department drew it, the threshold
(of :data:`THRESHOLDS`) with the highest mean Dice between the teacher's mask and the drawn one
(:func:`calibrate`); without such a case, the teacher's most probable class.

The rule served with the version removes the structure again where the department does not
draw it, so what the network keeps is the anatomy, not a new indication.
Labels are network-grid class maps (``(k, j, i)``, 0 background).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from model.evaluation.metrics import dice
from model.training.sampling import TrainingCase

#: Class probabilities ``(C, k, j, i)`` of a case on its network grid.
Teacher = Callable[[TrainingCase], npt.NDArray[np.floating]]
#: Probability thresholds tried for a class's pseudo-label.
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class TeacherSummary:
    """What the teacher drew: cases filled and voxels per class (no patient data)."""

    cases: int
    voxels: dict[int, int]


def calibrate(
    cases: Sequence[TrainingCase], teacher: Teacher, classes: Sequence[int]
) -> dict[int, float]:
    """Per class, the teacher threshold that best reproduces the department's drawing.

    Only cases whose label holds the class take part (the department drew it there); a class
    no case holds gets no threshold. Ties go to the lower threshold.
    """
    scores: dict[int, list[list[float]]] = {c: [] for c in classes}
    for case in cases:
        label = np.asarray(case.label)
        present = [c for c in classes if c not in case.unlabelled_classes and (label == c).any()]
        if not present:
            continue
        probs = np.asarray(teacher(case))
        for c in present:
            drawn = label == c
            scores[c].append([dice(probs[c] >= t, drawn) for t in THRESHOLDS])
    return {
        c: THRESHOLDS[int(np.argmax(np.mean(rows, axis=0)))] for c, rows in scores.items() if rows
    }


def fill_unlabelled(
    cases: Sequence[TrainingCase],
    teacher: Teacher,
    thresholds: Mapping[int, float] | None = None,
) -> tuple[list[TrainingCase], TeacherSummary]:
    """The cases with their unlabelled classes drawn by ``teacher`` on background voxels:
    where the class's probability reaches its threshold (:func:`calibrate`), else where it
    is the most probable class.

    A filled case gets a new label array (the old one, possibly a memory map shared with other
    cases of the same CT, is not written to) and no unlabelled classes left.
    """
    out: list[TrainingCase] = []
    voxels: dict[int, int] = {}
    filled = 0
    for case in cases:
        if not case.unlabelled_classes:
            out.append(case)
            continue
        probs = np.asarray(teacher(case))
        winner = probs.argmax(axis=0)
        label = np.array(case.label, dtype=np.uint8, copy=True)
        background = label == 0
        for c in case.unlabelled_classes:
            cut = (thresholds or {}).get(c)
            drawn = background & ((winner == c) if cut is None else (probs[c] >= cut))
            label[drawn] = c
            voxels[c] = voxels.get(c, 0) + int(np.count_nonzero(drawn))
        filled += 1
        out.append(replace(case, label=label, unlabelled_classes=(), source=""))
    return out, TeacherSummary(filled, dict(sorted(voxels.items())))
