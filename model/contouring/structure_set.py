"""Contouring one structure set: the one domain call a job makes.

:func:`contour_structure_set` takes stored CT files and a clinical record to an RTSTRUCT and
what the job record keeps: it reads the series (:mod:`model.dicom.series`), refuses geometry
the policy does not allow, contours it with the injected engine (network, side handling,
postprocessing, anatomical rules, confidence: :mod:`model.contouring.engine`), checks the
contour against the record (:mod:`model.contouring.consistency`,
:mod:`model.contouring.attention`), names the structures (:mod:`model.contouring.naming`), and
writes the RTSTRUCT (:mod:`model.dicom.rtstruct`) and the preview PNG
(:mod:`model.contouring.preview`). Job execution (claims, leases, cancellation, the job record)
stays with the caller, which stops a job by raising from ``progress``.

Coordinates: CT arrays and masks are ``(k, j, i)`` on the series grid; sides are patient sides
(LPS mm, +x = left) through the grid, never by array position.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model import __version__
from model.contouring.attention import attention_findings
from model.contouring.consistency import (
    laterality_warnings,
    nodal_warnings,
    node_negative_record,
    removal_warnings,
    structure_warnings,
)
from model.contouring.naming import (
    DEFAULT_ROI_NAMES,
    DEFAULT_SIDE_LABELS,
    SideLabels,
    confidence_by_roi,
    roi_specs,
    volumes_cc,
)
from model.contouring.preview import render_preview
from model.dicom.ingest_policy import IngestPolicy
from model.dicom.rtstruct import ReferencedSeries, WriterInfo, write_rtstruct
from model.dicom.series import CtSeries, read_ct_series
from model.errors import ImplausibleGeometryError
from model.text.clinical import ClinicalRecord, parse_clinical

if TYPE_CHECKING:
    from model.contouring.engine import ContourEngine, EngineResult

#: A progress callback: fraction of the job's contouring done, 0 to 1. It may raise to stop.
Progress = Callable[[float], None]


@dataclass(frozen=True)
class ContouringPolicy:
    """What a site decides about its structure sets (the worker settings give it).

    Attributes
    ----------
    ingest
        Plausible CT geometry and the sliding-window budget.
    roi_name, roi_names
        Name of the union ROI, and of each sub-volume (a template: ``{side}`` becomes the
        side's label).
    side_labels
        What replaces ``{side}`` for the left and the right side: ``("L", "R")``, or a site's
        side affixes from a model card (``("_Lt", "_Rt")`` with templates ``CTVn_IMN{side}``).
    model_version
        The registered model version served (``model <name> v<n> <hash>``), or ``""`` for a
        checkpoint outside the registry; written into SoftwareVersions.
    structure_set_label, roi_name_suffix
        StructureSetLabel and a suffix for every ROI name.
    nodal_check_cc
        Nodal volume (cc) below which N+ is reported as missing (0 turns the check off).
    removed_warning_cc
        Postprocessing removals above this (cc) are a warning.
    confidence_flag_below
        A structure whose confidence is below this needs attention.
    """

    ingest: IngestPolicy = field(default_factory=IngestPolicy)
    roi_name: str = "CTV"
    roi_names: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ROI_NAMES))
    side_labels: SideLabels = DEFAULT_SIDE_LABELS
    model_version: str = ""
    structure_set_label: str = "LLMCTV"
    roi_name_suffix: str = ""
    nodal_check_cc: float = 5.0
    removed_warning_cc: float = 1.0
    confidence_flag_below: float = 0.90

    def writer_info(self, checkpoint_hash: str) -> WriterInfo:
        """Manufacturer, model and labels of our RTSTRUCTs."""
        return WriterInfo(
            model_name="llmctv multimodal CTV",
            software_versions=(
                f"llmctv {__version__}",
                f"checkpoint {checkpoint_hash or 'unknown'}",
                *((self.model_version,) if self.model_version else ()),
            ),
            structure_set_label=self.structure_set_label,
            roi_name_suffix=self.roi_name_suffix,
        )


@dataclass(frozen=True)
class StructureSetRequest:
    """One structure set to contour: the stored CT files and the clinical fields."""

    input_dir: Path
    clinical: Mapping[str, Any]
    series_instance_uid: str | None = None


@dataclass(frozen=True)
class StructureSetFiles:
    """Where the RTSTRUCT and the preview PNG are written."""

    rtstruct: Path
    preview: Path


@dataclass
class StructureSetResult:
    """What the job record keeps of one structure set (no patient data)."""

    rtstruct_sop_instance_uid: str
    checkpoint: str
    warnings: list[str]
    attention: list[str]
    structure_confidence: dict[str, float]
    roi_volumes_cc: dict[str, float]
    timings: dict[str, float]


@dataclass
class CheckedContour:
    """The engine's contour and what the checks found."""

    result: EngineResult
    timings: dict[str, float]
    warnings: list[str]
    attention: list[str]
    nodal_cc: float | None


def contour_structure_set(
    engine: ContourEngine,
    request: StructureSetRequest,
    policy: ContouringPolicy,
    out: StructureSetFiles,
    progress: Progress | None = None,
) -> StructureSetResult:
    """Contour one CT for one clinical record and write its RTSTRUCT and preview.

    ``progress`` is called with the fraction done at every sliding-window step and at every
    stage boundary; an exception it raises ends the call (a cancelled or timed-out job).

    Raises
    ------
    LlmctvError
        The clinical fields or the series are refused (``invalid_clinical_input``,
        ``implausible_geometry``, ...), or a note is too long.
    """
    report = progress or _ignore
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    record = parse_clinical(dict(request.clinical))
    ct = read_ct_series(
        request.input_dir, series_instance_uid=request.series_instance_uid, policy=policy.ingest
    )
    timings["ingest"] = time.perf_counter() - t0
    check_windows(engine, ct, policy.ingest)
    report(0.0)
    checked = contour_and_check(engine, ct, record, policy, report)
    timings.update(checked.timings)
    report(1.0)
    result = checked.result
    t0 = time.perf_counter()
    rois = roi_specs(
        result.mask, result.structures, policy.roi_name, policy.roi_names, policy.side_labels
    )
    written = write_rtstruct(
        out.rtstruct,
        ReferencedSeries.from_datasets(ct.datasets),
        rois,
        policy.writer_info(engine.checkpoint_hash),
    )
    timings["rtstruct"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    outlines = {roi.name: roi.mask for roi in rois[1:]} or None  # sub-volumes, not the union
    preview = render_preview(ct.volume.array, result.mask, ct.volume.grid, structures=outlines)
    out.preview.write_bytes(preview)
    timings["preview"] = time.perf_counter() - t0
    volumes = volumes_cc(rois, _voxel_cc(ct))
    if checked.nodal_cc is not None:
        volumes["nodal (N+ minus N0)"] = round(checked.nodal_cc, 2)
    return StructureSetResult(
        rtstruct_sop_instance_uid=str(written.SOPInstanceUID),
        checkpoint=engine.checkpoint_hash,
        warnings=[*ct.warnings, *checked.warnings],
        attention=checked.attention,
        structure_confidence=confidence_by_roi(
            result.confidence, policy.roi_names, policy.side_labels
        ),
        roi_volumes_cc=volumes,
        timings={k: round(v, 4) for k, v in timings.items()},
    )


def contour_and_check(
    engine: ContourEngine,
    ct: CtSeries,
    record: ClinicalRecord,
    policy: ContouringPolicy,
    progress: Progress,
) -> CheckedContour:
    """CTV for the record, its consistency warnings and its needs-attention findings.

    A network with separate structures is checked on them directly (nodal CTV present for N+,
    absent for N0/N1mi; breast or chest wall as the surgery says). A single-CTV network needs
    the counterfactual N0 contour for the nodal check (a second pass, N+ only).
    """
    from model.inference import scaled_progress

    check = node_negative_record(record) if engine.multimodal else None
    needs_second_pass = policy.nodal_check_cc > 0 and not engine.has_structures
    check = check if needs_second_pass else None
    share = 0.5 if check is not None else 1.0
    result = engine.contour_record(ct.volume, record, scaled_progress(progress, 0.0, share))
    timings = dict(result.timings)
    t0 = time.perf_counter()
    warnings = laterality_warnings(record, result.mask, ct.volume.array, ct.volume.grid)
    voxel_cc = _voxel_cc(ct)
    attention: list[str] = []
    if engine.has_structures:
        min_cc = policy.nodal_check_cc if policy.nodal_check_cc > 0 else 1.0
        warnings += structure_warnings(record, result.structures, voxel_cc, min_cc)
        attention = attention_findings(
            record,
            result.structures,
            result.plausibility,
            voxel_cc,
            min_cc,
            confidence=result.confidence,
            flag_below=policy.confidence_flag_below,
            rule=engine.stage_rule,
        )
    warnings += removal_warnings(result.removed_cc, policy.removed_warning_cc)
    timings["consistency"] = time.perf_counter() - t0
    nodal_cc = None
    if check is not None:
        t0 = time.perf_counter()
        n0 = engine.contour(ct.volume, check.prompt_text(), scaled_progress(progress, 0.5, 0.5))
        found, nodal_cc = nodal_warnings(
            record, result.mask, n0.mask, ct.volume.grid, policy.nodal_check_cc
        )
        warnings += found
        timings["nodal_check"] = time.perf_counter() - t0
    return CheckedContour(result, timings, warnings, attention, nodal_cc)


def check_windows(engine: ContourEngine, ct: CtSeries, policy: IngestPolicy) -> None:
    """Refuse a CT whose network pass would take more than ``policy.max_windows`` windows."""
    windows = engine.window_count(ct.volume.grid)
    if windows > policy.max_windows:
        raise ImplausibleGeometryError(
            f"the series needs {windows} sliding windows per pass; at most "
            f"{policy.max_windows} are accepted"
        )


def _voxel_cc(ct: CtSeries) -> float:
    return float(np.prod(ct.volume.grid.spacing)) / 1000.0


def _ignore(fraction: float) -> None:
    """No progress reporting."""
