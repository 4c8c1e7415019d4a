"""Compose a phantom: soft tissue on a coarse grid, bones painted at full resolution, then CT artefacts.

Ground truth: each vertebra's centroid is the centre of mass of its own solid (the full, uncropped
vertebra, as VerSe annotates it), computed on a fixed 1 mm world grid that does not depend on the image
grid, so the same seed gives the same centroids at any spacing. A vertebra is part of the ground truth
when its centroid lies inside the field of view (between the first and last voxel centres).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from dicom_io.volume import Volume
from inference.phantoms.anatomy import Skeleton, SpineLayout, Structure, build_skeleton, level_positions
from inference.phantoms.artefacts import add_noise, add_streaks, blur_in_plane
from inference.phantoms.shapes import Grid, bounds_of, union_sdf
from inference.phantoms.spec import STREAM_DETAIL, STREAM_NOISE, PhantomSpec, stream
from inference.phantoms.tissue import build_tissues, paint_tissue

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Soft tissue is composed on a grid about this coarse (mm) and upsampled linearly.
SOFT_TISSUE_MM = 2.5
#: Spacing (mm) of the fixed world grid on which ground-truth centroids are computed.
CENTROID_GRID_MM = 1.5
#: Lowest and highest stored HU (12-bit CT range with the usual -1024 intercept, extended for metal).
HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass
class Phantom:
    """A synthetic CT volume with its exact ground truth."""

    volume: Volume
    #: uint8 VerSe labels on the volume grid (1-7 C, 8-19 T, 20-25 L, 26 sacrum, 28 T13; 0 elsewhere).
    labels: npt.NDArray[np.uint8]
    #: label -> centroid (LPS mm) of every vertebra whose centroid lies in the field of view.
    centroids: dict[int, tuple[float, float, float]]
    spec: PhantomSpec
    #: Seconds per generation stage.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def names(self) -> dict[int, str]:
        from inference.result import vertebra_name

        return {label: vertebra_name(label) for label in self.centroids}


def grid_of(spec: PhantomSpec) -> Grid:
    return Grid(spec.origin, spec.spacing, spec.shape)


def generate_phantom(
    spec: PhantomSpec | None = None,
    *,
    seed: int | None = None,
    fov: str = "random",
    spacing: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
    **overrides: Any,
) -> Phantom:
    """Generate a phantom from a spec, or from ``seed`` (+ ``fov``, ``spacing``, ``shape``, overrides)."""
    if spec is None:
        if seed is None:
            raise ValueError("generate_phantom needs a spec or a seed")
        spec = PhantomSpec.random(seed, fov=fov, spacing=spacing, shape=shape, **overrides)
    elif seed is not None or spacing is not None or shape is not None or overrides:
        raise ValueError("give either a spec or seed/fov/spacing/shape, not both")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    layout = level_positions(spec)
    skeleton = build_skeleton(spec, layout)
    timings["anatomy"] = time.perf_counter() - t0

    grid = grid_of(spec)
    t = time.perf_counter()
    rng_detail = stream(spec.seed, STREAM_DETAIL)
    volume = compose_soft_tissue(spec, skeleton, grid, rng_detail)
    timings["soft_tissue"] = time.perf_counter() - t

    t = time.perf_counter()
    labels = np.zeros(grid.shape, dtype=np.uint8)
    paint_bones(spec, skeleton, grid, volume, labels)
    timings["bones"] = time.perf_counter() - t

    t = time.perf_counter()
    centroids = vertebra_centroids(skeleton, grid)
    timings["centroids"] = time.perf_counter() - t

    t = time.perf_counter()
    rng_noise = stream(spec.seed, STREAM_NOISE)
    add_streaks(volume, grid, spec, skeleton, rng_noise)
    blur_in_plane(volume, grid, spec.blur_mm)
    add_noise(volume, grid, spec, skeleton, rng_noise)
    np.clip(volume, HU_MIN, HU_MAX, out=volume)
    timings["artefacts"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    logger.debug("phantom seed=%d fov=%s shape=%s timings=%s", spec.seed, spec.fov, spec.shape, timings)
    return Phantom(Volume(volume, grid.affine()), labels, centroids, spec, timings)


def compose_soft_tissue(spec: PhantomSpec, skeleton: Skeleton, grid: Grid, rng: np.random.Generator) -> F32:
    """Air, table, body, organs on a coarse grid aligned with ``grid``, linearly upsampled to it."""
    # At least 2x coarser than the image unless the image itself is coarse (>= 3.5 mm).
    factors = tuple(
        max(2 if s < 3.5 else 1, int(math.floor(SOFT_TISSUE_MM / s + 1e-6))) for s in grid.spacing
    )  # (fi, fj, fk)
    nk, nj, ni = grid.shape
    coarse_shape = (
        (nk - 1) // factors[2] + 2 if factors[2] > 1 else nk,
        (nj - 1) // factors[1] + 2 if factors[1] > 1 else nj,
        (ni - 1) // factors[0] + 2 if factors[0] > 1 else ni,
    )
    coarse = Grid(
        grid.origin,
        tuple(s * f for s, f in zip(grid.spacing, factors, strict=True)),  # type: ignore[arg-type]
        coarse_shape,
    )
    vol = np.full(coarse.shape, -1000.0, dtype=np.float32)
    edge = max(coarse.spacing) * 1.0
    for tissue in build_tissues(spec, skeleton, coarse, rng):
        paint_tissue(vol, coarse, tissue, edge)
    return _upsample(vol, (factors[2], factors[1], factors[0]), grid.shape)


def _upsample(vol: F32, factors: tuple[int, int, int], shape: tuple[int, int, int]) -> F32:
    """Linear interpolation by integer factors per axis (coarse sample c sits on fine index c * f)."""
    out = vol
    for axis, (f, n) in enumerate(zip(factors, shape, strict=True)):
        if f == 1:
            continue
        idx = np.arange(n)
        lo = idx // f
        w = ((idx % f) / f).astype(np.float32)
        a = np.take(out, lo, axis=axis)
        b = np.take(out, lo + 1, axis=axis)
        shape_w = [1, 1, 1]
        shape_w[axis] = n
        wv = w.reshape(shape_w)
        b -= a
        b *= wv
        a += b
        out = a
    return np.ascontiguousarray(out, dtype=np.float32)


def _slice_profile(spec: PhantomSpec, grid: Grid) -> int:
    """Sub-slices per slice so thick slices average the anatomy over their thickness (partial volume)."""
    in_plane = max(min(grid.spacing[0], grid.spacing[1]), 0.4)
    return int(max(1, math.ceil(spec.effective_slice_thickness / (1.5 * in_plane) - 1e-6)))


def paint_structure(
    vol: F32,
    labels: npt.NDArray[np.uint8] | None,
    grid: Grid,
    st: Structure,
    sub: int,
    thickness_ratio: float,
) -> None:
    """Composite one bone structure into ``vol`` (cortex + marrow, anti-aliased, slice-profile averaged)."""
    lo, hi = bounds_of(st.prims)
    w = max(grid.spacing[0], grid.spacing[1], grid.spacing[2] / sub) * 0.9
    margin = w + st.cortex_mm + st.blend + 1.0
    box = grid.index_box(lo - margin, hi + margin)
    if box is None:
        return
    fine = grid.subsampled_z(sub)
    # Sub-slices covering the slab's slice profile (``thickness_ratio`` >= 1 widens it beyond the step).
    ks = box[0]
    fbox = (slice(ks.start * sub, ks.stop * sub), box[1], box[2])
    d = union_sdf(st.prims, fine, fbox, margin, st.blend)
    inv_w = np.float32(1.0 / w)
    occ = np.clip(0.5 - d * inv_w, 0.0, 1.0)
    if st.cortex_mm > 0:
        inner = np.clip(0.5 - (d + np.float32(st.cortex_mm)) * inv_w, 0.0, 1.0)
        value = occ * np.float32(st.cortex_hu) + inner * np.float32(st.marrow_hu - st.cortex_hu)
    else:
        value = occ * np.float32(st.marrow_hu)
    if sub > 1:
        nk = ks.stop - ks.start
        occ = occ.reshape(nk, sub, *occ.shape[1:]).mean(axis=1)
        value = value.reshape(nk, sub, *value.shape[1:]).mean(axis=1)
    if thickness_ratio > 1.0:
        # Slices thicker than their step overlap: widen the profile along z.
        sigma = (thickness_ratio - 1.0) * 0.5
        occ = ndimage.gaussian_filter1d(occ, sigma, axis=0, mode="nearest")
        value = ndimage.gaussian_filter1d(value, sigma, axis=0, mode="nearest")
    if not np.any(occ):
        return
    view = vol[box]
    view *= 1.0 - occ
    view += value
    if labels is not None and st.label:
        labels[box][occ > 0.5] = st.label


def paint_bones(
    spec: PhantomSpec, skeleton: Skeleton, grid: Grid, vol: F32, labels: npt.NDArray[np.uint8]
) -> None:
    """Discs, then the other bones, then the vertebrae (labelled), then implants."""
    sub = _slice_profile(spec, grid)
    ratio = spec.effective_slice_thickness / grid.spacing[2]
    ratio = ratio if ratio > 1.05 and sub == 1 else 1.0
    implants = [st for st in skeleton.others if st.name in ("screws", "rods")]
    others = [st for st in skeleton.others if st.name not in ("screws", "rods")]
    for st in skeleton.discs:
        paint_structure(vol, None, grid, st, sub, ratio)
    for st in others:
        paint_structure(vol, labels, grid, st, sub, ratio)
    for st in skeleton.vertebrae:
        paint_structure(vol, labels, grid, st, sub, ratio)
    for st in implants:
        paint_structure(vol, None, grid, st, sub, ratio)


def vertebra_centroid(st: Structure) -> F64:
    """Centre of mass (LPS mm) of a vertebra's solid, on a fixed 1 mm world grid (sub-voxel weighted)."""
    lo, hi = bounds_of(st.prims)
    h = CENTROID_GRID_MM
    origin = np.floor(lo / h) * h - h
    n = np.ceil((hi - origin) / h).astype(int) + 2
    ref = Grid(
        (float(origin[0]), float(origin[1]), float(origin[2])), (h, h, h), (int(n[2]), int(n[1]), int(n[0]))
    )
    box = (slice(0, ref.shape[0]), slice(0, ref.shape[1]), slice(0, ref.shape[2]))
    d = union_sdf(st.prims, ref, box, margin=2.0 * h + st.blend, blend=st.blend)
    occ = np.clip(0.5 - d / np.float32(h), 0.0, 1.0).astype(np.float64)
    total = occ.sum()
    if total <= 0:
        raise ValueError(f"vertebra {st.name} has an empty solid")
    ck = (occ.sum(axis=(1, 2)) * np.arange(ref.shape[0])).sum() / total
    cj = (occ.sum(axis=(0, 2)) * np.arange(ref.shape[1])).sum() / total
    ci = (occ.sum(axis=(0, 1)) * np.arange(ref.shape[2])).sum() / total
    return origin + np.array([ci, cj, ck]) * h


def vertebra_centroids(skeleton: Skeleton, grid: Grid) -> dict[int, tuple[float, float, float]]:
    """Centroids of the vertebrae whose centroid lies inside the grid's field of view."""
    lo, hi = grid.world_bounds()
    out: dict[int, tuple[float, float, float]] = {}
    for st in skeleton.vertebrae:
        lo_s, hi_s = bounds_of(st.prims)
        if np.any(hi_s < lo) or np.any(lo_s > hi):
            continue
        c = vertebra_centroid(st)
        if np.all(c >= lo - 1e-6) and np.all(c <= hi + 1e-6):
            out[st.label] = (float(c[0]), float(c[1]), float(c[2]))
    return out


def layout_of(spec: PhantomSpec) -> SpineLayout:
    """The spine layout of a spec (level centres and frames), without painting anything."""
    return level_positions(spec)
