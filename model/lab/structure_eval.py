"""Evaluation of a structure-set model on unseen phantoms: the targets of a usable structure set.

For every case of a cohort (generated in memory, never trained on) the model contours the
original note, the laterality flip (breast-conserving, one side) and the same CT under N0,
N1mi and N1 notes. Reported, with bootstrap CIs:

- Dice and HD95 (mm) of the whole CTV, HD95 per structure (breast, chest wall, axilla, SCF,
  IMN; both sides together);
- the share of the CTV on the named side after a flip;
- nodal-region volume N0 / N1 and N1mi / N1 (the region is the N1 ground truth's nodes);
- for bilateral cases, per-side N: with one side N1 and the other N0 (both ways round), the
  nodal-region volume on the N0 side over that on the N1 side;
- the same Dice and HD95 grouped by acquisition factor (slice thickness, pixel spacing, noise,
  HU offset, couch, arms, contrast) for the robustness table.

Dice and HD95 are of the version as served (the note rule removes what the record does not
call for, :mod:`model.dataset.prescription`); the flip and the nodal ratios measure what the
network reads from the text, so they are of the network alone (``prescribed=False``): the rule
would make them hold by construction.

Coordinates: masks are ``(k, j, i)`` on each case's LPS grid; distances in mm.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model.evaluation.metrics import dice, hd95
from model.inference import Prediction, Predictor
from model.lab.perturbation import ci_summary, nodal_ratio, side_fraction, volume_in_region_cc
from model.lab.phantoms import generate_case
from model.lab.phantoms.case import PhantomCase
from model.lab.phantoms.rules import ctv_masks, node_regions
from model.text.clinical import ClinicalRecord, Diagnosis, Side, Surgery

STRUCTURE_ROIS = {
    "breast": "CTV_Breast",
    "chest_wall": "CTV_ChestWall",
    "axilla": "CTV_LN_Axilla",
    "scf": "CTV_LN_SCF",
    "imn": "CTV_LN_IMN",
}
NODAL_ROIS = ("CTV_LN_Axilla", "CTV_LN_SCF", "CTV_LN_IMN")


def _with_n(record: ClinicalRecord, n_stage: str) -> ClinicalRecord:
    diagnoses = tuple(d.model_copy(update={"n_stage": n_stage}) for d in record.diagnoses)
    return record.model_copy(update={"diagnoses": diagnoses})


def _flipped(record: ClinicalRecord) -> ClinicalRecord:
    side = {Side.LEFT: Side.RIGHT, Side.RIGHT: Side.LEFT}
    diagnoses = tuple(d.model_copy(update={"side": side[d.side]}) for d in record.diagnoses)
    return record.model_copy(update={"diagnoses": diagnoses})


def _structure_mask(pred: Prediction, name: str) -> npt.NDArray[np.bool_]:
    mask = np.zeros(pred.mask.shape, dtype=bool)
    for (structure, _), part in pred.structures.items():
        if structure == name:
            mask |= part
    return mask


def _midline(case: PhantomCase) -> float:
    return float(case.anatomy.params.body.cx)


def _factors(case: PhantomCase) -> dict[str, str]:
    scanner = case.anatomy.params.scanner
    extras = case.anatomy.params.extras
    pixel = scanner.pixel_spacing  # at a 512 matrix (the case may be rendered smaller)
    factors = {
        "matrix": f"{case.grid.shape[1]}",
        "slice thickness": f"{scanner.slice_thickness:g} mm",
        "pixel spacing (512)": "< 1.0 mm"
        if pixel < 1.0
        else "1.0-1.2 mm"
        if pixel <= 1.2
        else "> 1.2 mm",
        "noise": "< 20 HU"
        if scanner.noise_sigma < 20
        else "20-35 HU"
        if scanner.noise_sigma < 35
        else ">= 35 HU",
        "HU offset": "|offset| < 10" if abs(scanner.hu_offset) < 10 else "|offset| >= 10",
    }
    if extras is not None:
        factors["couch"] = "yes" if extras.couch else "no"
        factors["arms"] = "down" if extras.arms_down else "up"
        factors["contrast"] = "yes" if extras.contrast_hu else "no"
        factors["numbering"] = "from feet" if extras.numbered_from_feet else "from head"
    return factors


def evaluate_case(predictor: Predictor, case: PhantomCase) -> dict[str, Any]:
    """One case's measures (see the module docstring)."""
    spacing = case.grid.spacing
    record = case.clinical
    pred = predictor.predict_record(case.volume, record)
    truth = case.masks["CTV"]
    has_structures = bool(predictor.network.config.structures)
    row: dict[str, Any] = {
        "case_id": case.case_id,
        "site": case.site,
        "scale": case.scale,
        "note": record.prompt_text(),
        "dice": dice(pred.mask, truth),
        "hd95": hd95(pred.mask, truth, spacing),
        "factors": _factors(case),
        "hd95_structure": {},
        "dice_structure": {},
    }
    for name, roi in STRUCTURE_ROIS.items():
        if roi in case.masks and case.masks[roi].any():
            mine = _structure_mask(pred, name) if has_structures else pred.mask
            row["hd95_structure"][name] = hd95(mine, case.masks[roi], spacing)
            row["dice_structure"][name] = dice(mine, case.masks[roi])
    unilateral = len(record.diagnoses) == 1
    if unilateral and record.diagnoses[0].surgery is Surgery.BREAST_CONSERVING:
        flipped = _flipped(record)
        flip = predictor.predict_record(case.volume, flipped, prescribed=False)
        row["flip_side_fraction"] = side_fraction(
            flip.mask, case.grid, flipped.diagnoses[0].side, _midline(case)
        )
    if unilateral:
        n1 = _with_n(record, "1")
        region = np.zeros(case.grid.shape, dtype=bool)
        for name, mask in ctv_masks(case.anatomy, n1).items():
            if name in NODAL_ROIS:
                region |= mask
        cc = {
            n: volume_in_region_cc(
                predictor.predict_record(case.volume, _with_n(record, n), prescribed=False).mask,
                region,
                case.grid,
            )
            for n in ("0", "1mi", "1")
        }
        row["nodal_cc"] = cc
        row["nodal_ratio_n0"] = nodal_ratio(cc["0"], cc["1"])
        row["nodal_ratio_n1mi"] = nodal_ratio(cc["1mi"], cc["1"])
    else:
        row["nodal_ratio_bilateral"] = _bilateral_nodal_ratio(predictor, case)
    return row


def _bilateral_nodal_ratio(predictor: Predictor, case: PhantomCase) -> float:
    """Per-side N: a bilateral note with one side N1 and the other N0, both ways round.

    The nodal-region volume on the N0 side over that on the N1 side of the same contour,
    averaged over the two orders (each side's region from its own N1 ground truth).
    """
    regions = {
        d.side: np.logical_or.reduce(list(node_regions(case.anatomy, d.side).values()))
        for d in case.clinical.diagnoses
    }
    ratios = []
    for positive in regions:
        record = case.clinical.model_copy(
            update={
                "diagnoses": tuple(
                    d.model_copy(update={"n_stage": "1" if d.side is positive else "0"})
                    for d in case.clinical.diagnoses
                ),
                "note": None,
            }
        )
        mask = predictor.predict_record(case.volume, record, prescribed=False).mask
        cc = {
            side: volume_in_region_cc(mask, region, case.grid) for side, region in regions.items()
        }
        negative = next(side for side in regions if side is not positive)
        ratios.append(nodal_ratio(cc[negative], cc[positive]))
    return float(np.mean(ratios))


def cohort(site: str, seed: int, n: int, scale: float) -> Iterable[PhantomCase]:
    """``n`` unseen cases of ``site`` (ids ``{site}9xxx``, seeds from ``seed``)."""
    for index in range(n):
        yield generate_case(f"{site}{9000 + index:04d}", site, seed + index, scale=scale)


def _summary(values: Sequence[float]) -> dict[str, float | int]:
    return ci_summary([v for v in values if v is not None and not math.isnan(v)])


def _structure_summary(rows: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    """HD95 of one structure over the cases that have it; a missed structure (predicted
    empty: HD95 infinite) is counted apart, not averaged."""
    values = [r["hd95_structure"][name] for r in rows if name in r["hd95_structure"]]
    finite = [v for v in values if math.isfinite(v)]
    return {**_summary(finite), "missed": len(values) - len(finite)}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means with 95 % bootstrap CIs of every measure; per structure; per factor level."""
    out: dict[str, Any] = {
        "n_cases": len(rows),
        "dice": _summary([r["dice"] for r in rows]),
        "hd95": _summary([r["hd95"] for r in rows]),
        "flip_side_fraction": _summary(
            [r["flip_side_fraction"] for r in rows if "flip_side_fraction" in r]
        ),
        "nodal_ratio_n0": _summary([r["nodal_ratio_n0"] for r in rows if "nodal_ratio_n0" in r]),
        "nodal_ratio_n1mi": _summary(
            [r["nodal_ratio_n1mi"] for r in rows if "nodal_ratio_n1mi" in r]
        ),
        "nodal_ratio_bilateral": _summary(
            [r["nodal_ratio_bilateral"] for r in rows if "nodal_ratio_bilateral" in r]
        ),
        "hd95_structure": {name: _structure_summary(rows, name) for name in STRUCTURE_ROIS},
    }
    factors: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        for factor, level in r["factors"].items():
            factors.setdefault(factor, {}).setdefault(level, []).append(r)
    out["robustness"] = {
        factor: {
            level: {
                "n": len(group),
                "dice": float(np.mean([g["dice"] for g in group])),
                "hd95": float(np.nanmean([g["hd95"] for g in group])),
            }
            for level, group in sorted(levels.items())
        }
        for factor, levels in sorted(factors.items())
    }
    return out


def _fmt(s: dict[str, Any], digits: int = 3) -> str:
    missed = f", missed {s['missed']}" if s.get("missed") else ""
    if not s.get("n"):
        return f"n/a{missed}"
    low, high = s["ci_low"], s["ci_high"]
    return f"{s['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] (n={s['n']}{missed})"


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """The report: one column per cohort, the robustness table of the pooled cases."""
    names = list(results)
    lines = ["| measure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label, digits in (
        ("dice", "Dice (CTV)", 3),
        ("hd95", "HD95 (CTV, mm)", 1),
        ("flip_side_fraction", "CTV on the named side after a flip", 3),
        ("nodal_ratio_n0", "nodal volume N0 / N1", 3),
        ("nodal_ratio_n1mi", "nodal volume N1mi / N1", 3),
        ("nodal_ratio_bilateral", "bilateral: nodal volume N0 side / N1 side", 3),
    ):
        lines.append(
            f"| {label} | " + " | ".join(_fmt(results[n][key], digits) for n in names) + " |"
        )
    for name in STRUCTURE_ROIS:
        cells = [_fmt(results[n]["hd95_structure"][name], 1) for n in names]
        lines.append(f"| HD95 {name} (mm) | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Robustness (all cohorts pooled): mean Dice / mean HD95 (mm) per factor level",
        "",
    ]
    lines += ["| factor | level | n | Dice | HD95 (mm) |", "|---|---|---|---|---|"]
    for factor, levels in results["pooled"]["robustness"].items():
        for level, s in levels.items():
            lines.append(f"| {factor} | {level} | {s['n']} | {s['dice']:.3f} | {s['hd95']:.1f} |")
    return "\n".join(lines) + "\n"


def run(
    predictor: Predictor, cohorts: dict[str, tuple[str, int, int, float]], out: Path
) -> dict[str, dict[str, Any]]:
    """Evaluate ``cohorts`` (name -> site, seed, n, scale); write JSON and Markdown to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    all_rows: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {}
    for name, (site, seed, n, scale) in cohorts.items():
        rows = [evaluate_case(predictor, case) for case in cohort(site, seed, n, scale)]
        all_rows += rows
        results[name] = summarize(rows)
    results["pooled"] = summarize(all_rows)
    (out / "structures.json").write_text(
        json.dumps({"results": results, "rows": all_rows}, indent=2, default=float)
    )
    (out / "structures.md").write_text(markdown(results))
    return results


def diagnosis(side: Side, surgery: Surgery, n_stage: str) -> ClinicalRecord:
    """A one-sided record (T2) for tests and probes."""
    return ClinicalRecord(
        diagnoses=(Diagnosis(side=side, surgery=surgery, t_stage="2", n_stage=n_stage),)
    )


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add ``structures-report``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "structures-report",
        help="structure-set targets and robustness table on unseen phantoms",
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--cases", type=int, default=12, help="cases per cohort")
    p.add_argument("--clinical-cases", type=int, default=4, help="cases at a 512 matrix")
    p.add_argument(
        "--bilateral-cases", type=int, default=6, help="bilateral cases (site RB, 128 matrix)"
    )
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd)
    return p


def _cmd(args: argparse.Namespace) -> int:
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device)
    cohorts = {
        "internal (A)": ("A", 70001, args.cases, 0.25),
        "external (B)": ("B", 80001, args.cases, 0.25),
        "robustness (R)": ("R", 90001, args.cases, 0.5),
    }
    if args.clinical_cases:
        cohorts["R at 512 matrix"] = ("R", 95001, args.clinical_cases, 1.0)
    if args.bilateral_cases:
        cohorts["bilateral (RB)"] = ("RB", 97001, args.bilateral_cases, 0.25)
    run(predictor, cohorts, args.out)
    print((args.out / "structures.md").read_text())
    return 0
