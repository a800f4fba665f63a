"""Text-perturbation study (the paper's Fig. 5) on synthetic phantom cohorts.

On the SAME CT, each eligible case is contoured with its original note and with a perturbed
note (``shared/specs/breast-phantom.md``, "Text perturbations"):

* ``laterality_flip``: the fraction of predicted CTV voxels on the side each note names;
* ``n_switch``: the predicted volume inside the nodal region, with the node-positive (N1-N3)
  and the node-negative (N0 or N1mi) note. The nodal region is the union of the ``CTV_LN_*``
  ground-truth masks of the node-positive version; where the breast or chest-wall CTV
  overlaps it, even the ground truth of the N0 note keeps some volume there, so each row
  also gives that floor (``nodal_ratio_truth``, the ratio of the ground truths themselves).

Coordinates: DICOM LPS millimetres (+x toward the patient's LEFT); masks are ``(k, j, i)``
arrays on the CT grid (:mod:`model.imaging.geometry`). The side of a voxel is decided by the LPS
``x`` of its centre relative to the midline, which is the phantom's body centre
``anatomy.params.body.cx`` (the spec's "midline": no breast crosses it). Voxels whose centre
lies exactly on the midline count for neither side.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from model.errors import ConfigurationError, DatasetError
from model.evaluation.metrics import bootstrap_ci, dice
from model.imaging.geometry import Grid
from model.lab.phantoms import (
    LATERALITY_FLIP,
    N_SWITCH,
    SPEC_VERSION,
    PhantomCase,
    eligible_perturbations,
    generate_case,
    perturb,
)
from model.text.clinical import ClinicalRecord, Side

if TYPE_CHECKING:
    from model.inference import Predictor

log = logging.getLogger(__name__)

SIDE_TARGET = 0.95
"""Laterality flip target: at least this fraction of CTV voxels on the newly named side."""
NODAL_RATIO_TARGET = 0.05
"""N switch target: node-negative nodal volume below this fraction of the node-positive one."""
NODAL_ROIS = ("CTV_LN_Axilla", "CTV_LN_SCF", "CTV_LN_IMN")
MIDLINE_SOURCE = "phantom body centre x (anatomy.params.body.cx), LPS mm"

Mask = npt.NDArray[np.bool_]


# --- measures ------------------------------------------------------------------------------
def voxel_x_mm(grid: Grid, kji: npt.NDArray[np.integer]) -> npt.NDArray[np.float64]:
    """LPS ``x`` (mm) of voxel centres given as an ``(n, 3)`` array of ``(k, j, i)`` indices."""
    return grid.index_to_lps(np.asarray(kji, dtype=np.float64))[..., 0]


def side_fraction(mask: npt.NDArray[np.generic], grid: Grid, side: Side, midline_x: float) -> float:
    """Fraction of the voxels of ``mask`` whose centre lies on ``side`` of the midline.

    Parameters
    ----------
    mask
        ``(k, j, i)`` mask on ``grid`` (read as ``!= 0``).
    grid
        Places the mask in LPS mm; any direction cosines are honoured.
    side
        ``Side.LEFT`` means LPS ``x > midline_x`` (+x is the patient's left), ``Side.RIGHT``
        means ``x < midline_x``; voxels exactly on the midline count for neither.
    midline_x
        LPS ``x`` (mm) of the body's midline.

    Returns
    -------
    float
        In ``[0, 1]``; ``nan`` for an empty mask (undefined).

    Raises
    ------
    ConfigurationError
        If the mask does not have the grid's shape.
    """
    m = np.asarray(mask)
    if m.shape != tuple(grid.shape):
        raise ConfigurationError(f"mask shape {m.shape} is not the grid shape {grid.shape}")
    idx = np.argwhere(m != 0)
    if idx.size == 0:
        return math.nan
    x = voxel_x_mm(grid, idx)
    on_side = x > midline_x if side is Side.LEFT else x < midline_x
    return float(np.count_nonzero(on_side)) / float(len(x))


def volume_in_region_cc(
    mask: npt.NDArray[np.generic], region: npt.NDArray[np.generic], grid: Grid
) -> float:
    """Volume (cc) of ``mask & region``; both ``(k, j, i)`` on ``grid`` (read as ``!= 0``).

    Raises
    ------
    ConfigurationError
        If either array does not have the grid's shape.
    """
    m, r = np.asarray(mask), np.asarray(region)
    if m.shape != tuple(grid.shape) or r.shape != tuple(grid.shape):
        raise ConfigurationError(
            f"mask {m.shape} and region {r.shape} must both have the grid shape {grid.shape}"
        )
    voxel_cc = float(np.prod(grid.spacing)) / 1000.0
    return float(np.count_nonzero((m != 0) & (r != 0))) * voxel_cc


def nodal_ratio(node_negative_cc: float, node_positive_cc: float) -> float:
    """``node_negative_cc / node_positive_cc``; ``nan`` when the N+ volume is zero (undefined)."""
    if node_positive_cc <= 0.0:
        return math.nan
    return node_negative_cc / node_positive_cc


def nodal_region(case: PhantomCase) -> Mask:
    """Union of the ``CTV_LN_*`` ground-truth masks of ``case`` (``(k, j, i)``, bool)."""
    region = np.zeros(case.grid.shape, dtype=bool)
    for name in NODAL_ROIS:
        if name in case.masks:
            region |= case.masks[name]
    return region


def _node_positive(record: ClinicalRecord) -> bool:
    return any(d.node_positive for d in record.diagnoses)


# --- cohort ----------------------------------------------------------------------------------
def load_cohort_index(cohort_dir: Path) -> dict[str, Any]:
    """Read ``cohort.json`` of a phantom cohort and check its spec version.

    Raises
    ------
    DatasetError
        If the file is missing, unreadable, or from another spec version.
    """
    path = Path(cohort_dir) / "cohort.json"
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read the phantom index {path}: {exc}") from exc
    if doc.get("spec_version") != SPEC_VERSION:
        raise DatasetError(
            f"{path}: spec version {doc.get('spec_version')!r}, this generator is {SPEC_VERSION}"
        )
    return doc


def iter_cohort(cohort_dir: Path) -> Iterator[PhantomCase]:
    """Regenerate every case of a cohort from ``cohort.json`` (same CT, masks and record).

    Each case is checked against its entry (prompt, grid shape, series UID), so a cohort
    written by another generator version is refused rather than silently differing.

    Raises
    ------
    DatasetError
        If a regenerated case does not match its ``cohort.json`` entry.
    """
    doc = load_cohort_index(cohort_dir)
    for entry in doc.get("cases", []):
        case = generate_case(entry["case_id"], doc["site"], int(entry["rng_seed"]), doc["scale"])
        same = (
            case.clinical.prompt_text() == entry.get("prompt")
            and list(case.grid.shape) == entry.get("geometry", {}).get("shape_kji")
            and case.uids.series == entry.get("series_instance_uid")
        )
        if not same:
            raise DatasetError(f"a regenerated case of {cohort_dir} differs from cohort.json")
        yield case


# --- the study ---------------------------------------------------------------------------------
@dataclass
class _Contourer:
    """One predictor with per-case memoisation of its masks by note."""

    name: str
    predictor: Predictor
    memo: dict[str, Mask]

    @property
    def multimodal(self) -> bool:
        return self.predictor.network.alignment is not None

    def mask(self, case: PhantomCase, note: str) -> Mask:
        """Predicted CTV on the case's CT grid; the vision-only mask ignores the note."""
        key = note if self.multimodal else ""
        if key not in self.memo:
            self.memo[key] = self.predictor.predict(case.volume, note).mask
        return self.memo[key]


def _laterality_row(case: PhantomCase, flipped: PhantomCase, c: _Contourer) -> dict[str, Any]:
    grid, mid = case.grid, case.anatomy.params.body.cx
    notes = (case.clinical.prompt_text(), flipped.clinical.prompt_text())
    before, after = c.mask(case, notes[0]), c.mask(case, notes[1])
    old_side, new_side = case.clinical.diagnoses[0].side, flipped.clinical.diagnoses[0].side
    frac_after = side_fraction(after, grid, new_side, mid)
    return {
        "original_note": notes[0],
        "perturbed_note": notes[1],
        "original_side": old_side.value,
        "perturbed_side": new_side.value,
        "side_fraction_original": side_fraction(before, grid, old_side, mid),
        "side_fraction_flipped": frac_after,
        "dice_original": dice(before, case.masks["CTV"]),
        "dice_perturbed": dice(after, flipped.masks["CTV"]),
        "meets_target": bool(frac_after >= SIDE_TARGET),
    }


def _n_switch_row(case: PhantomCase, switched: PhantomCase, c: _Contourer) -> dict[str, Any]:
    pos, neg = (case, switched) if _node_positive(case.clinical) else (switched, case)
    region = nodal_region(pos)
    pos_note, neg_note = pos.clinical.prompt_text(), neg.clinical.prompt_text()
    pos_mask, neg_mask = c.mask(case, pos_note), c.mask(case, neg_note)
    pos_cc = volume_in_region_cc(pos_mask, region, case.grid)
    neg_cc = volume_in_region_cc(neg_mask, region, case.grid)
    ratio = nodal_ratio(neg_cc, pos_cc)
    truth_neg_cc = volume_in_region_cc(neg.masks["CTV"], region, case.grid)
    return {
        "original_note": case.clinical.prompt_text(),
        "perturbed_note": switched.clinical.prompt_text(),
        "node_positive_note": pos_note,
        "node_negative_note": neg_note,
        "nodal_region_cc": volume_in_region_cc(region, region, case.grid),
        "nodal_cc_node_positive": pos_cc,
        "nodal_cc_node_negative": neg_cc,
        "nodal_ratio": ratio,
        "nodal_ratio_truth": nodal_ratio(
            truth_neg_cc, volume_in_region_cc(region, region, case.grid)
        ),
        "dice_node_positive": dice(pos_mask, pos.masks["CTV"]),
        "dice_node_negative": dice(neg_mask, neg.masks["CTV"]),
        "meets_target": bool(ratio < NODAL_RATIO_TARGET),
    }


_ROW_FOR = {LATERALITY_FLIP: _laterality_row, N_SWITCH: _n_switch_row}


def _case_rows(
    case: PhantomCase, contourers: Sequence[_Contourer], split: str
) -> tuple[list[dict[str, Any]], dict[str, dict[str, tuple[PhantomCase, dict[str, Mask]]]]]:
    """Rows of one case, and per kind the perturbed case with each model's two masks."""
    rows: list[dict[str, Any]] = []
    shown: dict[str, dict[str, tuple[PhantomCase, dict[str, Mask]]]] = {}
    for c in contourers:
        c.memo = {}
        for kind in eligible_perturbations(case.clinical):
            other = perturb(case, kind)
            row = _ROW_FOR[kind](case, other, c)
            rows.append({"split": split, "case_id": case.case_id, "model": c.name, "kind": kind})
            rows[-1].update(row)
            notes = (case.clinical.prompt_text(), other.clinical.prompt_text())
            masks = {"original": c.mask(case, notes[0]), "perturbed": c.mask(case, notes[1])}
            shown.setdefault(kind, {})[c.name] = (other, masks)
    return rows, shown


def perturbation_study(
    predictors: dict[str, Predictor],
    cohort_dir: Path,
    *,
    split: str = "",
    seed: int = 0,
    overlay_dir: Path | None = None,
    max_overlays: int = 2,
) -> dict[str, Any]:
    """Predict every eligible case of a phantom cohort with its original and perturbed notes.

    Cases are regenerated from ``cohort.json`` (:func:`iter_cohort`), so the original and the
    perturbed note are contoured on the very same CT volume, and the ground truth of the
    perturbed note is recomputed by the spec's rule on the same anatomy.

    Parameters
    ----------
    predictors
        Model name -> predictor (multimodal or vision-only).
    cohort_dir
        A folder written by ``llmctv phantoms`` (``cohort.json`` is read).
    split
        Label stored in every row (e.g. ``"internal"``).
    seed
        Bootstrap seed of the summaries.
    overlay_dir
        When given, PNG overlays of the first ``max_overlays`` cases per kind go there.
    max_overlays
        Cases per perturbation kind shown as overlays.

    Returns
    -------
    dict
        ``cases`` (one row per model, case and kind), ``summary`` (per model and kind, mean
        and 95 % bootstrap CI), ``models`` (kind of each model), ``overlays`` (PNG paths),
        ``midline`` and ``cohorts``.
    """
    from model.lab.figures import save_overlays

    if not predictors:
        raise ConfigurationError("the perturbation study needs at least one model")
    contourers = [_Contourer(name, p, {}) for name, p in predictors.items()]
    rows: list[dict[str, Any]] = []
    overlays: list[str] = []
    counts: dict[str, int] = {}
    for case in iter_cohort(cohort_dir):
        case_rows, shown = _case_rows(case, contourers, split)
        rows += case_rows
        for kind, per_model in shown.items():
            if overlay_dir is None or counts.get(kind, 0) >= max_overlays:
                continue
            counts[kind] = counts.get(kind, 0) + 1
            name = f"fig5_{kind}_{split or 'cohort'}_{counts[kind]}.png"
            overlays.append(str(save_overlays(case, kind, per_model, overlay_dir / name)))
    log.info("perturbation study: %d rows from %d models", len(rows), len(contourers))
    models = {c.name: "multimodal" if c.multimodal else "vision-only" for c in contourers}
    return assemble(rows, models, [str(cohort_dir)], overlays, seed=seed)


# --- aggregation -----------------------------------------------------------------------------
def ci_summary(values: Sequence[float], seed: int = 0) -> dict[str, float | int]:
    """Mean and 95 % bootstrap CI of ``values`` (NaN dropped; ``n`` counts the rest)."""
    mean, low, high = bootstrap_ci(values, seed=seed)
    n = int(sum(1 for v in values if not math.isnan(v)))
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": n}


_MEASURES = {
    LATERALITY_FLIP: ("side_fraction_original", "side_fraction_flipped", "dice_perturbed"),
    N_SWITCH: (
        "nodal_cc_node_positive",
        "nodal_cc_node_negative",
        "nodal_ratio",
        "nodal_ratio_truth",
        "dice_node_positive",
        "dice_node_negative",
    ),
}


def summarize_rows(rows: Sequence[dict[str, Any]], models: Sequence[str], seed: int = 0) -> Any:
    """Per model and kind: CI summaries of every measure and the fraction meeting the target.

    Cases whose measure is undefined (NaN: empty prediction, or no nodal prediction with
    the N+ note) count as not meeting the target.
    """
    out: dict[str, dict[str, Any]] = {}
    for model in models:
        out[model] = {}
        for kind, measures in _MEASURES.items():
            mine = [r for r in rows if r["model"] == model and r["kind"] == kind]
            met = sum(1 for r in mine if r["meets_target"])
            entry: dict[str, Any] = {m: ci_summary([r[m] for r in mine], seed) for m in measures}
            entry.update(
                n_cases=len(mine),
                cases_meeting=met,
                fraction_meeting=met / len(mine) if mine else math.nan,
            )
            out[model][kind] = entry
    return out


def assemble(
    rows: list[dict[str, Any]],
    models: dict[str, str],
    cohorts: list[str],
    overlays: list[str],
    seed: int = 0,
) -> dict[str, Any]:
    """The study document from its rows (also used to merge several cohorts)."""
    return {
        "spec_version": SPEC_VERSION,
        "cohorts": cohorts,
        "midline": MIDLINE_SOURCE,
        "targets": {"side_fraction_min": SIDE_TARGET, "nodal_ratio_max": NODAL_RATIO_TARGET},
        "models": models,
        "summary": summarize_rows(rows, list(models), seed),
        "cases": rows,
        "overlays": overlays,
        "bootstrap_seed": seed,
    }


def merge_studies(studies: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """One study document from several (e.g. internal and external cohorts)."""
    if not studies:
        raise ConfigurationError("nothing to merge")
    models: dict[str, str] = {}
    for s in studies:
        models.update(s["models"])
    return assemble(
        [r for s in studies for r in s["cases"]],
        models,
        [c for s in studies for c in s["cohorts"]],
        [o for s in studies for o in s["overlays"]],
        seed=seed,
    )
