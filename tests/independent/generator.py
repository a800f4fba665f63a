"""Independent breast-RT phantom generator (test data only; written from the spec alone).

Built from ``shared/specs/breast-phantom.md`` v1.1 without looking at the training generator, to
test the shipped model on anatomy nobody tuned it to.

Coordinates: DICOM patient LPS in mm (+x patient left, +y posterior, +z head). Volumes are
indexed (k, j, i) = (slice, row, column); column i -> +x, row j -> +y, slice k -> +z (k = 0 is
the most caudal slice), head first supine, ``ImageOrientationPatient = [1,0,0,0,1,0]``.
``Grid.origin`` is the LPS centre of voxel (0, 0, 0) and equals slice 0's ImagePositionPatient.

Ground truth follows the spec's CTV rule exactly, per treated side: breast-conserving ->
``breast`` = the breast cropped to skin distance >= 5 mm (breast = footprint from the front of
the muscle layer out to the skin, mound included); total mastectomy -> ``chest_wall`` = body
voxels over the former footprint from skin distance >= 3 mm down to the outer surface of the rib
layer (ribs excluded: "soft tissue"); N1/N2/N3 (not N0, N1mi) -> ``axilla``, ``scf``, ``imn``
of that side, each only intersected with the body (the spec crops nodes at no skin distance).
Axilla and SCF are 3-D ellipsoids whose z semi-axis spans the spec's z range; axilla keeps only
y < body centre; IMN is a radius-8 tube whose axis follows, slice by slice, 8 mm behind the
inner surface of the rib layer. Skin distance = exact 3-D Euclidean distance from a voxel centre
to the nearest voxel centre outside the body (``render.skin_distance``).

Own modelling choices (deliberately not the naive reading of the spec):
- Body: two half superellipses (anterior exponent 2.0-2.6, posterior 2.8-4.0: flatter back),
  anterior/posterior semi-axes b(1 -/+ 0-8 %) inside 95-130, low-order harmonics (<= 1.5 % each,
  phase drifting along z), a 0-5 mm sternal groove; shoulders widen the trunk by 3-12 % above the
  breasts, the AP depth tapers cranially and grows slightly over the upper abdomen. a = 140-190,
  table shift +-20 mm (clamped only to keep the body inside the field of view).
- A 1.5-2.5 mm dermis (+25 HU) over the 8-25 mm fat; muscle depth varies around the trunk
  (pectoralis 8-15, serratus 8-14, paraspinal 35-55); a 8-11 mm rib layer with sloping ribs
  (anterior ends lower), cartilage near the sternum, sternum, scapulae, clavicles, vertebrae with
  discs, canal and posterior arch; optional couch (50 %) just behind the back.
- Breasts: footprint superellipse in (arc length along the skin, z) with an axillary tail;
  mound height P (1 - rho^2)^q, q = 0.6-1.2, P <= 1.1 radius, raised along rays from a point
  0.8-3 b behind the body centre (nearly anterior); three shape classes: small/flat (P 25-32),
  medium, large/ptotic (P 60-80, sagging 15-40 % of the radius laterally and 8-22 mm caudally, the
  caudal sag counted inside the 150 mm length); fibroglandular tissue (20-40 HU) from a smooth
  3-D random field, denser centrally, absent within 4-8 mm of the skin and 3 mm of the muscle.
- Lungs: the rib cage interior minus a mediastinum whose width varies with depth, the heart with
  its fat, great vessels, airway, oesophagus and the spine block, above a two-dome diaphragm and
  below an ellipsoidal apex cap: not ellipsoids. Heart: rotated, tilted ellipsoid (semi-axes
  45-58/33-43/38-50 mm, 10-35 mm left), resting on the central tendon. Right dome (liver) peaks
  between 10 mm below the breasts' bottom and 40 % of the breast length above it, so in some cases
  the liver reaches well into the caudal breast slices; left dome 8-25 mm lower with stomach (gas
  anterior) and spleen below it.
- Texture: correlated soft-tissue texture (7 HU, 2 mm), lung vessels and a gravity gradient, an
  in-plane PSF blur (0.45-0.8 mm), then correlated Gaussian noise (correlation 0.6-1.1 mm) scaled
  to the site's sigma (a bit higher centrally), then the site's HU offset. Site A is written as
  uint16 with RescaleIntercept -1024 (HU clipped to [-1024, 3071]), site B as int16 intercept 0.
- Field-of-view centre moved +-12 mm (x) / +-30 mm (y) in LPS and z positions anywhere between
  about -320 and +270 mm, so no coordinate happens to be zero or symmetric.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .anatomy import Anatomy
from .dicom_out import write_series
from .params import (
    SIDE_LETTER,
    Scanner,
    sample_body,
    sample_breasts,
    sample_nodes,
    sample_organs,
    sample_record,
    sample_scanner,
    sample_surgery,
)
from .render import assemble, gland_field, tissue_hu
from .shapes import BoolArray, Grid

__all__ = [
    "IndependentCase",
    "generate_case",
    "main",
    "render_note",
    "target_masks",
    "with_record",
    "write_case",
    "write_cohort",
]

StructureKey = tuple[str, str]  # (structure, side): ("breast", "L"), ("imn", "R"), ...
NODES = ("axilla", "scf", "imn")
_T_STAGE = re.compile(r"is|1mi|1[abc]?|[23]|4[abcd]?")
_N_STAGE = re.compile(r"0|1mi|[123][abc]?")
_SURGERY_TEXT = {
    "breast_conserving": "breast conserving surgery",
    "total_mastectomy": "total mastectomy surgery",
}


@dataclass
class IndependentCase:
    """One generated case. Volumes are (k, j, i) on ``grid`` (LPS mm, k toward the head)."""

    case_id: str
    seed: int
    site: str
    grid: Grid
    hu: npt.NDArray[np.float32]  # Hounsfield units exactly as written to DICOM
    masks: dict[StructureKey, BoolArray]  # CTV sub-volumes of the record
    ctv: BoolArray  # union of ``masks``
    clinical: dict[str, Any]  # service-contract clinical JSON
    labels: npt.NDArray[np.uint8]  # ``anatomy.Tissue`` per voxel
    body: BoolArray
    candidates: dict[StructureKey, BoolArray]  # every sub-volume the rule could ask for
    scanner: Scanner
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


def validate_record(record: dict[str, Any]) -> dict[str, Any]:
    """Check a clinical record against the contract's schema; returns a normalised copy."""
    allowed = {"diagnoses", "age", "pathology", "neoadjuvant_chemotherapy", "note"}
    unknown = set(record) - allowed
    if unknown:
        raise ValueError(f"unknown clinical fields: {sorted(unknown)}")
    diagnoses = record.get("diagnoses")
    if not isinstance(diagnoses, list) or not 1 <= len(diagnoses) <= 2:
        raise ValueError("diagnoses must hold one or two entries")
    sides = set()
    for d in diagnoses:
        if set(d) != {"side", "surgery", "t_stage", "n_stage"}:
            raise ValueError(f"diagnosis fields: {sorted(d)}")
        if d["side"] not in SIDE_LETTER or d["surgery"] not in _SURGERY_TEXT:
            raise ValueError(f"bad side or surgery: {d}")
        if not _T_STAGE.fullmatch(d["t_stage"]) or not _N_STAGE.fullmatch(d["n_stage"]):
            raise ValueError(f"bad T or N stage: {d}")
        sides.add(d["side"])
    if len(sides) != len(diagnoses):
        raise ValueError("a side is given twice")
    out = json.loads(json.dumps(record))
    out["diagnoses"] = sorted(out["diagnoses"], key=lambda d: d["side"])
    return dict(out)


def render_note(record: dict[str, Any]) -> str:
    """The reference template, e.g. ``"N1, cT2, breast conserving surgery, left side"``."""
    return "; ".join(
        f"N{d['n_stage']}, cT{d['t_stage']}, {_SURGERY_TEXT[d['surgery']]}, {d['side']} side"
        for d in record["diagnoses"]
    )


def target_masks(
    candidates: dict[StructureKey, BoolArray], record: dict[str, Any]
) -> tuple[dict[StructureKey, BoolArray], BoolArray]:
    """Apply the CTV rule of ``record`` to the case's candidate regions: (sub-volumes, union)."""
    masks: dict[StructureKey, BoolArray] = {}
    for d in record["diagnoses"]:
        side = SIDE_LETTER[d["side"]]
        name = "breast" if d["surgery"] == "breast_conserving" else "chest_wall"
        if (name, side) not in candidates:
            raise ValueError(f"this CT has no {name} region on side {side} (surgery differs)")
        masks[(name, side)] = candidates[(name, side)]
        if d["n_stage"] not in ("0", "1mi"):
            for node in NODES:
                masks[(node, side)] = candidates[(node, side)]
    ctv = np.zeros(next(iter(candidates.values())).shape, bool)
    for mask in masks.values():
        ctv |= mask
    return masks, ctv


def with_record(case: IndependentCase, record: dict[str, Any]) -> IndependentCase:
    """The same CT with the ground truth recomputed for another record (text perturbations)."""
    record = validate_record(record)
    masks, ctv = target_masks(case.candidates, record)
    return dataclasses.replace(case, masks=masks, ctv=ctv, clinical=record)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def generate_case(
    seed: int,
    site: str,
    matrix: int = 512,
    record: dict[str, Any] | None = None,
    case_id: str | None = None,
) -> IndependentCase:
    """Generate one case. The anatomy depends on (seed, site) and on which sides the record
    gives a mastectomy; ``matrix`` only resamples it (pixel spacing grows by 512/matrix)."""
    site = site.upper()
    if site not in ("A", "B"):
        raise ValueError("site must be A or B")
    if matrix < 32:
        raise ValueError("matrix must be at least 32")
    streams = np.random.SeedSequence([int(seed), ord(site), 20240917]).spawn(12)
    rng = [np.random.default_rng(s) for s in streams]
    drawn = sample_record(rng[0], site)
    record = validate_record(drawn if record is None else record)
    treated = {SIDE_LETTER[d["side"]]: d for d in record["diagnoses"]}
    mastectomy = {s: d["surgery"] == "total_mastectomy" for s, d in treated.items()}
    scanner = sample_scanner(rng[1], site)
    body = sample_body(rng[2], scanner, 80.0)
    breasts = sample_breasts(rng[3], body.a, mastectomy)
    surg_rng = dict(zip("LR", rng[4].spawn(2), strict=True))
    surgery = {s: sample_surgery(surg_rng[s], s, mastectomy[s]) for s in sorted(treated)}
    node_rng = dict(zip("LR", rng[5].spawn(2), strict=True))
    nodes = {s: sample_nodes(node_rng[s], s) for s in "LR"}
    top = max(b.top for b in breasts.values())
    bottom = min(b.bottom for b in breasts.values())
    lowest = min(b.lowest for b in breasts.values())
    length = float(np.mean([b.length for b in breasts.values()]))
    organs = sample_organs(rng[6], body, top, bottom, length)

    spacing = round(scanner.pixel_spacing_512 * 512 / matrix, 5)
    dk = scanner.slice_thickness
    z_hi = top + float(rng[7].uniform(70, 100))
    z_lo = round(lowest - float(rng[7].uniform(20, 40)), 2)
    nk = round((z_hi - z_lo) / dk) + 1
    half = spacing * (matrix - 1) / 2
    origin = (
        round(scanner.fov_centre[0] - half, 3),
        round(scanner.fov_centre[1] - half, 3),
        z_lo,
    )
    grid = Grid(origin, (dk, spacing, spacing), (nk, matrix, matrix))
    gland = gland_field(rng[8], grid, 3.5)
    anatomy = Anatomy(grid, scanner, body, breasts, surgery, nodes, organs, gland)
    gland_hu = float(np.mean([b.gland_hu for b in breasts.values()]))
    table = tissue_hu(rng[9], gland_hu, organs.liver_hu)
    out = assemble(anatomy, scanner, body.skin, table, rng[10], rng[11])
    masks, ctv = target_masks(out.regions, record)
    params = _jsonable(
        {
            "body": body,
            "breasts": breasts,
            "surgery": surgery,
            "nodes": nodes,
            "organs": organs,
            "body_centre_lps": [scanner.fov_centre[0] + body.cx, scanner.fov_centre[1] + body.cy],
        }
    )
    return IndependentCase(
        case_id=case_id or f"{site}{seed:07d}",
        seed=seed,
        site=site,
        grid=grid,
        hu=out.hu.astype(np.float32),
        masks=masks,
        ctv=ctv,
        clinical=record,
        labels=out.labels,
        body=out.body,
        candidates=out.regions,
        scanner=scanner,
        params=params,
    )


def volumes_cc(case: IndependentCase) -> dict[str, float]:
    """Volume (cm^3) of every CTV sub-volume (``breast_L`` ...) and of ``ctv``."""
    vol = {
        f"{n}_{s}": round(float(m.sum()) * case.grid.voxel_cc, 2)
        for (n, s), m in case.masks.items()
    }
    vol["ctv"] = round(float(case.ctv.sum()) * case.grid.voxel_cc, 2)
    return vol


def write_case(case: IndependentCase, folder: Path) -> dict[str, Any]:
    """Write ``ct/CT_*.dcm``, ``truth.npz`` (one boolean (k, j, i) array per sub-volume, e.g.
    ``breast_L``, plus ``ctv``, on exactly the CT grid), ``clinical.json`` and ``case.json``.
    Returns a summary (ids, paths, the note, volumes in cc)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hu_int = np.rint(case.hu).astype(np.int32)
    uids = write_series(
        folder / "ct",
        hu_int,
        case.grid,
        case_id=case.case_id,
        seed=case.seed,
        signed_pixels=case.scanner.signed_pixels,
        age=case.clinical.get("age"),
        description=f"INDEPENDENT PHANTOM site {case.site}",
    )
    arrays = {f"{n}_{s}": m for (n, s), m in case.masks.items()}
    arrays["ctv"] = case.ctv
    np.savez_compressed(folder / "truth.npz", allow_pickle=False, **arrays)
    (folder / "clinical.json").write_text(json.dumps(case.clinical, indent=2) + "\n")
    summary: dict[str, Any] = {
        "case_id": case.case_id,
        "seed": case.seed,
        "site": case.site,
        "folder": str(folder),
        "ct_dir": str(folder / "ct"),
        "n_slices": case.grid.shape[0],
        "matrix": case.grid.shape[1],
        "note": render_note(case.clinical),
        "clinical": case.clinical,
        "series_instance_uid": uids["series"],
        "volumes_cc": volumes_cc(case),
    }
    meta = dict(summary, grid=case.grid.to_json(), scanner=_jsonable(case.scanner))
    meta["anatomy"] = case.params
    (folder / "case.json").write_text(json.dumps(meta, indent=1) + "\n")
    return summary


def write_cohort(out: Path, n: int, site: str, seed: int, matrix: int) -> list[dict[str, Any]]:
    """Write ``n`` cases (case i uses seed ``seed * 1000 + i``) under ``out/<case_id>/``, plus
    ``out/cohort.json`` listing their summaries."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for i in range(n):
        case = generate_case(seed * 1000 + i, site, matrix)
        summaries.append(write_case(case, out / case.case_id))
    (out / "cohort.json").write_text(json.dumps(summaries, indent=1) + "\n")
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m independent.generator OUT --cases N --site A|B --seed S --matrix 512``."""
    parser = argparse.ArgumentParser(
        prog="independent.generator", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--cases", type=int, default=1)
    parser.add_argument("--site", choices=["A", "B"], default="A")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--matrix", type=int, default=512)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    for summary in write_cohort(args.out, args.cases, args.site, args.seed, args.matrix):
        print(summary["case_id"], summary["note"], json.dumps(summary["volumes_cc"]))
    print(f"{args.cases} case(s) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
