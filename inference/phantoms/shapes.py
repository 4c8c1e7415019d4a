"""Signed-distance primitives and the axis-aligned grid they are painted on.

Every anatomical structure of a phantom is a union of a few analytic primitives (capsules, ellipsoids,
rounded boxes, a vertebral-body solid, lofted tubes). A primitive knows its world bounding box and
returns an (approximate, Lipschitz <= ~1) signed distance in millimetres, negative inside, for points given
as broadcastable coordinate arrays. Painting evaluates each primitive only inside its own bounding box,
so the cost follows the bone volume, not the image volume.

World coordinates are DICOM LPS millimetres. Grids are axis-aligned with LPS (the phantom's series
has Image Orientation (Patient) ``[1, 0, 0, 0, 1, 0]``), indexed ``[k, j, i]`` like ``Volume.array``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Distance assigned far from every primitive (mm); anything beyond the painting margins.
FAR_MM = 1.0e3


@dataclass(frozen=True)
class Grid:
    """An LPS-aligned voxel grid: voxel ``(i, j, k)`` centre = ``origin + (i, j, k) * spacing``."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]  # (nk, nj, ni)

    def affine(self) -> F64:
        aff = np.eye(4)
        aff[0, 0], aff[1, 1], aff[2, 2] = self.spacing
        aff[:3, 3] = self.origin
        return aff

    def index_box(self, lo: F64, hi: F64) -> tuple[slice, slice, slice] | None:
        """Index slices ``(k, j, i)`` of the voxels whose centres lie in the world box ``[lo, hi]``."""
        o = np.asarray(self.origin)
        s = np.asarray(self.spacing)
        n = np.asarray(self.shape[::-1])  # (ni, nj, nk)
        first = np.maximum(np.ceil((np.asarray(lo) - o) / s - 1e-9), 0).astype(int)
        last = np.minimum(np.floor((np.asarray(hi) - o) / s + 1e-9), n - 1).astype(int)
        if np.any(last < first):
            return None
        return (slice(first[2], last[2] + 1), slice(first[1], last[1] + 1), slice(first[0], last[0] + 1))

    def axes(self, box: tuple[slice, slice, slice]) -> tuple[F32, F32, F32]:
        """Broadcastable world coordinates ``X (1,1,ni)``, ``Y (1,nj,1)``, ``Z (nk,1,1)`` of a box."""
        ks, js, is_ = box
        ox, oy, oz = self.origin
        sx, sy, sz = self.spacing
        x = (ox + sx * np.arange(is_.start, is_.stop)).astype(np.float32)
        y = (oy + sy * np.arange(js.start, js.stop)).astype(np.float32)
        z = (oz + sz * np.arange(ks.start, ks.stop)).astype(np.float32)
        return x[None, None, :], y[None, :, None], z[:, None, None]

    def world_bounds(self) -> tuple[F64, F64]:
        o = np.asarray(self.origin, dtype=np.float64)
        far = o + (np.asarray(self.shape[::-1]) - 1) * np.asarray(self.spacing)
        return o, far

    def subsampled_z(self, factor: int) -> Grid:
        """The same slab with each slice split into ``factor`` thinner sub-slices (for slice profiles)."""
        if factor == 1:
            return self
        sz = self.spacing[2] / factor
        oz = self.origin[2] - self.spacing[2] / 2 + sz / 2
        return Grid(
            (self.origin[0], self.origin[1], oz),
            (self.spacing[0], self.spacing[1], sz),
            (self.shape[0] * factor, self.shape[1], self.shape[2]),
        )


class Primitive:
    """A solid with a world bounding box and a signed distance (mm, negative inside)."""

    lo: F64
    hi: F64

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        raise NotImplementedError


def _local(x: F32, y: F32, z: F32, center: F64, rot: F64) -> tuple[F32, F32, F32]:
    """Coordinates in a frame whose axes are the columns of ``rot`` (world), centred at ``center``."""
    dx = x - np.float32(center[0])
    dy = y - np.float32(center[1])
    dz = z - np.float32(center[2])
    r = rot.astype(np.float32)
    lx = dx * r[0, 0] + dy * r[1, 0] + dz * r[2, 0]
    ly = dx * r[0, 1] + dy * r[1, 1] + dz * r[2, 1]
    lz = dx * r[0, 2] + dy * r[1, 2] + dz * r[2, 2]
    return lx, ly, lz


def _frame_bounds(center: F64, rot: F64, half: F64) -> tuple[F64, F64]:
    ext = np.abs(rot) @ np.asarray(half, dtype=np.float64)
    return center - ext, center + ext


class Capsule(Primitive):
    """A segment ``a -> b`` swept by a sphere whose radius goes linearly from ``ra`` to ``rb``."""

    def __init__(self, a: npt.ArrayLike, b: npt.ArrayLike, ra: float, rb: float | None = None) -> None:
        self.a = np.asarray(a, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)
        self.ra = float(ra)
        self.rb = float(ra if rb is None else rb)
        r = max(self.ra, self.rb)
        self.lo = np.minimum(self.a, self.b) - r
        self.hi = np.maximum(self.a, self.b) + r

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        ba = (self.b - self.a).astype(np.float32)
        denom = np.float32(max(float(ba @ ba), 1e-9))
        px = x - np.float32(self.a[0])
        py = y - np.float32(self.a[1])
        pz = z - np.float32(self.a[2])
        h = np.clip((px * ba[0] + py * ba[1] + pz * ba[2]) / denom, 0.0, 1.0)
        dx = px - h * ba[0]
        dy = py - h * ba[1]
        dz = pz - h * ba[2]
        dist = np.sqrt(dx * dx + dy * dy + dz * dz)
        return (dist - (np.float32(self.ra) + np.float32(self.rb - self.ra) * h)).astype(np.float32)


class Ellipsoid(Primitive):
    """An ellipsoid with semi-axes ``semi`` along the columns of ``rot``."""

    def __init__(self, center: npt.ArrayLike, rot: npt.ArrayLike, semi: npt.ArrayLike) -> None:
        self.center = np.asarray(center, dtype=np.float64)
        self.rot = np.asarray(rot, dtype=np.float64)
        self.semi = np.asarray(semi, dtype=np.float64)
        self.lo, self.hi = _frame_bounds(self.center, self.rot, self.semi)

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        lx, ly, lz = _local(x, y, z, self.center, self.rot)
        a, b, c = (np.float32(v) for v in self.semi)
        # Quilez's bound: k0 (k0 - 1) / k1 is close to the true distance near the surface.
        qx, qy, qz = lx / a, ly / b, lz / c
        k0 = np.sqrt(qx * qx + qy * qy + qz * qz)
        rx, ry, rz = qx / a, qy / b, qz / c
        k1 = np.sqrt(rx * rx + ry * ry + rz * rz)
        return (k0 * (k0 - 1.0) / np.maximum(k1, np.float32(1e-6))).astype(np.float32)


class RoundBox(Primitive):
    """A box with half-sizes ``half`` along the columns of ``rot`` and edges rounded by ``radius``."""

    def __init__(self, center: npt.ArrayLike, rot: npt.ArrayLike, half: npt.ArrayLike, radius: float) -> None:
        self.center = np.asarray(center, dtype=np.float64)
        self.rot = np.asarray(rot, dtype=np.float64)
        self.half = np.asarray(half, dtype=np.float64)
        self.radius = float(min(radius, float(np.min(self.half))))
        self.lo, self.hi = _frame_bounds(self.center, self.rot, self.half)

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        lx, ly, lz = _local(x, y, z, self.center, self.rot)
        r = np.float32(self.radius)
        qx = np.abs(lx) - np.float32(self.half[0] - self.radius)
        qy = np.abs(ly) - np.float32(self.half[1] - self.radius)
        qz = np.abs(lz) - np.float32(self.half[2] - self.radius)
        mx, my, mz = np.maximum(qx, 0), np.maximum(qy, 0), np.maximum(qz, 0)
        outside = np.sqrt(mx * mx + my * my + mz * mz)
        inside = np.minimum(np.maximum(qx, np.maximum(qy, qz)), 0)
        return (outside + inside - r).astype(np.float32)


@dataclass(frozen=True)
class BodyShape:
    """Parameters of a vertebral body in its own frame (mm): x left, y posterior, z superior."""

    half_width: float  # a: transverse semi-axis
    half_depth: float  # b: antero-posterior semi-axis
    height: float  # at the rim, centre to centre of the endplates
    endplate_cavity: float = 1.0  # central depression of each endplate
    posterior_concavity: float = 2.0  # kidney shape: posterior wall recessed at the midline
    waist: float = 0.08  # relative narrowing of the mid-body (concave sides)
    anterior_wedge: float = 0.0  # loss of anterior height (mm), e.g. kyphotic wedge or fracture
    central_collapse: float = 0.0  # extra central loss of height (mm) of both endplates (biconcave fracture)


class VertebralBody(Primitive):
    """An elliptic, waisted, kidney-shaped cylinder with concave endplates."""

    def __init__(self, center: npt.ArrayLike, rot: npt.ArrayLike, shape: BodyShape) -> None:
        self.center = np.asarray(center, dtype=np.float64)
        self.rot = np.asarray(rot, dtype=np.float64)
        self.shape = shape
        half = np.array([shape.half_width, shape.half_depth, shape.height / 2 + 1.0])
        self.lo, self.hi = _frame_bounds(self.center, self.rot, half)

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        s = self.shape
        lx, ly, lz = _local(x, y, z, self.center, self.rot)
        a = np.float32(s.half_width)
        b = np.float32(s.half_depth)
        hz = np.float32(s.height / 2)
        t = np.clip(lz / hz, -1.0, 1.0)
        waist = 1.0 - np.float32(s.waist) * (1.0 - t * t)
        u = lx / (a * waist)
        # Posterior wall pushed forward at the midline (kidney-shaped axial section).
        kid = np.float32(s.posterior_concavity) * np.maximum(1.0 - u * u, 0.0) * (ly > 0)
        v = (ly + kid) / b
        rho = np.sqrt(u * u + v * v)
        d_rad = (rho - 1.0) * np.minimum(a * waist, b)
        rho_in = np.minimum(rho, 1.0)
        dip = (np.float32(s.endplate_cavity) + np.float32(s.central_collapse)) * (1.0 - rho_in * rho_in)
        # Anterior wedge: height lost at the anterior rim (y = -b), none posteriorly.
        wedge = np.float32(s.anterior_wedge / 2) * np.clip((b - ly) / (2 * b), 0.0, 1.0)
        top = hz - dip - wedge
        d_ax = np.abs(lz) - top
        return np.maximum(d_rad, d_ax).astype(np.float32)


class Loft(Primitive):
    """A vertical tube whose superelliptic axial section follows z (body contour, organs, lungs).

    ``table`` rows are ``(z, cx, cy, a, b)``: centre and semi-axes of the section at height z; sections in
    between are interpolated linearly; the tube ends at the first and last z (flat caps). ``roll`` rotates
    the sections about the z axis (radians); ``squareness`` 0 is an ellipse, 1 a superellipse of power 4.
    """

    def __init__(
        self,
        table: npt.ArrayLike,
        squareness: float = 0.0,
        roll: float = 0.0,
        pivot: Sequence[float] = (0.0, 0.0),
    ) -> None:
        tab = np.asarray(table, dtype=np.float64)
        order = np.argsort(tab[:, 0])
        self.table = tab[order]
        self.squareness = float(squareness)
        self.roll = float(roll)
        self.pivot = (float(pivot[0]), float(pivot[1]))
        z, cx, cy, a, b = self.table.T
        r = np.maximum(a, b)
        self.lo = np.array([np.min(cx - r), np.min(cy - r), z[0]])
        self.hi = np.array([np.max(cx + r), np.max(cy + r), z[-1]])
        if self.roll:
            c = np.array([*self.pivot])
            corners = np.array(
                [
                    [self.lo[0], self.lo[1]],
                    [self.lo[0], self.hi[1]],
                    [self.hi[0], self.lo[1]],
                    [self.hi[0], self.hi[1]],
                ]
            )
            rot = np.array([[np.cos(self.roll), -np.sin(self.roll)], [np.sin(self.roll), np.cos(self.roll)]])
            rc = (corners - c) @ rot.T + c
            self.lo[:2] = rc.min(axis=0)
            self.hi[:2] = rc.max(axis=0)

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        zz = z.reshape(-1).astype(np.float64)
        tz, tcx, tcy, ta, tb = self.table.T
        cx = np.interp(zz, tz, tcx).astype(np.float32)[:, None, None]
        cy = np.interp(zz, tz, tcy).astype(np.float32)[:, None, None]
        a = np.maximum(np.interp(zz, tz, ta), 0.1).astype(np.float32)[:, None, None]
        b = np.maximum(np.interp(zz, tz, tb), 0.1).astype(np.float32)[:, None, None]
        if self.roll:
            # Rotate the query points by -roll about the pivot instead of the sections by +roll.
            c, s = np.float32(np.cos(self.roll)), np.float32(np.sin(self.roll))
            px, py = np.float32(self.pivot[0]), np.float32(self.pivot[1])
            xr = (x - px) * c + (y - py) * s + px
            yr = -(x - px) * s + (y - py) * c + py
        else:
            xr, yr = x, y
        u = np.abs(xr - cx) / a
        v = np.abs(yr - cy) / b
        u2 = u * u
        v2 = v * v
        rho = np.sqrt(u2 + v2)
        if self.squareness > 0:
            # Blend towards the power-4 superellipse (boxier sections) without calling pow.
            q = np.float32(self.squareness)
            rho = rho * (1 - q) + np.sqrt(np.sqrt(u2 * u2 + v2 * v2)) * q
        d_rad = (rho - 1.0) * np.minimum(a, b)
        d_cap = np.maximum(np.float32(tz[0]) - z, z - np.float32(tz[-1]))
        return np.maximum(d_rad, d_cap).astype(np.float32)


class Shell(Primitive):
    """The layer of thickness ``thickness`` centred on another primitive's surface."""

    def __init__(self, inner: Primitive, thickness: float) -> None:
        self.inner = inner
        self.half = float(thickness) / 2
        self.lo = inner.lo - self.half
        self.hi = inner.hi + self.half

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        return (np.abs(self.inner.sdf(x, y, z)) - np.float32(self.half)).astype(np.float32)


class HalfSpace(Primitive):
    """Points on the side of a plane opposite to ``normal`` (unbounded; only inside an Intersection)."""

    def __init__(self, point: npt.ArrayLike, normal: npt.ArrayLike) -> None:
        self.point = np.asarray(point, dtype=np.float64)
        n = np.asarray(normal, dtype=np.float64)
        self.normal = n / np.linalg.norm(n)
        self.lo = np.full(3, -np.inf)
        self.hi = np.full(3, np.inf)

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        n = self.normal.astype(np.float32)
        p = self.point
        return (
            (x - np.float32(p[0])) * n[0] + (y - np.float32(p[1])) * n[1] + (z - np.float32(p[2])) * n[2]
        ).astype(np.float32)


class Intersection(Primitive):
    """Points inside all the given primitives."""

    def __init__(self, *parts: Primitive) -> None:
        self.parts = parts
        self.lo = np.max([p.lo for p in parts], axis=0)
        self.hi = np.min([p.hi for p in parts], axis=0)

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        out = self.parts[0].sdf(x, y, z)
        for p in self.parts[1:]:
            out = np.maximum(out, p.sdf(x, y, z))
        return np.broadcast_to(out, np.broadcast_shapes(x.shape, y.shape, z.shape)).astype(np.float32)


class Difference(Primitive):
    """Points inside ``base`` and outside every ``cut``."""

    def __init__(self, base: Primitive, *cuts: Primitive) -> None:
        self.base = base
        self.cuts = cuts
        self.lo = base.lo
        self.hi = base.hi

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        out = self.base.sdf(x, y, z)
        shape = out.shape
        for c in self.cuts:
            box_lo, box_hi = c.lo, c.hi
            # Only evaluate a cut where its bounding box can matter.
            if np.any(box_hi < self.lo) or np.any(box_lo > self.hi):
                continue
            out = np.maximum(out, -c.sdf(x, y, z))
        return np.broadcast_to(out, shape).astype(np.float32)


def smooth_min(a: F32, b: F32, k: float) -> F32:
    """Polynomial smooth minimum (fillets of radius ~k between unioned solids)."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.maximum(np.float32(k) - np.abs(a - b), 0.0) / np.float32(k)
    return (np.minimum(a, b) - h * h * np.float32(k / 4)).astype(np.float32)


def union_sdf(
    prims: Sequence[Primitive],
    grid: Grid,
    box: tuple[slice, slice, slice],
    margin: float,
    blend: float = 0.0,
    prim_boxes: Sequence[tuple[slice, slice, slice] | None] | None = None,
) -> F32:
    """Signed distance of the union of ``prims`` on ``box`` of ``grid``, exact within ``margin`` of surfaces.

    Each primitive is evaluated only on the part of the box its bounding box (grown by ``margin``) covers;
    ``prim_boxes`` may give those index boxes precomputed (same order as ``prims``).
    """
    shape = tuple(s.stop - s.start for s in box)
    out = np.full(shape, FAR_MM, dtype=np.float32)
    for n, p in enumerate(prims):
        sub = grid.index_box(p.lo - margin, p.hi + margin) if prim_boxes is None else prim_boxes[n]
        if sub is None:
            continue
        inter = tuple(
            slice(max(s.start, b.start), min(s.stop, b.stop)) for s, b in zip(sub, box, strict=True)
        )
        if any(s.stop <= s.start for s in inter):
            continue
        x, y, z = grid.axes(inter)  # type: ignore[arg-type]
        d = p.sdf(x, y, z)
        local = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(inter, box, strict=True))
        view = out[local]
        out[local] = smooth_min(view, d, blend) if blend > 0 else np.minimum(view, d)
    return out


def bounds_of(prims: Sequence[Primitive]) -> tuple[F64, F64]:
    finite = [p for p in prims if np.all(np.isfinite(p.lo))]
    return np.min([p.lo for p in finite], axis=0), np.max([p.hi for p in finite], axis=0)


def polyline_capsules(points: npt.ArrayLike, radii: npt.ArrayLike | float) -> list[Primitive]:
    """Capsules along consecutive points (a tube), radius per point or constant."""
    pts = np.asarray(points, dtype=np.float64)
    r = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(pts),))
    return [Capsule(pts[n], pts[n + 1], float(r[n]), float(r[n + 1])) for n in range(len(pts) - 1)]


def rotation_z(angle: float) -> F64:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def frame_from(z_axis: npt.ArrayLike, y_hint: npt.ArrayLike) -> F64:
    """Right-handed frame (columns x, y, z) with the given z axis and y as close as possible to ``y_hint``."""
    ez = np.asarray(z_axis, dtype=np.float64)
    ez = ez / np.linalg.norm(ez)
    ey = np.asarray(y_hint, dtype=np.float64) - ez * float(np.dot(y_hint, ez))
    ey = ey / np.linalg.norm(ey)
    ex = np.cross(ey, ez)
    return np.stack([ex, ey, ez], axis=1)


SdfFunction = Callable[[F32, F32, F32], F32]
