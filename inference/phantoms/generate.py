"""Compose a phantom: soft tissue on a coarse grid, bones painted at full resolution, then CT artefacts.

Ground truth: each vertebra's landmark is the centroid of its vertebral BODY, as VerSe annotates it (the
VerSe JSON points lie 10-14 mm anterior of the whole-mask centre of mass and within ~1 mm of the body's
centroid; see docs/engine.md). It is the centre of mass of the body solid (for C1, which has no body, of
the whole atlas), computed on a fixed world grid that does not depend on the image grid, so the same
seed gives the same landmarks at any spacing. A vertebra is part of the ground truth when its landmark
lies inside the field of view by at least ``EDGE_MARGIN_MM`` (VerSe labels no vertebra cut by the edge
of the scan).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from dicom_io.volume import Volume
from inference.phantoms.anatomy import ARCH, Skeleton, Structure, build_skeleton, level_positions
from inference.phantoms.artefacts import add_noise, add_streaks
from inference.phantoms.shapes import Grid, Primitive, VertebralBody, bounds_of, union_sdf
from inference.phantoms.spec import PhantomSpec
from inference.phantoms.streams import STREAM_DETAIL, STREAM_NOISE, stream
from inference.phantoms.tissue import build_tissues, paint_tissue, vascular_calcification

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Soft tissue is composed on a grid about this coarse (mm) and upsampled linearly.
SOFT_TISSUE_MM = 3.5
#: Bones are painted in tiles of this many voxels per axis; tiles far from every surface are skipped.
TILE = 24
#: Spacing (mm) of the fixed world grid on which ground-truth centroids are computed.
CENTROID_GRID_MM = 1.5
#: A landmark closer than this to the edge of the field of view is not part of the ground truth.
EDGE_MARGIN_MM = 8.0
#: Amplitude (HU, one standard deviation) of the coarse marrow pattern of the thinnest (osteoporotic) bone.
OSTEOPOROTIC_HU = 50.0
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
        from dicom_io.labels import vertebra_name

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
    add_noise(volume, grid, spec, rng_noise)
    np.clip(volume, HU_MIN, HU_MAX, out=volume)
    timings["artefacts"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    logger.debug("phantom seed=%d fov=%s shape=%s timings=%s", spec.seed, spec.fov, spec.shape, timings)
    return Phantom(Volume(volume, grid.affine()), labels, centroids, spec, timings)


def compose_soft_tissue(spec: PhantomSpec, skeleton: Skeleton, grid: Grid, rng: np.random.Generator) -> F32:
    """Air, table, body, organs on a coarse grid aligned with ``grid``, linearly upsampled to it."""
    # About SOFT_TISSUE_MM, an integer multiple of the image spacing (the image itself when coarser).
    factors = tuple(max(1, int(round(SOFT_TISSUE_MM / s))) for s in grid.spacing)  # (fi, fj, fk)
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
    edge = max(coarse.spacing) * 1.25
    for tissue in build_tissues(spec, skeleton, coarse, rng):
        paint_tissue(vol, coarse, tissue, edge)
    return _upsample(vol, (factors[2], factors[1], factors[0]), grid.shape)


def _lerp_axis(a: F32, axis: int, f: int, n: int) -> F32:
    """Linear upsampling by the integer ``f`` along ``axis`` (sample c -> index c * f), cropped to n."""
    a = np.moveaxis(a, axis, -1)
    lo = a[..., :-1, None]
    hi = a[..., 1:, None]
    w = np.arange(f, dtype=np.float32) / np.float32(f)
    out = lo + (hi - lo) * w
    out = out.reshape(*a.shape[:-1], -1)
    out = np.concatenate([out, a[..., -1:]], axis=-1)[..., :n]
    return np.moveaxis(out, -1, axis)


def _lerp_last_into(a: F32, f: int, out: F32) -> None:
    """Write ``a`` linearly upsampled by ``f`` along its last axis into ``out`` (same leading shape)."""
    n = out.shape[-1]
    m = a.shape[-1] - 1
    full = min(n, m * f)
    lo = a[..., :-1, None]
    step = a[..., 1:, None] - lo
    tmp = step * (np.arange(f, dtype=np.float32) / np.float32(f))
    tmp += lo
    out[..., :full] = tmp.reshape(*a.shape[:-1], m * f)[..., :full]
    if n > full:
        out[..., full:] = a[..., -1:]


def _upsample(vol: F32, factors: tuple[int, int, int], shape: tuple[int, int, int]) -> F32:
    """Linear interpolation by integer factors per axis (coarse sample c sits on fine index c * f).

    Done slab by slab along k into one output array, so temporaries stay small.
    """
    fk, fj, fi = factors
    nk, nj, ni = shape
    out = np.empty(shape, dtype=np.float32)
    vk = _lerp_axis(vol, 0, fk, nk) if fk > 1 else vol[:nk]
    slab = 16
    for k0 in range(0, nk, slab):
        part = vk[k0 : k0 + slab]
        if fj > 1:
            part = _lerp_axis(part, 1, fj, nj)
        part = part[:, :nj]
        if fi > 1:
            _lerp_last_into(np.ascontiguousarray(part), fi, out[k0 : k0 + slab])
        else:
            out[k0 : k0 + slab] = part[:, :, :ni]
    return out


def paint_structure(
    vol: F32,
    labels: npt.NDArray[np.uint8] | None,
    grid: Grid,
    st: Structure,
    slice_mm: float,
    blur_mm: float,
    texture: F32 | None = None,
) -> None:
    """Composite one bone structure into ``vol``: cortex + marrow, anti-aliased, with the slice profile.

    Partial volume and blur: the occupancy of a voxel ramps linearly across the surface over a width
    that combines the voxel size with the point-spread function (a ramp of width ``3.2 sigma`` has the
    10-90 % rise of a Gaussian edge of ``sigma``), and along z with the slice thickness:
    ``w = sqrt((1 - nz^2) w_xy^2 + nz^2 w_z^2)`` with ``nz`` the z component of the distance gradient. Thin
    cortex therefore looks thinner and dimmer in thick or blurred images, as it does in CT.

    The box is painted tile by tile; tiles whose centre is clearly outside the structure are skipped.
    """
    lo, hi = bounds_of(st.prims)
    voxel = max(grid.spacing[0], grid.spacing[1])
    w_xy = float(np.hypot(0.9 * voxel, 3.2 * blur_mm))
    w_z = max(float(np.hypot(slice_mm, 3.2 * blur_mm)), w_xy)
    margin = max(w_xy, w_z) + st.cortex_mm + st.blend + 1.0
    box = grid.index_box(lo - margin, hi + margin)
    if box is None:
        return
    pb_list: list[tuple[slice, slice, slice] | None] = [
        grid.index_box(p.lo - margin, p.hi + margin) for p in st.prims
    ]
    big = np.array([[[10**9, -(10**9)]] * 3])
    pb = np.concatenate([big if b is None else np.array([[[s.start, s.stop] for s in b]]) for b in pb_list])
    spacing_kji = np.array([grid.spacing[2], grid.spacing[1], grid.spacing[0]])
    anisotropic = w_z > 1.2 * w_xy
    n_tiles = [max(1, -(-(b.stop - b.start) // TILE)) for b in box]
    # Distance at every tile centre in one call: tiles clearly outside the structure are skipped.
    half_diag = float(np.linalg.norm(TILE * spacing_kji)) / 2
    first_centre = np.array([b.start for b in box], dtype=np.float64) + (TILE - 1) / 2
    c_world = np.array(grid.origin) + first_centre[::-1] * np.array(grid.spacing)
    centres = Grid(
        (float(c_world[0]), float(c_world[1]), float(c_world[2])),
        (grid.spacing[0] * TILE, grid.spacing[1] * TILE, grid.spacing[2] * TILE),
        (n_tiles[0], n_tiles[1], n_tiles[2]),
    )
    reach = 1.3 * (half_diag + margin)
    d_centres = union_sdf(st.prims, centres, tuple(slice(0, n) for n in n_tiles), reach)  # type: ignore[arg-type]
    for tk, tj, ti in zip(*np.nonzero(d_centres <= reach), strict=True):
        k0 = box[0].start + int(tk) * TILE
        j0 = box[1].start + int(tj) * TILE
        i0 = box[2].start + int(ti) * TILE
        tile = (
            slice(k0, min(k0 + TILE, box[0].stop)),
            slice(j0, min(j0 + TILE, box[1].stop)),
            slice(i0, min(i0 + TILE, box[2].stop)),
        )
        t_lo = np.array([k0, j0, i0])
        t_hi = np.array([t.stop for t in tile])
        hit = np.nonzero(np.all(pb[:, :, 0] < t_hi, axis=1) & np.all(pb[:, :, 1] > t_lo, axis=1))[0]
        if hit.size:
            prims = [st.prims[n] for n in hit]
            boxes = [pb_list[n] for n in hit]
            _paint_tile(vol, labels, grid, st, prims, boxes, tile, margin, w_xy, w_z, anisotropic, texture)


def _paint_tile(
    vol: F32,
    labels: npt.NDArray[np.uint8] | None,
    grid: Grid,
    st: Structure,
    prims: list[Primitive],
    boxes: list[tuple[slice, slice, slice] | None],
    tile: tuple[slice, slice, slice],
    margin: float,
    w_xy: float,
    w_z: float,
    anisotropic: bool,
    texture: F32 | None,
) -> None:
    if anisotropic:
        # ``moved`` index m is ``grid`` index m - 1, so the tile's slices +-1 are moved[start : stop + 2].
        shifted = (slice(tile[0].start, tile[0].stop + 2), tile[1], tile[2])
        moved = Grid(
            (grid.origin[0], grid.origin[1], grid.origin[2] - grid.spacing[2]),
            grid.spacing,
            (grid.shape[0] + 2, grid.shape[1], grid.shape[2]),
        )
        moved_boxes = [None if b is None else (slice(b[0].start, b[0].stop + 2), b[1], b[2]) for b in boxes]
        d_ext = union_sdf(prims, moved, shifted, margin, st.blend, moved_boxes)
        d = d_ext[1:-1]
        nz = (d_ext[2:] - d_ext[:-2]) * np.float32(0.5 / grid.spacing[2])
        nz2 = np.minimum(nz * nz, 1.0)
        w = np.sqrt((1.0 - nz2) * np.float32(w_xy * w_xy) + nz2 * np.float32(w_z * w_z))
        inv_w: F32 | np.float32 = (1.0 / w).astype(np.float32)
    else:
        d = union_sdf(prims, grid, tile, margin, st.blend, boxes)
        inv_w = np.float32(1.0 / w_xy)
    occ = np.clip(0.5 - d * inv_w, 0.0, 1.0)
    if not occ.any():
        return
    if st.cortex_mm > 0:
        inner = np.clip(0.5 - (d + np.float32(st.cortex_mm)) * inv_w, 0.0, 1.0)
        value = occ * np.float32(st.cortex_hu) + inner * np.float32(st.marrow_hu - st.cortex_hu)
        if texture is not None:
            # Trabecular mottling: a periodic noise tile indexed by voxel position (HU offsets).
            n = texture.shape[0]
            idx = [np.arange(t.start, t.stop) % n for t in tile]
            value += inner * texture[np.ix_(idx[0], idx[1], idx[2])]
    else:
        value = occ * np.float32(st.marrow_hu)
    view = vol[tile]
    view *= 1.0 - occ
    view += value
    if labels is not None and st.label:
        labels[tile][occ > 0.5] = st.label


def paint_bones(
    spec: PhantomSpec, skeleton: Skeleton, grid: Grid, vol: F32, labels: npt.NDArray[np.uint8]
) -> None:
    """Discs, other bones and calcium, then the vertebrae (labelled) and their dense arches, then
    implants and gas clefts."""
    slice_mm = spec.effective_slice_thickness
    blur = spec.blur_mm
    texture = trabecular_texture(spec, grid)
    late = ("screws", "rods", "vacuum_cleft")
    arches = [st for st in skeleton.others if st.name == ARCH]
    implants = [st for st in skeleton.others if st.name in late]
    others = [st for st in skeleton.others if st.name not in (*late, ARCH)]
    others += vascular_calcification(spec, skeleton)
    for st in skeleton.discs:
        paint_structure(vol, None, grid, st, slice_mm, blur)
    for st in others:
        paint_structure(vol, labels, grid, st, slice_mm, blur, texture)
    for st in skeleton.vertebrae:
        paint_structure(vol, labels, grid, st, slice_mm, blur, texture)
    for st in arches:
        paint_structure(vol, labels, grid, st, slice_mm, blur, texture)
    for st in implants:
        paint_structure(vol, None, grid, st, slice_mm, blur)


def trabecular_texture(spec: PhantomSpec, grid: Grid) -> F32 | None:
    """A 32-voxel periodic tile of trabecular-like mottling (HU), fainter for coarse voxels (None: invisible).

    Two parts: fine mottling whose amplitude grows with bone density (denser trabeculae, more contrast)
    and falls with the voxel size (coarse voxels average the ~0.5 mm pattern away); and, in thin
    (osteoporotic) bone, a coarse pattern elongated along the body axis: the horizontal trabeculae go
    first, leaving vertical striae and dark gaps that stay visible in 2-3 mm voxels.
    """
    voxel = max(grid.spacing[0], grid.spacing[1])
    c = spec.cancellous_hu
    fine = (10.0 + 0.15 * c) * min(1.0, 0.7 / voxel) * min(1.0, 2.0 / grid.spacing[2])
    coarse = OSTEOPOROTIC_HU * float(np.clip((200.0 - c) / 130.0, 0.0, 1.0)) * min(1.0, 3.0 / grid.spacing[2])
    if fine < 3.0 and coarse < 3.0:
        return None
    tile = np.zeros((32, 32, 32), dtype=np.float32)
    sk, sj, si = grid.spacing[2], grid.spacing[1], grid.spacing[0]
    parts = (  # (amplitude HU, random stream, Gaussian sigma in voxels: one, or per k j i axis)
        (fine, STREAM_NOISE + 10, max(0.6, 0.4 / voxel)),
        (coarse, STREAM_NOISE + 11, (max(0.8, 3.0 / sk), max(0.6, 1.0 / sj), max(0.6, 1.0 / si))),
    )
    for amplitude, which, sigma in parts:
        if amplitude >= 3.0:
            noise = stream(spec.seed, which).standard_normal((32, 32, 32), dtype=np.float32)
            part = ndimage.gaussian_filter(noise, sigma, mode="wrap")
            tile += part * np.float32(amplitude / max(float(part.std()), 1e-6))
    return tile


def body_prims(st: Structure) -> list[Primitive]:
    """The primitives of a vertebra's body (all of them for C1, which has none)."""
    body: list[Primitive] = [p for p in st.prims if isinstance(p, VertebralBody)]
    return body or list(st.prims)


def vertebra_centroid(st: Structure, body_only: bool = True) -> F64:
    """Centre of mass (LPS mm) of a vertebra's body (``body_only``) or whole solid, on a fixed world grid
    (sub-voxel weighted)."""
    prims = body_prims(st) if body_only else list(st.prims)
    blend = 0.0 if body_only else st.blend
    lo, hi = bounds_of(prims)
    h = CENTROID_GRID_MM
    origin = np.floor(lo / h) * h - h
    n = np.ceil((hi - origin) / h).astype(int) + 2
    ref = Grid(
        (float(origin[0]), float(origin[1]), float(origin[2])), (h, h, h), (int(n[2]), int(n[1]), int(n[0]))
    )
    box = (slice(0, ref.shape[0]), slice(0, ref.shape[1]), slice(0, ref.shape[2]))
    d = union_sdf(prims, ref, box, margin=2.0 * h + blend, blend=blend)
    occ = np.clip(0.5 - d / np.float32(h), 0.0, 1.0).astype(np.float64)
    total = occ.sum()
    if total <= 0:
        raise ValueError(f"vertebra {st.name} has an empty solid")
    ck = (occ.sum(axis=(1, 2)) * np.arange(ref.shape[0])).sum() / total
    cj = (occ.sum(axis=(0, 2)) * np.arange(ref.shape[1])).sum() / total
    ci = (occ.sum(axis=(0, 1)) * np.arange(ref.shape[2])).sum() / total
    return origin + np.array([ci, cj, ck]) * h


def vertebra_centroids(skeleton: Skeleton, grid: Grid) -> dict[int, tuple[float, float, float]]:
    """Body centroids of the vertebrae whose body centroid lies ``EDGE_MARGIN_MM`` inside the view."""
    lo, hi = grid.world_bounds()
    out: dict[int, tuple[float, float, float]] = {}
    for st in skeleton.vertebrae:
        lo_s, hi_s = bounds_of(st.prims)
        if np.any(hi_s < lo) or np.any(lo_s > hi):
            continue
        c = vertebra_centroid(st)
        if np.all(c >= lo + EDGE_MARGIN_MM) and np.all(c <= hi - EDGE_MARGIN_MM):
            out[st.label] = (float(c[0]), float(c[1]), float(c[2]))
    return out
