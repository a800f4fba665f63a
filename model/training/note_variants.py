"""Training notes rewritten to another note with the same target (text augmentation).

The target rules depend on the N stage only through one fact: node positive (N1, N2, N3 with
any suffix) or not (N0, N1mi); the T stage does not enter them at all. A note in the
reference template (``"N1mi, cT2, breast conserving surgery, left side"``, clauses joined by
``"; "``) can therefore be rewritten to any stage of the same class without changing its
label. Drawing such variants during training shows the network every stage spelling,
N1mi in particular, which the phantom cohorts draw rarely: without it the "mi" is easy to
read as N1.

The clauses of a bilateral note may also be given in either order (the rendered template
puts the left side first): a network that learnt "the first clause is the left side" must
then read each clause's own side word, which is what lets it follow a different N stage per
side.

Free-text notes (anything that is not a template clause) are returned unchanged.
"""

from __future__ import annotations

import re

import numpy as np

#: N stages without a nodal CTV, and with one (the spec's rule table).
NODE_NEGATIVE_STAGES = ("0", "1mi")
NODE_POSITIVE_STAGES = ("1", "1a", "1b", "1c", "2", "2a", "2b", "3", "3a", "3b", "3c")
T_STAGES = ("is", "1", "1mi", "1a", "1b", "1c", "2", "3", "4", "4a", "4b", "4c", "4d")

#: Share of node-negative rewrites that become N1mi (the rest N0).
MICROMETASTASIS_SHARE = 0.5

_CLAUSE = re.compile(
    r"N(?P<n>0|1mi|[123][abc]?), cT(?P<t>is|1mi|1[abc]?|[23]|4[abcd]?), "
    r"(?P<rest>[a-z ]+, (?:left|right) side)"
)


def _rewrite_clause(match: re.Match[str], rng: np.random.Generator) -> str:
    n_stage = match["n"]
    if n_stage in NODE_NEGATIVE_STAGES:
        new_n = "1mi" if rng.random() < MICROMETASTASIS_SHARE else "0"
    else:
        new_n = NODE_POSITIVE_STAGES[int(rng.integers(len(NODE_POSITIVE_STAGES)))]
    new_t = T_STAGES[int(rng.integers(len(T_STAGES)))]
    return f"N{new_n}, cT{new_t}, {match['rest']}"


def stage_equivalent_note(note: str, rng: np.random.Generator) -> str:
    """``note`` with each template clause's N and T stage redrawn within its target class.

    Node-negative clauses become N0 or N1mi, node-positive ones any of N1-N3 with a suffix;
    the T stage is drawn from all T stages. Side and surgery never change, so the label of
    the note's case is still its label. A note with no template clause comes back as is.
    """
    clauses = note.split("; ")
    if not all(_CLAUSE.fullmatch(c) for c in clauses):
        return note
    return "; ".join(_CLAUSE.sub(lambda m: _rewrite_clause(m, rng), c) for c in clauses)


def shuffled_clauses(note: str, rng: np.random.Generator) -> str:
    """The ``"; "``-joined clauses of a template note in a random order (same target)."""
    clauses = note.split("; ")
    if len(clauses) < 2 or not all(_CLAUSE.fullmatch(c) for c in clauses):
        return note
    return "; ".join(clauses[int(i)] for i in rng.permutation(len(clauses)))


def equivalent_notes(notes: list[str], share: float, rng: np.random.Generator) -> list[str]:
    """Each note, with probability ``share``, rewritten to one with the same target.

    The stages are redrawn (:func:`stage_equivalent_note`) and the clauses put in a random
    order (:func:`shuffled_clauses`).
    """
    if share <= 0:
        return notes
    return [
        shuffled_clauses(stage_equivalent_note(n, rng), rng) if rng.random() < share else n
        for n in notes
    ]
