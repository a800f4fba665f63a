"""Coded values (defined terms) of the RT Structure Set IOD used by llmctv, PS3.3 C.8.8."""

from __future__ import annotations

from enum import StrEnum


class RoiInterpretedType(StrEnum):
    """RT ROI Interpreted Type (3006,00A4) defined terms, PS3.3 C.8.8.8.1."""

    EXTERNAL = "EXTERNAL"
    PTV = "PTV"
    CTV = "CTV"
    GTV = "GTV"
    TREATED_VOLUME = "TREATED_VOLUME"
    IRRAD_VOLUME = "IRRAD_VOLUME"
    BOLUS = "BOLUS"
    AVOIDANCE = "AVOIDANCE"
    ORGAN = "ORGAN"
    MARKER = "MARKER"
    REGISTRATION = "REGISTRATION"
    ISOCENTER = "ISOCENTER"
    CONTRAST_AGENT = "CONTRAST_AGENT"
    CAVITY = "CAVITY"
    SUPPORT = "SUPPORT"
    FIXATION = "FIXATION"
    DOSE_REGION = "DOSE_REGION"
    CONTROL = "CONTROL"


class RoiGenerationAlgorithm(StrEnum):
    """ROI Generation Algorithm (3006,0036) defined terms."""

    AUTOMATIC = "AUTOMATIC"
    SEMIAUTOMATIC = "SEMIAUTOMATIC"
    MANUAL = "MANUAL"
