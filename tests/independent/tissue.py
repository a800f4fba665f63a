"""Tissue classes of the label volume (HU assigned in ``render.tissue_hu``)."""

from __future__ import annotations

from enum import IntEnum


class Tissue(IntEnum):
    """Tissue classes of the label volume (HU assigned in ``render``)."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    SKIN = 3
    GLAND = 4
    LUNG = 5
    HEART = 6
    MED_FAT = 7
    VESSEL = 8
    AIRWAY = 9
    CORTEX = 10
    MARROW = 11
    CARTILAGE = 12
    LIVER = 13
    SPLEEN = 14
    STOMACH = 15
    GAS = 16
    ABDOMEN = 17
    SEROMA = 18
    CLIP = 19
    COUCH_SHELL = 20
    COUCH_FOAM = 21
    DISC = 22
    CSF = 23
    SOFT = 24
    STERNUM = 25
