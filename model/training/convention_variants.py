"""Counterfactual notes by the department's own rule: the same CT, another N stage, the target
that rule gives it (site adaptation, issue 24).

A department that draws the internal mammary nodes (IMN) only for N2-N3 has a rule the CT
cannot show: only the note tells N1 from N2. Its own cases are few (24 in the scenario), and
each shows one note per CT. But the rule itself, stated in the structure map
(``n_stages`` of each nodal structure), turns every case into more: an N2 side's label minus
its IMN *is* the label that department draws for the same side at N1, and minus every nodal
structure the label at N0. Shown next to each other in one batch (``--pair-fraction``), the
two notes of one CT teach the network that the N stage decides, as the paper's counterfactual
pairs do. A variant is only derived where the rule fixes its label from the case's own: never
from N1 to N2 (the IMN that N2 adds was never drawn).

Only single-clause template notes (``"N2, cT3, breast conserving surgery, right side"``, as
``llmctv train`` renders clinical CSV rows) are varied; free text and bilateral notes are not.
Labels are network-grid class maps (0 background, class ``c`` = the map's ``c``-th
structure); the derived case shares the image and the label arrays and names the classes it
turns to background (:attr:`~model.training.sampling.TrainingCase.dropped_classes`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

from model.training.sampling import TrainingCase

_CLAUSE = re.compile(r"N(?P<n>0|1mi|[123][abc]?)(?P<rest>, cT[^,]+, [a-z ]+, (?:left|right) side)")

#: Stages a variant may be given (one spelling per class of target).
VARIANT_STAGES = ("0", "1", "2", "3")


def drawn(stage_rule: Mapping[int, Sequence[str]], n_stage: str) -> frozenset[int]:
    """Nodal classes drawn for a side of ``n_stage`` under ``stage_rule`` (class -> stages)."""
    if n_stage in ("0", "1mi"):
        return frozenset()
    return frozenset(c for c, stages in stage_rule.items() if n_stage[:1] in stages)


def convention_variants(
    cases: Sequence[TrainingCase], stage_rule: Mapping[int, Sequence[str]]
) -> list[TrainingCase]:
    """For each case, the variants of its note whose target the rule derives from its label.

    ``stage_rule`` maps each nodal class to the N stages (``"1"``-``"3"``) it is drawn for.
    A variant of stage ``t`` of a case of stage ``s`` exists when every class drawn at ``t``
    is drawn at ``s`` and the two sets differ; its label drops the classes drawn at ``s``
    but not at ``t``. Variants share the case's CT group (and patient), so the split keeps
    them with their case and paired batches draw them together. Ids: ``<case>~N<t>``.
    """
    out: list[TrainingCase] = []
    for case in cases:
        match = _CLAUSE.fullmatch(case.note)
        if match is None:
            continue
        own = drawn(stage_rule, match["n"])
        for stage in VARIANT_STAGES:
            target = drawn(stage_rule, stage)
            if target == own or not target <= own:
                continue
            dropped = tuple(sorted(set(case.dropped_classes) | (own - target)))
            out.append(
                replace(
                    case,
                    case_id=f"{case.case_id}~N{stage}",
                    note=f"N{stage}{match['rest']}",
                    group=case.group_key,
                    dropped_classes=dropped,
                )
            )
    return out
