"""PNG previews of a case: one axial slice through the breasts and one coronal slice.

Axial images are shown radiologically, seen from the feet: column i (+x, the patient's left)
grows to the right, row j (+y, posterior) downward. Coronal images put +z (the head) up.
Usage: ``python -m independent.preview OUT_DIR --seed 3 --site A --matrix 256``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .generator import IndependentCase, generate_case, render_note


def save_previews(case: IndependentCase, out: Path) -> list[Path]:
    """Write ``<id>_axial.png`` and ``<id>_coronal.png`` (window -400..400 HU, CTV in red)."""
    out.mkdir(parents=True, exist_ok=True)
    zs = case.grid.zs()
    zc = float(np.mean([b["zc"] for b in case.params["breasts"].values()]))
    k = int(np.argmin(np.abs(zs - zc)))
    dk, dj, di = case.grid.spacing
    paths = []
    cy = case.params["body_centre_lps"][1]
    j = round((cy - 0.05 * case.params["body"]["b"] - case.grid.origin[1]) / dj)
    views = {
        "axial": (case.hu[k], case.ctv[k], dj / di, f"k={k} z={zs[k]:.1f}"),
        "coronal": (case.hu[::-1, j, :], case.ctv[::-1, j, :], dk / di, f"j={j}"),
    }
    for name, (img, ctv, aspect, where) in views.items():
        fig, ax = plt.subplots(figsize=(10, 10 * img.shape[0] * aspect / img.shape[1] + 0.6))
        ax.imshow(img, cmap="gray", vmin=-400, vmax=400, aspect=aspect, interpolation="nearest")
        if ctv.any():
            ax.contour(ctv.astype(float), levels=[0.5], colors="r", linewidths=0.8)
        ax.set_xlim(-0.5, img.shape[1] - 0.5)
        ax.set_ylim(img.shape[0] - 0.5, -0.5)
        ax.set_title(f"{case.case_id} {name} {where}\n{render_note(case.clinical)}", fontsize=8)
        ax.axis("off")
        path = out / f"{case.case_id}_{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Generate one case and write its previews."""
    parser = argparse.ArgumentParser(prog="independent.preview")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--site", default="A")
    parser.add_argument("--matrix", type=int, default=256)
    args = parser.parse_args(argv)
    for path in save_previews(generate_case(args.seed, args.site, args.matrix), args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
