"""The department's N-stage rule, applied to what a model version draws.

A structure map may say that a nodal structure is drawn only for some N stages
(``n_stages``: e.g. the internal mammary nodes for N2-N3 only; :mod:`model.dataset.structure_map`).
A checkpoint trained with that map carries it (``structure_map`` in its metadata), and the rule
is part of the version as served: wherever a clinical record is contoured (the job path,
``llmctv evaluate`` and ``llmctv commission``), a structure the rule does not draw for its
side's N stage is removed and reported (:mod:`model.dataset.prescription`, with the rest of what
the note does not call for), and is not required by the needs-attention findings.

The network may have learnt the rule too (``llmctv train --convention-variants``); the rule
makes the department's protocol hold whatever the network learnt, the way a written protocol
would, and says so in the job's warnings. Structure keys are ``(name, side)`` with side
``"L"``/``"R"`` (patient sides, LPS +x = left).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from model.dataset.structure_map import NODE_POSITIVE_BASES, StructureMap
from model.dataset.structure_targets import map_from_meta
from model.text.clinical import ClinicalRecord

Key = tuple[str, str]


@dataclass(frozen=True)
class StageRule:
    """Nodal structures drawn only for some N stages: ``(structure, stages)`` pairs."""

    stages: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def of_map(cls, structure_map: StructureMap | None) -> StageRule | None:
        """The rule of a structure map; ``None`` when no structure restricts its stages."""
        if structure_map is None:
            return None
        pairs = tuple(
            (s.name, s.n_stages)
            for s in structure_map.structures
            if s.nodal and s.n_stages != NODE_POSITIVE_BASES
        )
        return cls(pairs) if pairs else None

    @classmethod
    def of_checkpoint(cls, meta: Mapping[str, Any]) -> StageRule | None:
        """The rule of the structure map a checkpoint was trained with (its metadata)."""
        return cls.of_map(map_from_meta(dict(meta)))

    def drawn(self, structure: str, n_stage: str) -> bool:
        """Whether ``structure`` is drawn for a node-positive side of ``n_stage`` (``"2a"``).

        Structures the rule does not name are drawn (the usual N1-N3 rule applies to them).
        """
        for name, stages in self.stages:
            if name == structure:
                return n_stage[:1] in stages
        return True

    def describe(self, key: Key, record: ClinicalRecord) -> str:
        """``"imn L: N1, drawn for N2-N3"`` for a removed key (no patient data)."""
        name, side = key
        stages = dict(self.stages)[name]
        n_stage = next(d.n_stage for d in record.diagnoses if d.side.letter == side)
        return f"{name} {side}: N{n_stage}, drawn for N" + "-N".join(stages)
