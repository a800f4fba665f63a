"""Grid and geometric helpers.

The CT grid is axial, head first supine, ``ImageOrientationPatient = [1,0,0,0,1,0]``: column
index i grows toward +x (patient left), row index j toward +y (posterior), slice index k toward
+z (the head). Arrays are indexed (k, j, i). ``Grid.origin`` is the LPS position (mm) of the
centre of voxel (0, 0, 0); ``Grid.spacing`` is (dk, dj, di) in mm.

Polar helpers use the body centre as pole and the angle ``theta = atan2(x, -y)``: 0 points
anterior, +pi/2 to the patient's left, -pi/2 to the right, +-pi posterior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Angular samples of the per-slice radial tables (outline, fat, rib cage, arc length).
THETA = np.linspace(-np.pi, np.pi, 1441)


@dataclass(frozen=True)
class Grid:
    """Voxel grid of the CT, in DICOM LPS mm; arrays are (k, j, i) = (slice, row, column)."""

    origin: tuple[float, float, float]  # LPS (x, y, z) of voxel (0, 0, 0)
    spacing: tuple[float, float, float]  # (dk, dj, di) mm
    shape: tuple[int, int, int]  # (nk, nj, ni)

    def xs(self) -> FloatArray:
        """LPS x (mm) of each column i."""
        return self.origin[0] + self.spacing[2] * np.arange(self.shape[2], dtype=np.float64)

    def ys(self) -> FloatArray:
        """LPS y (mm) of each row j."""
        return self.origin[1] + self.spacing[1] * np.arange(self.shape[1], dtype=np.float64)

    def zs(self) -> FloatArray:
        """LPS z (mm) of each slice k (increasing: k grows toward the head)."""
        return self.origin[2] + self.spacing[0] * np.arange(self.shape[0], dtype=np.float64)

    @property
    def voxel_cc(self) -> float:
        """Volume of one voxel in cm^3."""
        dk, dj, di = self.spacing
        return dk * dj * di / 1000.0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON description."""
        return {
            "origin_lps_mm": list(self.origin),
            "spacing_kji_mm": list(self.spacing),
            "shape_kji": list(self.shape),
            "image_orientation_patient": [1, 0, 0, 0, 1, 0],
            "k_direction": "+z (toward the head)",
        }


def smoothstep(x: Any, e0: float, e1: float) -> Any:
    """0 below ``e0``, 1 above ``e1`` (or the reverse when ``e1 < e0``), C1-smooth between."""
    t = np.clip((np.asarray(x, dtype=np.float64) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def outline_radius(
    theta: FloatArray, a: float, b_ant: float, b_post: float, p_ant: float, p_post: float
) -> FloatArray:
    """Radius of two half superellipses joined at +-pi/2 (anterior: b_ant, p_ant)."""
    s = np.abs(np.sin(theta))
    c = np.cos(theta)
    anterior = c >= 0
    b = np.where(anterior, b_ant, b_post)
    p = np.where(anterior, p_ant, p_post)
    val = (s / a) ** p + (np.abs(c) / b) ** p
    return np.asarray(val ** (-1.0 / p), dtype=np.float64)


def arc_length(theta: FloatArray, radius: FloatArray) -> FloatArray:
    """Arc length along the closed curve ``r(theta)``, signed, zero at theta = 0 (anterior)."""
    dr = np.gradient(radius, theta)
    speed = np.sqrt(radius**2 + dr**2)
    steps = 0.5 * (speed[1:] + speed[:-1]) * np.diff(theta)
    s = np.concatenate([[0.0], np.cumsum(steps)])
    return np.asarray(s - np.interp(0.0, theta, s), dtype=np.float64)


def ellipse_value(
    dx: FloatArray, dy: FloatArray, ax: float, ay: float, angle: float = 0.0
) -> FloatArray:
    """``(u/ax)^2 + (v/ay)^2`` for the in-plane offsets rotated by ``angle`` (rad)."""
    c, s = np.cos(angle), np.sin(angle)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    return np.asarray((u / ax) ** 2 + (v / ay) ** 2, dtype=np.float64)


def segment_distance(
    x: FloatArray, y: FloatArray, p0: tuple[float, float], p1: tuple[float, float]
) -> FloatArray:
    """In-plane distance (mm) from points to the segment p0-p1."""
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    norm = vx * vx + vy * vy
    t = np.clip(((x - p0[0]) * vx + (y - p0[1]) * vy) / max(norm, 1e-9), 0.0, 1.0)
    return np.asarray(np.hypot(x - p0[0] - t * vx, y - p0[1] - t * vy), dtype=np.float64)


def rotation_columns(angle: float, tilt: float) -> FloatArray:
    """Rows are the unit axes (long, short, third) of an ellipsoid: long axis at ``angle``
    from +x toward anterior (-y) in the axial plane, tilted ``tilt`` toward -z (caudal)."""
    long_axis = np.array(
        [np.cos(angle) * np.cos(tilt), -np.sin(angle) * np.cos(tilt), -np.sin(tilt)]
    )
    short = np.array([np.sin(angle), np.cos(angle), 0.0])
    third = np.cross(long_axis, short)
    return np.stack([long_axis, short, third / np.linalg.norm(third)])
