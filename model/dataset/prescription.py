"""What the note prescribes, applied to what a model version draws.

The clinical record names the treated sides, each with its surgery and N stage, and the CTV rule
(``shared/specs/breast-phantom.md``, "Ground truth") says which structures that calls for: the
breast after breast-conserving surgery, the chest wall after a mastectomy, the nodal CTVs for
N1-N3 (as the department's N-stage rule draws them, :mod:`model.dataset.stage_rule`), and
nothing on a side the record does not name. The network reads the note and usually draws just
that; what it draws beyond it (a speck of chest wall on the untreated side, a breast on a
mastectomy side, nodes for N0) is never wanted on the plan. Wherever a clinical record is
contoured (the job path, ``llmctv evaluate`` and ``llmctv commission``) such a structure is
removed from the structure set and reported in cc with its reason, so that the job's warnings
say what the network drew and the RTSTRUCT holds only what the order asked for. A structure the
note calls for and the network did not draw stays a needs-attention finding
(:mod:`model.contouring.attention`): the rule removes, it never adds.

Structure keys are ``(name, side)`` with side ``"L"``/``"R"`` (patient sides, LPS +x = left).
Structures the rule does not know (a site's own classes, e.g. interpectoral nodes) are judged
by their side, and by the N stage when the site's structure map calls them nodal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from model.dataset.stage_rule import Key, StageRule
from model.dataset.structure_map import StructureMap
from model.dataset.structure_targets import map_from_meta
from model.network.structures import NODAL, Structure
from model.text.clinical import ClinicalRecord, Diagnosis, Surgery

NOTE_RULE = "note rule"
SITE_RULE = "site rule"
PHANTOM_NODAL = frozenset(s.value for s in NODAL)
_SIDE_WORD = {"L": "left", "R": "right"}


@dataclass(frozen=True)
class Prescription:
    """The structures a record calls for: the CTV rule, and the version's N-stage rule.

    ``nodal`` names the nodal structures (drawn for node-positive sides only).
    """

    nodal: frozenset[str] = PHANTOM_NODAL
    stage_rule: StageRule | None = None

    @classmethod
    def of_map(cls, structure_map: StructureMap | None) -> Prescription:
        """The prescription under a structure map: its nodal structures and N-stage rule (the
        spec's convention when there is no map)."""
        if structure_map is None:
            return cls()
        return cls(frozenset(structure_map.nodal_names), StageRule.of_map(structure_map))

    @classmethod
    def of_checkpoint(cls, meta: Mapping[str, Any]) -> Prescription:
        """The prescription of the structure map a checkpoint was trained with."""
        return cls.of_map(map_from_meta(dict(meta)))

    def reason(self, key: Key, record: ClinicalRecord) -> str | None:
        """Why the record does not call for ``key`` (``"note rule: axilla L: N0"``), or
        ``None`` when it does. No patient data in the text."""
        name, side = key
        diagnosis = _diagnosis_of(record, side)
        label = f"{name} {side}"
        if diagnosis is None:
            return f"{NOTE_RULE}: {label}: the note names no {_SIDE_WORD.get(side, side)} side"
        mastectomy = diagnosis.surgery is Surgery.TOTAL_MASTECTOMY
        if name == Structure.BREAST.value and mastectomy:
            return f"{NOTE_RULE}: {label}: total mastectomy (chest wall CTV)"
        if name == Structure.CHEST_WALL.value and not mastectomy:
            return f"{NOTE_RULE}: {label}: breast-conserving surgery (breast CTV)"
        if name in self.nodal and not diagnosis.node_positive:
            return f"{NOTE_RULE}: {label}: N{diagnosis.n_stage}, no nodal CTV"
        rule = self.stage_rule
        if rule is not None and name in self.nodal and not rule.drawn(name, diagnosis.n_stage):
            return f"{SITE_RULE}: {rule.describe(key, record)}"
        return None

    def excluded(self, keys: Iterable[Key], record: ClinicalRecord) -> dict[Key, str]:
        """The keys the record does not call for, with their reasons (sorted by key)."""
        reasons = {key: self.reason(key, record) for key in sorted(keys)}
        return {key: why for key, why in reasons.items() if why is not None}

    def apply(
        self,
        structures: Mapping[Key, npt.NDArray[np.bool_]],
        confidence: Mapping[Key, float],
        record: ClinicalRecord,
        spacing: tuple[float, float, float],
    ) -> RuleOutcome | None:
        """What is left of ``structures`` (masks on a grid of ``spacing`` mm) once what the
        record does not call for is removed; ``None`` when nothing is.

        Only structure networks are judged: a single-CTV network's ``("ctv", side)`` entries
        are left alone (its side is checked by the consistency warnings).
        """
        keys = [key for key in structures if key[0] != "ctv"]
        gone = self.excluded(keys, record)
        if not gone:
            return None
        voxel_cc = float(np.prod(spacing)) / 1000.0
        kept = {key: mask for key, mask in structures.items() if key not in gone}
        removed = {
            why: round(float(np.count_nonzero(structures[key])) * voxel_cc, 2)
            for key, why in gone.items()
        }
        union = np.zeros(next(iter(structures.values())).shape, dtype=bool)
        for mask in kept.values():
            union |= mask
        kept_confidence = {key: value for key, value in confidence.items() if key in kept}
        return RuleOutcome(kept, union, kept_confidence, removed)


@dataclass(frozen=True)
class RuleOutcome:
    """The structures a prescription kept, their union, their confidence, and what it
    removed (cc by reason, ``"site rule: imn L: N1, drawn for N2-N3"``)."""

    structures: dict[Key, npt.NDArray[np.bool_]]
    union: npt.NDArray[np.bool_]
    confidence: dict[Key, float]
    removed_cc: dict[str, float]


SPEC_PRESCRIPTION = Prescription()


def _diagnosis_of(record: ClinicalRecord, side: str) -> Diagnosis | None:
    """The record's diagnosis of patient side ``side`` (``"L"``/``"R"``), if it names it."""
    return next((d for d in record.diagnoses if d.side.letter == side), None)
