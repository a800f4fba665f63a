"""The target structures of breast radiotherapy that the network can predict as channels.

The phantom specification (``shared/specs/breast-phantom.md``) defines the sub-volumes of the
CTV: breast (after breast-conserving surgery) or chest wall (after mastectomy), and the nodal
regions axilla (levels I-III), supraclavicular fossa and internal mammary chain. Channels are
side-agnostic; the side of each voxel comes from its LPS x relative to the body midline.
"""

from __future__ import annotations

from enum import StrEnum


class Structure(StrEnum):
    """One predicted sub-volume of the CTV (channel order = definition order)."""

    BREAST = "breast"
    CHEST_WALL = "chest_wall"
    AXILLA = "axilla"
    SCF = "scf"
    IMN = "imn"

    @property
    def nodal(self) -> bool:
        """Whether this is a lymph-node region (only for N1-N3)."""
        return self in NODAL


NODAL = frozenset({Structure.AXILLA, Structure.SCF, Structure.IMN})
BREAST_STRUCTURES: tuple[str, ...] = tuple(s.value for s in Structure)
"""All five sub-volumes, in channel order."""

#: ROI-name patterns (case-insensitive, anchored) of the phantom ground truth, per structure.
PHANTOM_ROI_PATTERNS: dict[str, tuple[str, ...]] = {
    Structure.BREAST.value: (r"^ctv_breast(_[lr])?$",),
    Structure.CHEST_WALL.value: (r"^ctv_chest_?wall(_[lr])?$",),
    Structure.AXILLA.value: (r"^ctv_ln_axilla(_[lr])?$",),
    Structure.SCF.value: (r"^ctv_ln_scf(_[lr])?$",),
    Structure.IMN.value: (r"^ctv_ln_imn(_[lr])?$",),
}
