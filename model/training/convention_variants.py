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

**Partial labels** (``partial=True``, ``llmctv train --partial-labels``): a structure the rule
does not draw for a node-positive stage is *not drawn*, not background. A case's own N1 side
then leaves its IMN unlabelled (:func:`with_partial_labels`), and so does an N2 case's N1
variant: the network is neither taught to draw nor to erase it there
(:mod:`model.training.partial_loss`), and the served rule removes it. Only the node-negative
(N0 or N1mi) variant, for which no department draws nodes, turns them all to background,
including nodes the warm-start model drew (:mod:`model.training.teacher_labels`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from model.training.note_variants import NODE_NEGATIVE_STAGES
from model.training.sampling import TrainingCase

_CLAUSE = re.compile(r"N(?P<n>0|1mi|[123][abc]?)(?P<rest>, cT[^,]+, [a-z ]+, (?:left|right) side)")

#: Stages a variant may be given (one spelling per class of target).
VARIANT_STAGES = ("0", "1", "2", "3")


def drawn(stage_rule: Mapping[int, Sequence[str]], n_stage: str) -> frozenset[int]:
    """Nodal classes drawn for a side of ``n_stage`` under ``stage_rule`` (class -> stages)."""
    if n_stage in NODE_NEGATIVE_STAGES:
        return frozenset()
    return frozenset(c for c, stages in stage_rule.items() if n_stage[:1] in stages)


def _not_drawn(stage_rule: Mapping[int, Sequence[str]], n_stage: str) -> frozenset[int]:
    """Nodal classes the rule leaves undrawn for a node-positive ``n_stage`` (else none)."""
    if n_stage in NODE_NEGATIVE_STAGES:
        return frozenset()
    return frozenset(stage_rule) - drawn(stage_rule, n_stage)


def with_partial_labels(
    cases: Sequence[TrainingCase], stage_rule: Mapping[int, Sequence[str]]
) -> list[TrainingCase]:
    """The cases, each with the nodal classes the rule does not draw for its stage unlabelled.

    A class the case's label holds anyway (drawn against the rule: ``dataset check`` warns,
    ``nodal_vs_stage_rule``) stays labelled: what was drawn is trusted.
    """
    out = []
    for case in cases:
        match = _CLAUSE.fullmatch(case.note)
        missing = _not_drawn(stage_rule, match["n"]) if match else frozenset()
        if missing:
            present = set(np.unique(np.asarray(case.label)).tolist())
            missing = missing - present
        unlabelled = tuple(sorted(set(case.unlabelled_classes) | missing))
        out.append(replace(case, unlabelled_classes=unlabelled) if missing else case)
    return out


def convention_variants(
    cases: Sequence[TrainingCase],
    stage_rule: Mapping[int, Sequence[str]],
    *,
    partial: bool = False,
) -> list[TrainingCase]:
    """For each case, the variants of its note whose target the rule derives from its label.

    ``stage_rule`` maps each nodal class to the N stages (``"1"``-``"3"``) it is drawn for.
    A variant of stage ``t`` of a case of stage ``s`` exists when every class drawn at ``t``
    is drawn at ``s`` and the two sets differ; its label drops the classes drawn at ``s``
    but not at ``t``. Variants share the case's CT group (and patient), so the split keeps
    them with their case and paired batches draw them together. Ids: ``<case>~N<t>``. The
    node-negative variant is written N0 and N1mi in turn (N1mi has the target of N0 in every
    protocol, and a network shown only N0 reads "N1mi" as N1).
    With ``partial``, the classes a node-positive variant drops are also unlabelled.
    """
    out: list[TrainingCase] = []
    negatives = 0
    for case in cases:
        match = _CLAUSE.fullmatch(case.note)
        if match is None:
            continue
        own = drawn(stage_rule, match["n"])
        # nodal classes in the label beyond the rule's (drawn against it, or by the teacher,
        # :mod:`model.training.teacher_labels`) go wherever the rule's own ones go
        held = set(np.unique(np.asarray(case.label)).tolist()) & set(stage_rule)
        for stage in VARIANT_STAGES:
            target = drawn(stage_rule, stage)
            if target == own or not target <= own:
                continue
            spelling = stage
            if stage == "0":
                spelling = NODE_NEGATIVE_STAGES[negatives % len(NODE_NEGATIVE_STAGES)]
                negatives += 1
            dropped = tuple(sorted(set(case.dropped_classes) | ((own | held) - target)))
            unlabelled: tuple[int, ...] = ()  # an N0 side has no nodes, in any protocol
            if stage != "0":
                unlabelled = case.unlabelled_classes
                if partial:
                    unlabelled = tuple(sorted(set(unlabelled) | (own - target)))
            out.append(
                replace(
                    case,
                    case_id=f"{case.case_id}~N{spelling}",
                    note=f"N{spelling}{match['rest']}",
                    group=case.group_key,
                    dropped_classes=dropped,
                    unlabelled_classes=unlabelled,
                )
            )
    return out
