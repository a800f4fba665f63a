"""CT preprocessing: resampling to the network grid, HU windowing, and the way back.

Coordinate conventions are those of :mod:`model.imaging.geometry`: patient coordinates are DICOM LPS
in mm, arrays are indexed ``(k, j, i)`` = (slice, row, column) and spacings are
``(dk, dj, di)`` mm. The paper resamples CT to 1 x 1 x 3 mm, which here is
``target_spacing=(3.0, 1.0, 1.0)``.

Every resampling step is defined by a pair of grids (:class:`ResamplingPlan`). A value
written at output voxel ``o`` is read from the input at the fractional index
``input.lps_to_index(output.index_to_lps(o))``: the voxel *centres* of both grids are matched
in patient space, so a structure at a given LPS position stays there through
:func:`resample_image` and :func:`to_source_grid`, whatever the direction cosines are.
Arrays are never flipped by hand.

When the two grids are axis-aligned with one another (always the case for plans made by
:func:`plan_resampling`) the index mapping is a per-axis affine map and interpolation is
separable: two gathers and a ``lerp`` per axis, and nothing at all along an axis whose spacing
and origin agree (usually the 3 mm slice axis). Other plans fall back to
:func:`torch.nn.functional.grid_sample`. Input positions outside the input grid take the value
of the nearest edge voxel (border replication).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from model.errors import ConfigurationError
from model.imaging.geometry import Grid, Volume

Mode = Literal["linear", "nearest"]
Box = tuple[slice, ...]
Orientation = Literal["source", "lps"]

_SNAP_TOL = 1e-6  # fractional-index tolerance (voxels) for "exactly on a voxel centre"
_SLAB = 16  # output slices per grid_sample call in the general (non axis-aligned) path
_SLAB_VOXELS = 1 << 20  # in-plane separable passes work on slabs of about this many voxels
# dtypes torch cannot gather, and bit-identical stand-ins that it can
_GATHER_VIEW = {np.dtype(f"uint{n}"): np.dtype(f"int{n}") for n in (16, 32, 64)}
_TORCH_REAL = {
    np.dtype(t)
    for t in (np.float16, np.float32, np.float64, np.int8, np.uint8, np.int16, np.int32, np.int64)
}


@dataclass(frozen=True)
class PreprocessConfig:
    """How a CT is prepared for the network.

    Attributes
    ----------
    target_spacing
        ``(dk, dj, di)`` in mm of the network grid; the paper uses 1 x 1 x 3 mm.
    hu_window
        ``(low, high)`` HU; values are clipped to it and scaled to ``[0, 1]``.
    orientation
        ``"lps"`` (default, and always at inference): the network grid has identity
        direction, so ``i``, ``j``, ``k`` grow toward patient left, posterior and head for
        every patient position: the network sees every patient in one canonical orientation.
        ``"source"``: the network grid keeps the CT's direction cosines (arrays keep the
        scanner's axis order, e.g. FFS stays FFS, and the network sees it mirrored); kept for
        reading checkpoints trained that way on head-first supine data, where both agree.
    """

    target_spacing: tuple[float, float, float] = (3.0, 1.0, 1.0)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    orientation: Orientation = "lps"

    def __post_init__(self) -> None:
        _check_spacing(self.target_spacing)
        _check_window(self.hu_window)
        _check_orientation(self.orientation)


@dataclass(frozen=True)
class ResamplingPlan:
    """A pair of grids: the CT grid (``source``) and the network grid (``target``)."""

    source: Grid
    target: Grid


@dataclass(frozen=True)
class _AxisMap:
    """Per-axis lookup: output index ``o`` reads input ``lerp(x[i0[o]], x[i1[o]], w[o])``."""

    axis: int  # 0, 1, 2 = k, j, i
    i0: torch.Tensor
    i1: torch.Tensor
    w: torch.Tensor | None  # None: every output lies on an input voxel centre (pure gather)
    identity: bool


def _check_spacing(spacing: Sequence[float]) -> None:
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ConfigurationError(f"spacing must be three positive mm values, got {spacing}")


def _check_orientation(orientation: str) -> None:
    if orientation not in ("source", "lps"):
        raise ConfigurationError(f"orientation must be 'source' or 'lps', got {orientation!r}")


def _check_window(window: Sequence[float]) -> None:
    if len(window) != 2 or not all(math.isfinite(v) for v in window) or window[1] <= window[0]:
        raise ConfigurationError(f"HU window must be (low, high) with low < high, got {window}")


# --- planning ---------------------------------------------------------------------------------
def plan_resampling(
    source: Grid,
    target_spacing: Sequence[float],
    *,
    orientation: Orientation = "source",
) -> ResamplingPlan:
    """Plan the resampling of ``source`` to a grid with ``target_spacing``.

    The target grid is the smallest grid of the requested spacing and direction whose voxel
    centres span all voxel centres of the source. With ``orientation="source"`` (default)
    it has the source's direction cosines and the *same origin* (LPS centre of voxel
    ``(0, 0, 0)``), and along each axis ``a``::

        n_target[a] = ceil((n_source[a] - 1) * source_spacing[a] / target_spacing[a] - 1e-6) + 1

    so the last target centre lies at or (by less than one target voxel) beyond the last
    source centre. Equal spacing along an axis therefore gives the same size along it, and a
    plan with ``target_spacing == source.spacing`` is the identity. With
    ``orientation="lps"`` the direction is the identity and the origin is the corner of the
    source centres' LPS bounding box with the smallest coordinates; sizes follow the same
    rule along each LPS axis.

    Parameters
    ----------
    source
        The CT grid.
    target_spacing
        ``(dk, dj, di)`` in mm of the target grid (along the target's own k, j, i axes).
    orientation
        ``"source"`` or ``"lps"``, see :class:`PreprocessConfig`.

    Returns
    -------
    ResamplingPlan
        ``source`` and the new ``target`` grid.

    Raises
    ------
    ConfigurationError
        If ``target_spacing`` is not three positive numbers or ``orientation`` is unknown.
    """
    _check_spacing(target_spacing)
    _check_orientation(orientation)
    direction = source.direction_matrix if orientation == "source" else np.eye(3)
    corners = np.array(
        [
            [k, j, i]
            for k in (0, source.shape[0] - 1)
            for j in (0, source.shape[1] - 1)
            for i in (0, source.shape[2] - 1)
        ],
        dtype=np.float64,
    )
    proj = source.index_to_lps(corners) @ direction  # (8, 3) coordinates along target i, j, k
    low, high = proj.min(axis=0), proj.max(axis=0)
    spacing_ijk = np.asarray(target_spacing, dtype=np.float64)[::-1]
    counts = np.ceil((high - low) / spacing_ijk - _SNAP_TOL).astype(np.int64) + 1
    origin = (
        np.asarray(source.origin, dtype=np.float64) if orientation == "source" else direction @ low
    )
    target = Grid(
        shape=(int(counts[2]), int(counts[1]), int(counts[0])),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        spacing=(float(target_spacing[0]), float(target_spacing[1]), float(target_spacing[2])),
        direction=(_row(direction[0]), _row(direction[1]), _row(direction[2])),
    )
    return ResamplingPlan(source=source, target=target)


def _row(values: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


# --- index mapping ----------------------------------------------------------------------------
def _index_affine(out_grid: Grid, in_grid: Grid) -> tuple[npt.NDArray[np.float64], ...]:
    """``(A, b)`` with ``in_index = A @ out_index + b`` (both ``(k, j, i)``), via LPS."""
    points = np.vstack([np.zeros(3), np.eye(3)])
    mapped = in_grid.lps_to_index(out_grid.index_to_lps(points))
    b = mapped[0]
    return (mapped[1:] - b).T, b


def _nearest_index(coords: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Nearest voxel; exact ties (within the snap tolerance) go to the even index.

    Round-half-to-even (as ``grid_sample`` does) keeps ties from shifting a mask by a
    systematic quarter voxel, e.g. 0.8 mm to 1 mm where every fourth row is a tie.
    """
    low = np.floor(coords)
    frac = coords - low
    tie = np.abs(frac - 0.5) <= _SNAP_TOL
    rounded = np.where(tie, low + (low % 2), np.floor(coords + 0.5))
    return rounded.astype(np.int64)


def _axis_map(
    axis: int, scale: float, offset: float, n_out: int, n_in: int, mode: Mode
) -> _AxisMap:
    """Lookup for ``in = scale * out + offset`` along one axis, clamped to the input."""
    coords = np.clip(scale * np.arange(n_out, dtype=np.float64) + offset, 0.0, n_in - 1.0)
    on_centres = np.all(np.abs(coords - np.floor(coords + 0.5)) <= _SNAP_TOL)
    if mode == "nearest" or on_centres:
        idx = _nearest_index(coords)
        identity = n_out == n_in and bool(np.array_equal(idx, np.arange(n_in)))
        t = torch.from_numpy(idx)
        return _AxisMap(axis, t, t, None, identity)
    i0 = np.clip(np.floor(coords), 0, max(n_in - 2, 0)).astype(np.int64)
    w = (coords - i0).astype(np.float32)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return _AxisMap(axis, torch.from_numpy(i0), torch.from_numpy(i1), torch.from_numpy(w), False)


def _separable_maps(out_grid: Grid, in_grid: Grid, mode: Mode) -> list[_AxisMap] | None:
    """Per-axis lookups when the grids are axis-aligned, else ``None``."""
    a, b = _index_affine(out_grid, in_grid)
    diag = np.diag(a)
    if np.any(np.abs(a - np.diag(diag)) > _SNAP_TOL) or np.any(np.abs(diag) < _SNAP_TOL):
        return None
    maps = [
        _axis_map(ax, float(diag[ax]), float(b[ax]), out_grid.shape[ax], in_grid.shape[ax], mode)
        for ax in range(3)
    ]
    # slice axis first (whole volume), then in-plane axes, the more shrinking one first
    maps.sort(key=lambda m: (m.axis > 0, len(m.i0) / in_grid.shape[m.axis]))
    return [m for m in maps if not m.identity]


# --- interpolation kernels --------------------------------------------------------------------
def _take(x: torch.Tensor, dim: int, idx: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``x`` indexed by ``idx`` along ``dim``, written into ``out``."""
    if dim == x.dim() - 1:
        return torch.gather(x, dim, idx.expand(out.shape), out=out)
    return torch.index_select(x, dim, idx, out=out)


def _empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised tensor backed by numpy memory.

    numpy asks the kernel for huge pages on large arrays, which makes first writes to a
    fresh 100-300 MB result several times cheaper than with ``torch.empty``.
    """
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    return torch.from_numpy(np.empty(tuple(shape), dtype=np_dtype))


class _Scratch:
    """Named, reusable flat buffers handed out as views of the requested shape."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.buffers: dict[str, torch.Tensor] = {}

    def view(self, name: str, shape: Sequence[int]) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel:
            buf = self.buffers[name] = _empty([numel], self.dtype)
        return buf[:numel].view(list(shape))


def _axis_pass(
    x: torch.Tensor, m: _AxisMap, dim: int, out: torch.Tensor, scratch: _Scratch
) -> torch.Tensor:
    """One separable pass along ``dim`` of ``x``, written into ``out``."""
    if m.w is None:
        return _take(x, dim, m.i0, out)
    low = _take(x, dim, m.i0, scratch.view("low", out.shape))
    high = _take(x, dim, m.i1, scratch.view("high", out.shape))
    shape = [1] * x.dim()
    shape[dim] = len(m.i0)
    return torch.lerp(low, high, m.w.view(shape), out=out)


def _out_shape(shape: Sequence[int], dim: int, m: _AxisMap) -> list[int]:
    new = list(shape)
    new[dim] = len(m.i0)
    return new


def _apply_maps(
    x: torch.Tensor, maps: list[_AxisMap], dtype: torch.dtype, into: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply per-axis lookups to ``x`` (``(..., k, j, i)``), giving a ``dtype`` tensor.

    A slice-axis pass runs on the whole volume; in-plane passes run on slabs of a few
    slices so that their intermediates stay in cache and only the result is newly allocated,
    or written into ``into`` (a 3-d view of the result's shape, e.g. a box of a larger array).
    """
    lead = x.dim() - 3
    scratch = _Scratch(dtype)
    for m in (m for m in maps if m.axis == 0):
        x = x.to(dtype)
        x = _axis_pass(x, m, lead, _empty(_out_shape(x.shape, lead, m), dtype), scratch)
    plane = [m for m in maps if m.axis > 0]
    if not plane:
        return x if into is None else into.copy_(x)
    flat = x.reshape(-1, x.shape[-2], x.shape[-1])
    out_shape = list(flat.shape)
    for m in plane:
        out_shape = _out_shape(out_shape, m.axis, m)
    out = _empty(out_shape, dtype) if into is None else into
    step = max(1, _SLAB_VOXELS // (flat.shape[1] * flat.shape[2]))
    for s in range(0, flat.shape[0], step):
        y = flat[s : s + step]
        if y.dtype != dtype:
            y = scratch.view("in", y.shape).copy_(y)
        for n, m in enumerate(plane):
            shape = _out_shape(y.shape, m.axis, m)
            dest = out[s : s + step] if n == len(plane) - 1 else scratch.view(f"mid{n}", shape)
            y = _axis_pass(y, m, m.axis, dest, scratch)
    return out if into is not None else out.view([*x.shape[:-2], *out_shape[-2:]])


def _grid_sample(x: torch.Tensor, out_grid: Grid, in_grid: Grid, mode: Mode) -> torch.Tensor:
    """General affine path: ``x`` is ``(C, k, j, i)`` float32 on ``in_grid``."""
    a, b = _index_affine(out_grid, in_grid)
    size = np.asarray(in_grid.shape, dtype=np.float64)
    norm = 2.0 / np.maximum(size - 1.0, 1.0)  # align_corners=True: -1/+1 = first/last centre
    a_n = torch.from_numpy((a * norm[:, None])[::-1].copy()).float()  # rows x, y, z = i, j, k
    b_n = torch.from_numpy((b * norm - 1.0)[::-1].copy()).float()
    nk, nj, ni = out_grid.shape
    rows, cols = torch.arange(nj, dtype=torch.float32), torch.arange(ni, dtype=torch.float32)
    slabs = []
    for k0 in range(0, nk, _SLAB):
        kk = torch.arange(k0, min(k0 + _SLAB, nk), dtype=torch.float32)
        idx = torch.stack(torch.meshgrid(kk, rows, cols, indexing="ij"), dim=-1)
        grid = idx @ a_n.T + b_n
        slabs.append(
            torch.nn.functional.grid_sample(
                x[None],
                grid[None],
                mode="bilinear" if mode == "linear" else "nearest",
                padding_mode="border",
                align_corners=True,
            )[0]
        )
    return torch.cat(slabs, dim=1)


def _to_torch(array: npt.NDArray[np.generic]) -> torch.Tensor:
    """Tensor sharing memory with ``array`` unless it has negative strides."""
    if any(s < 0 for s in array.strides):
        array = np.ascontiguousarray(array)
    return torch.from_numpy(array)


def _resample(
    array: npt.NDArray[np.generic],
    out_grid: Grid,
    in_grid: Grid,
    mode: Mode,
    into: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]:
    """Resample ``array`` (``(k, j, i)`` or ``(C, k, j, i)`` on ``in_grid``) to ``out_grid``.

    ``into``: a float32 ``(k, j, i)`` array (or view) of ``out_grid``'s shape that receives a
    linear 3-d result and is returned (no result array is allocated on the separable path).
    """
    if mode not in ("linear", "nearest"):
        raise ConfigurationError(f"interpolation mode must be 'linear' or 'nearest', got {mode!r}")
    if array.ndim not in (3, 4) or tuple(array.shape[-3:]) != tuple(in_grid.shape):
        raise ConfigurationError(
            f"array shape {array.shape} does not match grid shape {in_grid.shape}"
        )
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    maps = _separable_maps(out_grid, in_grid, mode)
    if into is not None and (mode != "linear" or array.ndim != 3 or into.dtype != np.float32):
        raise ConfigurationError("into= takes a float32 3-d linear resampling only")
    if into is not None and (maps is None or not maps):
        into[...] = _resample(array, out_grid, in_grid, mode)
        return into
    if maps is not None and not maps:
        return np.array(array, dtype=np.float32 if mode == "linear" else array.dtype, copy=True)
    if mode == "nearest":
        src = array.view(_GATHER_VIEW.get(array.dtype, array.dtype))
    elif array.dtype in _TORCH_REAL:
        src = array  # converted to float32 slab by slab
    else:
        src = np.asarray(array, dtype=np.float32)
    x = _to_torch(src)
    dtype = torch.float32 if mode == "linear" else x.dtype
    if maps is not None:
        target = None if into is None else torch.from_numpy(into)
        out: npt.NDArray[Any] = _apply_maps(x, maps, dtype, target).numpy()
        if into is not None:
            return into
    else:
        lead = array.ndim - 3
        sampled = _grid_sample(x.float() if lead else x.float()[None], out_grid, in_grid, mode)
        out = (sampled if lead else sampled[0]).numpy().astype(src.dtype, copy=False)
    return out.view(array.dtype) if mode == "nearest" else out


# --- public resampling API ---------------------------------------------------------------------
def resample_image(array: npt.NDArray[np.generic], plan: ResamplingPlan) -> npt.NDArray[np.float32]:
    """Trilinearly resample an image from the plan's source grid to its target grid.

    Parameters
    ----------
    array
        ``(k, j, i)`` or ``(C, k, j, i)`` values on ``plan.source`` (any real dtype, e.g. HU).

    Returns
    -------
    numpy.ndarray
        float32, ``(k, j, i)`` or ``(C, k, j, i)`` on ``plan.target``; never a view of
        ``array``.

    Raises
    ------
    ConfigurationError
        If the array's spatial shape is not ``plan.source.shape``.
    """
    return np.asarray(_resample(array, plan.target, plan.source, "linear"), dtype=np.float32)


def resample_labels(mask: npt.NDArray[np.generic], plan: ResamplingPlan) -> npt.NDArray[Any]:
    """Nearest-neighbour resampling of a label or boolean mask, source grid to target grid.

    Parameters
    ----------
    mask
        ``(k, j, i)`` or ``(C, k, j, i)`` labels on ``plan.source``; bool or integer dtype.

    Returns
    -------
    numpy.ndarray
        Same dtype, on ``plan.target``; contains only values present in ``mask``.

    Raises
    ------
    ConfigurationError
        If the mask's spatial shape is not ``plan.source.shape``.
    """
    return _resample(mask, plan.target, plan.source, "nearest")


def to_source_grid(
    target_array: npt.NDArray[np.generic], plan: ResamplingPlan, mode: Mode = "linear"
) -> npt.NDArray[Any]:
    """Bring a network-grid array (e.g. class probabilities) back onto the CT grid.

    Each CT voxel centre is mapped to LPS and then to a fractional index of the target grid
    (:meth:`Grid.lps_to_index`), where the array is interpolated; so predictions land on the
    input CT at their patient position.

    Parameters
    ----------
    target_array
        ``(C, k, j, i)`` (e.g. softmax probabilities) or ``(k, j, i)`` on ``plan.target``.
    plan
        The plan the network input was made with.
    mode
        ``"linear"`` (float32 result) or ``"nearest"`` (dtype kept; for labels).

    Returns
    -------
    numpy.ndarray
        ``(C, k, j, i)`` or ``(k, j, i)`` on ``plan.source``.

    Raises
    ------
    ConfigurationError
        If the spatial shape is not ``plan.target.shape`` or ``mode`` is unknown.
    """
    return _resample(target_array, plan.source, plan.target, mode)


# --- intensities --------------------------------------------------------------------------------
def _normalize_inplace(
    out: npt.NDArray[np.float32], window: tuple[float, float]
) -> npt.NDArray[np.float32]:
    low, high = window
    np.clip(out, low, high, out=out)
    out -= np.float32(low)
    out *= np.float32(1.0 / (high - low))
    np.clip(out, 0.0, 1.0, out=out)  # guard against rounding just outside [0, 1]
    return out


def preprocess_ct(
    volume: Volume, config: PreprocessConfig | None = None
) -> tuple[npt.NDArray[np.float32], ResamplingPlan]:
    """Resample a CT to the network grid, then window and scale its HU to ``[0, 1]``.

    Parameters
    ----------
    volume
        The CT: ``volume.array[k, j, i]`` in HU on ``volume.grid``.
    config
        Spacing, window and orientation; defaults to :class:`PreprocessConfig()`.

    Returns
    -------
    tuple of (numpy.ndarray, ResamplingPlan)
        float32 ``(k, j, i)`` on ``plan.target`` with values in ``[0, 1]``, and the plan that
        :func:`to_source_grid` needs to bring predictions back.
    """
    cfg = config if config is not None else PreprocessConfig()
    plan = plan_resampling(volume.grid, cfg.target_spacing, orientation=cfg.orientation)
    image = resample_image(volume.array, plan)
    return _normalize_inplace(image, cfg.hu_window), plan
