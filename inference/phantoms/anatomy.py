"""The phantom's anatomy: the spine curve, vertebrae, discs, sacrum, pelvis, ribs and skull base.

All geometry is a function of the spec alone (its seed and parameters), never of the image grid, so a
phantom generated at 4 mm has exactly the anatomy of the same phantom at 0.6 mm.

Sizes: vertebral body heights, widths and disc heights follow the published figures collected in
``docs/anchors.md`` ("Real anatomy"): bodies C ~12-15 mm, T ~17-25 mm, L ~25-30 mm tall, widths
C3 ~16 mm to L5 ~50 mm; discs C ~5 mm, T ~4-6 mm, L ~10-12 mm with L5/S1 narrower; centroids 15-18 mm
apart in the neck, 20-28 mm in the thorax and 33-38 mm in the lumbar spine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from dicom_io.labels import LABEL_BY_NAME, SACRUM_LABEL
from inference.phantoms.shapes import (
    BodyShape,
    Capsule,
    Difference,
    Ellipsoid,
    HalfSpace,
    Intersection,
    Loft,
    Primitive,
    RoundBox,
    Shell,
    VertebralBody,
    frame_from,
    polyline_capsules,
    rotation_z,
)
from inference.phantoms.streams import STREAM_ANATOMY, stream

F64 = npt.NDArray[np.float64]


class AnatomySpec(Protocol):
    """What the anatomy reads from a phantom recipe; :class:`inference.phantoms.spec.PhantomSpec` is one.

    A protocol rather than an import: ``PhantomSpec.random`` places the field of view with
    :func:`level_positions`, so this module must not import the spec module back.
    """

    @property
    def seed(self) -> int: ...

    @property
    def variant(self) -> str: ...

    @property
    def body_scale(self) -> float: ...

    @property
    def adiposity(self) -> float: ...

    @property
    def vertebra_scale(self) -> float: ...

    @property
    def cervical_lordosis(self) -> float: ...

    @property
    def thoracic_kyphosis(self) -> float: ...

    @property
    def lumbar_lordosis(self) -> float: ...

    @property
    def sacral_slope(self) -> float: ...

    @property
    def pelvic_tilt(self) -> float: ...

    @property
    def scoliosis(self) -> tuple[tuple[float, float, float], ...]: ...

    @property
    def body_roll(self) -> float: ...

    @property
    def arms_up(self) -> bool: ...

    @property
    def cancellous_hu(self) -> float: ...

    @property
    def cortical_hu(self) -> float: ...

    @property
    def degeneration(self) -> float: ...

    @property
    def posterior_bulk(self) -> float: ...

    @property
    def body_breadth(self) -> float: ...

    @property
    def fractures(self) -> tuple[int, ...]: ...

    @property
    def implant_levels(self) -> tuple[int, ...]: ...


#: VerSe label of each level name (dicom_io.labels); every sacral segment S1-S5 carries the sacrum's label.
LABEL_OF: dict[str, int] = {**LABEL_BY_NAME, **{f"S{i}": SACRUM_LABEL for i in range(1, 6)}}


@dataclass(frozen=True)
class LevelDims:
    """Nominal size of one level (mm): body height, width, depth; disc below; posterior elements."""

    height: float
    width: float
    depth: float
    disc: float  # height of the disc (or joint space) below this level
    canal_width: float
    canal_depth: float
    pedicle_radius: float
    pedicle_length: float
    lamina_thickness: float
    spinous_length: float
    spinous_angle: float  # degrees below the horizontal (caudal tilt)
    spinous_half_height: float
    transverse_length: float
    transverse_radius: float


def _dims(
    h: float,
    w: float,
    d: float,
    disc: float,
    cw: float,
    cd: float,
    pr: float,
    pl: float,
    lt: float,
    sl: float,
    sa: float,
    sh: float,
    tl: float,
    tr: float,
) -> LevelDims:
    return LevelDims(h, w, d, disc, cw, cd, pr, pl, lt, sl, sa, sh, tl, tr)


# Nominal adult dimensions. Bodies/discs per anchors.md; posterior elements from standard anatomy texts
# (canal ~24x15 mm cervical, ~17x16 thoracic, ~23x17 lumbar; thoracic spinous processes steeply caudal).
NOMINAL: dict[str, LevelDims] = {
    "C1": _dims(10.0, 0.0, 0.0, 6.5, 26, 30, 3.5, 0, 4, 6, 0, 4, 18, 3.5),
    "C2": _dims(15.0, 17, 15.0, 4.5, 24, 15, 3.2, 6, 4.0, 20, 20, 5.5, 9, 2.6),
    "C3": _dims(12.5, 16, 15.5, 4.5, 24, 13, 2.6, 5, 2.6, 12, 20, 3.2, 10, 2.3),
    "C4": _dims(12.5, 17, 16.0, 4.8, 24, 13, 2.6, 5, 2.6, 13, 22, 3.2, 10, 2.3),
    "C5": _dims(12.8, 18, 16.0, 5.0, 25, 13, 2.7, 5, 2.7, 14, 22, 3.3, 11, 2.4),
    "C6": _dims(13.0, 20, 16.5, 5.0, 25, 13, 2.8, 5.5, 2.8, 17, 25, 3.4, 12, 2.5),
    "C7": _dims(14.0, 22, 17.0, 4.5, 24, 13, 3.0, 6, 3.0, 26, 28, 3.8, 13, 3.2),
    "T1": _dims(15.5, 26, 18.5, 3.5, 20, 14, 3.1, 6.0, 3.2, 26, 38, 2.8, 19, 3.6),
    "T2": _dims(16.5, 27, 20.0, 3.6, 17, 14, 3.2, 7.5, 3.4, 30, 45, 3.0, 19, 3.8),
    "T3": _dims(17.0, 27, 21.0, 3.8, 16, 14.5, 3.2, 8, 3.5, 34, 52, 3.2, 19.5, 4.0),
    "T4": _dims(17.5, 27.5, 23.0, 4.0, 16, 15, 3.2, 8, 3.6, 37, 58, 3.4, 19.5, 4.1),
    "T5": _dims(18.0, 28, 24.5, 4.0, 16, 15, 3.3, 8.5, 3.6, 40, 62, 4.0, 21, 4.1),
    "T6": _dims(19.0, 29, 25.5, 4.2, 16, 15, 3.4, 8.5, 3.7, 40, 62, 4.0, 20, 4.2),
    "T7": _dims(19.5, 30, 26.5, 4.5, 16, 15, 3.5, 9, 3.8, 40, 60, 4.0, 19, 4.3),
    "T8": _dims(20.0, 32, 27.5, 4.8, 16, 15, 3.6, 9, 3.9, 38, 56, 4.2, 18, 4.3),
    "T9": _dims(21.0, 33, 28.5, 5.0, 17, 15, 3.8, 9, 4.0, 36, 48, 4.5, 17, 4.3),
    "T10": _dims(22.0, 35, 29.5, 5.3, 17, 15, 4.0, 9.5, 4.1, 34, 38, 5.0, 15, 4.2),
    "T11": _dims(23.0, 38, 30.5, 5.5, 18, 16, 4.4, 9.5, 4.2, 32, 25, 6.0, 10, 4.0),
    "T12": _dims(24.0, 40, 31.5, 7.5, 20, 16, 4.8, 9.5, 4.4, 31, 15, 7.5, 8, 4.0),
    "L1": _dims(25.5, 42, 33.0, 8.5, 22, 17, 4.8, 10, 4.6, 30, 10, 9.0, 16, 3.4),
    "L2": _dims(26.5, 44, 34.0, 9.5, 22, 16, 5.0, 10, 4.8, 31, 8, 9.5, 20, 3.5),
    "L3": _dims(27.0, 46, 35.0, 10.5, 23, 16, 5.2, 10, 5.0, 31, 6, 9.5, 25, 3.6),
    "L4": _dims(27.0, 48, 35.0, 11.0, 24, 16, 5.6, 10, 5.0, 30, 5, 9.0, 22, 3.8),
    "L5": _dims(26.5, 50, 35.0, 9.0, 25, 16, 6.2, 9, 5.0, 26, 0, 8.0, 18, 5.0),
    "S1": _dims(26.0, 48, 32.0, -1.5, 26, 12, 6.0, 8, 4.5, 14, -10, 6.0, 0, 0),
    "S2": _dims(22.0, 34, 24.0, -1.5, 22, 9, 0, 0, 4, 10, -10, 5.0, 0, 0),
    "S3": _dims(18.0, 26, 18.0, -1.5, 18, 7, 0, 0, 3.5, 8, -10, 4.0, 0, 0),
    "S4": _dims(15.0, 20, 14.0, -1.5, 14, 6, 0, 0, 3, 6, -10, 3.0, 0, 0),
    "S5": _dims(12.0, 14, 10.0, 2.0, 10, 4, 0, 0, 2.5, 0, 0, 0, 0, 0),
}
NOMINAL["T13"] = NOMINAL["T12"]
NOMINAL["L6"] = NOMINAL["L5"]


def level_names(variant: str) -> list[str]:
    """Level names from C1 down to S5 for an anatomical variant."""
    names = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)]
    if variant == "T13":
        names.append("T13")
    names += [f"L{i}" for i in range(1, 6)]
    if variant in ("L6", "lumbarised_S1"):
        names.append("L6")
    sacral = [f"S{i}" for i in range(1, 6)]
    if variant == "lumbarised_S1":
        sacral = sacral[:4]  # the first sacral segment became L6
    return names + sacral


def level_index(name: str, variant: str) -> int:
    """Position of a level in :func:`level_names` (S5 maps to the last sacral segment)."""
    names = level_names(variant)
    if name in names:
        return names.index(name)
    if name.startswith("S"):
        return len(names) - 1
    raise ValueError(f"level {name} does not exist in variant {variant}")


@dataclass
class Level:
    """One vertebra (or sacral segment) placed in the world."""

    name: str
    label: int
    dims: LevelDims
    centre: F64  # LPS mm, centre of the vertebral body
    rot: F64  # columns: local left, posterior, superior in LPS

    def to_world(self, local: npt.ArrayLike) -> F64:
        return self.centre + self.rot @ np.asarray(local, dtype=np.float64)


@dataclass
class SpineLayout:
    """Where every level sits, plus the centre line, in world LPS mm."""

    levels: list[Level]
    curve: F64  # (m, 3) centre-line samples from above C1 to below the coccyx
    curve_s: F64  # arc length of the samples (mm, increasing caudally)
    body_roll: float  # radians, about the world z axis through ``roll_pivot``
    roll_pivot: F64  # (2,) x, y
    trunk: F64  # rows (z, cx, cy, a, b): the skin contour before the roll
    names: list[str] = field(default_factory=list)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def level(self, name: str) -> Level:
        return self.levels[self.names.index(name)]

    def z_at_level(self, level: float) -> float:
        """World z of a level coordinate (0 = C1 centre; extrapolated beyond both ends)."""
        z = np.array([lv.centre[2] for lv in self.levels])
        n = len(z)
        if level <= 0:
            return float(z[0] + (z[0] - z[1]) * -level)
        if level >= n - 1:
            return float(z[-1] + (z[-1] - z[-2]) * (level - n + 1))
        lo = int(np.floor(level))
        f = level - lo
        return float(z[lo] * (1 - f) + z[lo + 1] * f)

    def spine_xy(self, z: npt.ArrayLike) -> tuple[F64, F64]:
        """Centre-line x, y at heights z (the curve is monotonic in z above the sacrum)."""
        zc = self.curve[:, 2]
        order = np.argsort(zc)
        zz = np.asarray(z, dtype=np.float64)
        return np.interp(zz, zc[order], self.curve[order, 0]), np.interp(zz, zc[order], self.curve[order, 1])

    def body_centre_xy(self, z: float) -> tuple[float, float]:
        """Centre of the skin contour at height z (after the body roll)."""
        tz, cx, cy, _, _ = self.trunk.T
        x = float(np.interp(z, tz, cx))
        y = float(np.interp(z, tz, cy))
        p = rotation_z(self.body_roll)[:2, :2] @ (np.array([x, y]) - self.roll_pivot) + self.roll_pivot
        return float(p[0]), float(p[1])

    def roll_point(self, p: npt.ArrayLike) -> F64:
        """World position of a point given in the un-rolled body frame."""
        q = np.asarray(p, dtype=np.float64).copy()
        q[..., :2] = (q[..., :2] - self.roll_pivot) @ rotation_z(self.body_roll)[:2, :2].T + self.roll_pivot
        return q

    def unroll_point(self, p: npt.ArrayLike) -> F64:
        """Inverse of :meth:`roll_point`."""
        q = np.asarray(p, dtype=np.float64).copy()
        q[..., :2] = (q[..., :2] - self.roll_pivot) @ rotation_z(-self.body_roll)[:2, :2].T + self.roll_pivot
        return q


def _level_dims(spec: AnatomySpec, names: list[str], rng: np.random.Generator) -> list[LevelDims]:
    """Nominal sizes scaled for this patient, with small per-level jitter, degeneration and fractures."""
    out = []
    narrow_rng = rng.uniform(size=len(names))
    for n, name in enumerate(names):
        d = NOMINAL[name]
        s = spec.vertebra_scale * float(rng.normal(1.0, 0.025))
        h_scale = s * float(rng.normal(1.0, 0.03))
        disc = d.disc * spec.vertebra_scale * float(rng.normal(1.0, 0.08))
        if d.disc > 0 and name[0] in "CTL" and name != "C1":  # C1-C2 is a synovial joint, no disc
            # Degenerative disc narrowing, most often low lumbar and low cervical.
            prone = 1.0 if name in ("L4", "L5", "L6", "C5", "C6") else 0.45
            if narrow_rng[n] < spec.degeneration * prone:
                disc *= float(rng.uniform(0.55, 0.8) if name[0] == "C" else rng.uniform(0.4, 0.75))
        if spec.variant == "sacralised_L5" and name == "L5":
            disc *= 0.4
        out.append(
            LevelDims(
                height=d.height * h_scale,
                width=d.width * s * spec.body_breadth,
                depth=d.depth * s * float(np.sqrt(spec.body_breadth)),
                disc=disc,
                canal_width=d.canal_width * s,
                canal_depth=d.canal_depth * s,
                pedicle_radius=d.pedicle_radius * s,
                pedicle_length=d.pedicle_length * s,
                lamina_thickness=d.lamina_thickness * s,
                spinous_length=d.spinous_length * s * float(rng.normal(1.0, 0.06)),
                spinous_angle=d.spinous_angle + float(rng.normal(0, 4)),
                spinous_half_height=d.spinous_half_height * s,
                transverse_length=d.transverse_length * s * float(rng.normal(1.0, 0.06)),
                transverse_radius=d.transverse_radius * s,
            )
        )
    return out


def _angle_profile(spec: AnatomySpec, names: list[str], s_centres: F64) -> tuple[F64, F64]:
    """Sagittal tangent angle (deg, + = descending posteriorly) at landmark arc lengths."""
    idx = {n: i for i, n in enumerate(names)}
    last_lumbar = "L6" if "L6" in idx else "L5"
    last_thoracic = "T13" if "T13" in idx else "T12"
    a_s1 = spec.sacral_slope
    a_l1 = a_s1 - spec.lumbar_lordosis
    a_t12 = a_l1
    a_t1 = a_t12 + spec.thoracic_kyphosis
    a_c2 = a_t1 - spec.cervical_lordosis
    sacral_curve = 70.0 + 0.3 * (spec.sacral_slope - 40)
    first_sacral = names[idx[last_lumbar] + 1]
    pts = [
        (s_centres[0] - 40.0, a_c2),
        (s_centres[idx["C2"]], a_c2),
        (s_centres[idx["T1"]], a_t1),
        (s_centres[idx[last_thoracic]], a_t12),
        (s_centres[idx["L1"]], a_l1),
        (0.5 * (s_centres[idx[last_lumbar]] + s_centres[idx[first_sacral]]), a_s1),
        (s_centres[-1], a_s1 - sacral_curve),
        (s_centres[-1] + 60.0, a_s1 - sacral_curve - 15),
    ]
    s_pts = np.array([p[0] for p in pts])
    a_pts = np.array([p[1] for p in pts]) + spec.pelvic_tilt
    return s_pts, a_pts


def _trunk_table(spec: AnatomySpec, layout_levels: list[Level], curve: F64) -> F64:
    """Skin contour rows (z, cx, cy, a, b) along the body, before the roll.

    Half-widths: head ~75 mm, neck ~55, shoulders ~180, chest ~150, waist ~145, hips ~175 (adult means),
    scaled by body size; fat adds to both axes.
    """
    by = {lv.name: lv for lv in layout_levels}
    fat = 12.0 * spec.adiposity
    bs = spec.body_scale
    last_l = "L6" if "L6" in by else "L5"
    last_t = "T13" if "T13" in by else "T12"
    rows: list[tuple[float, float, float, float, float]] = []

    def add(z: float, a: float, b: float, post: float, lv: Level) -> None:
        # ``post``: skin distance behind the body centre of the nearest vertebra.
        cy = lv.centre[1] + post - b
        rows.append((z, lv.centre[0] * 0.6, cy, a, b))

    c1, c4, c7 = by["C1"], by["C4"], by["C7"]
    t1, t4, t8, t12 = by["T1"], by["T4"], by["T8"], by[last_t]
    l3, l5, s1 = by["L3"], by[last_l], by[layout_levels[-5].name if len(layout_levels) > 5 else "S1"]
    s_last = layout_levels[-1]
    shoulder = 1.0 if not spec.arms_up else 0.92
    add(c1.centre[2] + 150, 20 * bs, 20 * bs, 20, c1)
    add(c1.centre[2] + 120, 70 * bs, 82 * bs, 75, c1)
    add(c1.centre[2] + 40, 76 * bs, 95 * bs, 75, c1)
    add(c1.centre[2] + 5, 65 * bs + 0.3 * fat, 80 * bs, 64, c1)
    add(c4.centre[2], 55 * bs + 0.6 * fat, 60 * bs + 0.6 * fat, 62 + 0.6 * fat, c4)
    add(c7.centre[2] + 12, 75 * bs + 0.8 * fat, 64 * bs + 0.8 * fat, 70 + 0.8 * fat, c7)
    # The shoulders (acromion level) sit between C7 and T1: full width already there.
    add(0.4 * c7.centre[2] + 0.6 * t1.centre[2] + 4, 150 * bs * shoulder + fat, 80 * bs + fat, 76 + fat, t1)
    add(t1.centre[2], 160 * bs * shoulder + fat, 88 * bs + fat, 80 + fat, t1)
    add(t4.centre[2], 165 * bs * shoulder + fat, 105 * bs + fat, 85 + fat, t4)
    add(t8.centre[2], 155 * bs + fat, 118 * bs + fat, 85 + fat, t8)
    add(t12.centre[2], 150 * bs + 1.3 * fat, 118 * bs + 1.6 * fat, 90 + fat, t12)
    add(l3.centre[2], 148 * bs + 1.6 * fat, 112 * bs + 2.2 * fat, 92 + 1.2 * fat, l3)
    add(l5.centre[2], 162 * bs + 1.6 * fat, 112 * bs + 2.0 * fat, 95 + 1.2 * fat, l5)
    add(s1.centre[2] - 20, 178 * bs + 1.5 * fat, 112 * bs + 1.5 * fat, 105 + fat, l5)
    add(s_last.centre[2] - 40, 180 * bs + 1.5 * fat, 110 * bs + 1.2 * fat, 100 + fat, l5)
    add(s_last.centre[2] - 160, 170 * bs + 1.5 * fat, 100 * bs + 1.2 * fat, 95 + fat, l5)
    add(s_last.centre[2] - 260, 160 * bs + fat, 90 * bs + fat, 90 + fat, l5)
    tab = np.array(rows)
    return tab[np.argsort(tab[:, 0])]


def level_positions(spec: AnatomySpec) -> SpineLayout:
    """Place every level: integrate the curvature profile, add scoliosis, roll the body. Cheap (no voxels)."""
    rng = stream(spec.seed, STREAM_ANATOMY + 100)
    names = level_names(spec.variant)
    dims = _level_dims(spec, names, rng)
    # Arc length of each body centre, walking down from C1.
    s_centres = np.zeros(len(names))
    for n in range(1, len(names)):
        s_centres[n] = s_centres[n - 1] + dims[n - 1].height / 2 + dims[n - 1].disc + dims[n].height / 2
    s_pts, a_pts = _angle_profile(spec, names, s_centres)
    ds = 0.5
    s = np.arange(s_centres[0] - 80.0, s_centres[-1] + 80.0, ds)

    def integrate(offset_deg: float) -> tuple[F64, F64]:
        alpha = np.radians(np.interp(s, s_pts, a_pts) + offset_deg)
        # Tangent pointing caudally: down (-z), posterior (+y) by alpha.
        return np.cumsum(np.sin(alpha)) * ds, np.cumsum(-np.cos(alpha)) * ds

    # Supine on the table, the thoracic apex and the sacrum both touch it: make the T7-S2 chord vertical
    # (the spec's pelvic tilt then rotates the whole spine a few degrees).
    y, z = integrate(0.0)
    k7 = int(np.searchsorted(s, s_centres[names.index("T7")]))
    k_s2 = int(np.searchsorted(s, s_centres[names.index(next(n for n in names if n.startswith("S"))) + 1]))
    chord = np.degrees(np.arctan2(y[k_s2] - y[k7], z[k7] - z[k_s2]))
    y, z = integrate(-chord)
    # Scoliosis: lateral deviation bumps centred at level coordinates.
    x = np.zeros_like(s)
    level_of_s = np.interp(s, s_centres, np.arange(len(names)), left=-1e9, right=1e9)
    lev = np.clip(level_of_s, -3, len(names) + 3)
    for amp, centre, half in spec.scoliosis:
        x += amp * np.exp(-(((lev - centre) / half) ** 2))
    curve = np.stack([x, y, z], axis=1)
    # Body placement: C1 near the origin, then a table position and small offsets.
    place = stream(spec.seed, STREAM_ANATOMY + 200)
    shift = np.array([place.normal(0, 8), 0.0, place.uniform(-300, 500)])
    curve = curve - np.interp(s_centres[0], s, curve[:, 0] * 0 + 1) * 0  # keep dtype
    c1_at = np.array([np.interp(s_centres[0], s, curve[:, k]) for k in range(3)])
    curve = curve - c1_at + shift
    # Posterior position: the lumbar spine lies ~60-90 mm behind the isocentre of a supine patient.
    l1_y = float(np.interp(s_centres[names.index("L1")], s, curve[:, 1]))
    curve[:, 1] += (70.0 + 25.0 * (spec.body_scale - 1.0) + place.normal(0, 8)) - l1_y
    tangent = np.gradient(curve, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)

    # Axial rotation follows the lateral deviation (vertebrae rotate toward the convexity in scoliosis).
    rot_deg = -0.45 * x
    roll = np.radians(spec.body_roll)
    levels: list[Level] = []
    for n, name in enumerate(names):
        k = int(np.clip(np.searchsorted(s, s_centres[n]), 0, len(s) - 1))
        centre = curve[k]
        frame = frame_from(-tangent[k], np.array([0.0, 1.0, 0.0]))
        frame = frame @ rotation_z(np.radians(rot_deg[k] + rng.normal(0, 1.5)))
        levels.append(Level(name, LABEL_OF[name], dims[n], centre.copy(), frame))
    trunk = _trunk_table(spec, levels, curve)
    pivot = np.array([float(np.mean(trunk[:, 1])), float(np.mean(trunk[:, 2]))])
    # Roll the patient about the long axis: every point and frame rotates about the pivot.
    rz = rotation_z(roll)
    for lv in levels:
        lv.centre[:2] = rz[:2, :2] @ (lv.centre[:2] - pivot) + pivot
        lv.rot = rz @ lv.rot
    curve[:, :2] = (curve[:, :2] - pivot) @ rz[:2, :2].T + pivot
    return SpineLayout(levels, curve, s, roll, pivot, trunk, names)


# ----------------------------------------------------------------------------------- bones
@dataclass
class Structure:
    """A solid painted into the image: a union of primitives with a cortical shell and a marrow fill."""

    name: str
    prims: list[Primitive]
    cortex_hu: float
    marrow_hu: float
    cortex_mm: float = 0.0
    label: int = 0
    blend: float = 0.0  # smooth-union fillet radius (mm)


def _rbox(
    lv: Level, centre_local: npt.ArrayLike, local_rot: F64, half: npt.ArrayLike, radius: float
) -> RoundBox:
    return RoundBox(lv.to_world(centre_local), lv.rot @ local_rot, half, radius)


def _rot_x(deg: float) -> F64:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def _rot_y(deg: float) -> F64:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def _rot_z(deg: float) -> F64:
    return rotation_z(np.radians(deg))


def _segment_box(
    lv: Level,
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    half_thick: float,
    half_height: float,
    roll_deg: float = 0.0,
) -> RoundBox:
    """A plate from local point a to b, ``half_thick`` across and ``half_height`` up (local frame)."""
    pa, pb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    along = pb - pa
    length = float(np.linalg.norm(along))
    ex = along / max(length, 1e-6)
    up = np.array([0.0, 0.0, 1.0])
    if abs(float(ex @ up)) > 0.95:
        up = np.array([0.0, 1.0, 0.0])
    ez = up - ex * float(ex @ up)
    ez /= np.linalg.norm(ez)
    ey = np.cross(ez, ex)
    local_rot = np.stack([ex, ey, ez], axis=1) @ _rot_x(roll_deg)
    half = np.array([length / 2 + half_thick, half_thick, half_height])
    return _rbox(lv, (pa + pb) / 2, local_rot, half, min(half_thick, half_height) * 0.9)


def _body(lv: Level, spec: AnatomySpec, rng: np.random.Generator, fracture: bool) -> VertebralBody:
    d = lv.dims
    cav = 0.06 * d.height + 0.3
    wedge = 0.0
    collapse = 0.0
    if fracture:
        if rng.uniform() < 0.6:
            wedge = d.height * float(rng.uniform(0.2, 0.45))
        else:
            collapse = d.height * float(rng.uniform(0.1, 0.22))
    elif lv.name.startswith("T") and lv.name not in ("T1", "T2"):
        wedge = d.height * 0.06  # mild physiological thoracic wedging
    return VertebralBody(
        lv.centre,
        lv.rot,
        BodyShape(
            half_width=d.width / 2,
            half_depth=d.depth / 2,
            height=d.height,
            endplate_cavity=cav,
            posterior_concavity=0.07 * d.depth if lv.name[0] == "L" else 0.035 * d.depth,
            waist=0.07,
            anterior_wedge=wedge,
            central_collapse=collapse,
        ),
    )


def _osteophytes(lv: Level, rng: np.random.Generator, amount: float) -> list[Primitive]:
    """Marginal osteophytes: bony lips at the anterior and lateral endplate rims."""
    d = lv.dims
    out: list[Primitive] = []
    a, b = d.width / 2, d.depth / 2
    for side_z in (1.0, -1.0):
        for _ in range(int(rng.integers(1, 4))):
            ang = float(rng.uniform(-np.pi * 0.95, -np.pi * 0.05))  # anterior half
            size = amount * float(rng.uniform(1.5, 4.5))
            rim = np.array([a * np.cos(ang) * 1.02, b * np.sin(ang) * 1.02, side_z * (d.height / 2 - 0.5)])
            tip = rim + np.array([np.cos(ang) * size * 0.8, np.sin(ang) * size * 0.8, side_z * size])
            out.append(Capsule(lv.to_world(rim), lv.to_world(tip), 1.8 + 0.3 * size, 0.8))
    return out


def _uncinate(lv: Level) -> list[Primitive]:
    """Uncinate processes: lips rising from the posterolateral rims of the C3-T1 upper endplates."""
    d = lv.dims
    out: list[Primitive] = []
    for s in (-1.0, 1.0):
        base = np.array([s * d.width / 2 * 0.86, d.depth * 0.08, d.height / 2 - 1.0])
        out.append(
            Capsule(
                lv.to_world(base + [0, -d.depth * 0.25, 0]), lv.to_world(base + [0, d.depth * 0.25, 0]), 2.2
            )
        )
        out.append(Capsule(lv.to_world(base), lv.to_world(base + [s * -0.5, 0, 3.5]), 2.0, 1.4))
    return out


def _posterior_generic(
    lv: Level, rng: np.random.Generator, sacralised: bool = False, bulk: float = 1.0
) -> list[Primitive]:
    """Pedicles, laminae, articular and transverse processes, spinous process of C3-L6.

    ``bulk`` scales the thickness of the laminae and the size of the thoracic and lumbar articular
    pillars (superior and inferior articular processes joined by the pars interarticularis)."""
    d = lv.dims
    kind = lv.name[0]
    b = d.depth / 2
    a = d.width / 2
    pr, pl, lt = d.pedicle_radius, d.pedicle_length, d.lamina_thickness
    px = d.canal_width / 2 + pr * 0.9
    zp = 0.18 * d.height if kind != "C" else 0.0
    prims: list[Primitive] = []
    root = np.array([0.0, b + d.canal_depth + lt * 0.5, zp - 0.12 * d.height])
    for s in (-1.0, 1.0):
        j = np.array([s * px, b + pl, zp])
        # Pedicle: an oval strut (taller than wide) from the posterior body wall.
        for dz in (-0.45 * pr, 0.45 * pr):
            prims.append(
                Capsule(
                    lv.to_world([s * px * 0.86, b - 3.0, zp + dz]),
                    lv.to_world([s * px, b + pl, zp + dz]),
                    pr * 0.78,
                )
            )
        # Lamina: a plate from the pedicle root to the midline, sloping caudally (shingled). Real laminae
        # are tall, thick plates (lumbar ~20-25 mm high, 5-7 mm thick; thoracic ~0.75 of the body height)
        # that overlap the next level like roof tiles; thin struts read as a different arch.
        lam_h = {"C": 0.5, "T": 0.75, "L": 0.8}[kind] * d.height
        lam_t = lt * (0.4 if kind == "C" else 0.55 * bulk)
        prims.append(_segment_box(lv, j + [0, 0, -0.1 * d.height], root, lam_t, lam_h / 2, roll_deg=-18))
        gap = d.disc
        if kind == "C":
            # Articular pillar (lateral mass), inclined ~35 degrees, meeting the next pillar at the facet.
            pillar_c = np.array([s * (px + 2.5), b + 4.0, 0.0])
            half = np.array([3.6, 4.0, (d.height + gap) / 2 - 0.9])
            prims.append(_rbox(lv, pillar_c, _rot_x(-32), half, 3.0))
            # Transverse process: anterior and posterior bars around the foramen transversarium.
            tip = np.array([s * (a + d.transverse_length * 0.55), b * 0.05, -1.0])
            prims.append(
                Capsule(
                    lv.to_world([s * a * 0.8, -b * 0.3, 0.5]), lv.to_world(tip), d.transverse_radius * 0.9
                )
            )
            prims.append(
                Capsule(lv.to_world(pillar_c + [0, -2, -1]), lv.to_world(tip), d.transverse_radius * 0.9)
            )
            prims.append(
                Ellipsoid(lv.to_world(tip + [s * 1.5, 0, -1]), lv.rot, [d.transverse_radius * 1.4, 3.5, 3.0])
            )
        else:
            # Superior articular process (lateral, up) and inferior one (medial, down): facet joints.
            # Real articular processes are chunky (thoracic ~10 mm tall and 5-6 mm thick, lumbar ~15 mm
            # tall, 10-12 mm deep) and the pars interarticularis joins them into one articular pillar
            # per side, a continuous column of bone in parasagittal views.
            if kind == "T":
                sup_c = np.array([s * px, b + pl * 0.75, d.height / 2 + gap * 0.25])
                sup = _rbox(lv, sup_c, _rot_x(20), np.multiply([3.8, 2.0, 5.2], bulk), 1.5)
                inf_c = np.array([s * px * 0.95, b + pl + 3.0, -d.height / 2 + 1.0])
                inf = _rbox(lv, inf_c, _rot_x(20), np.multiply([3.8, 2.0, 5.7], bulk), 1.5)
                pars_r = 2.2 * bulk
            else:
                sup_c = np.array([s * (px + 3.0), b + pl * 0.9, d.height / 2 - 1.0 + gap * 0.35])
                sup = _rbox(lv, sup_c, _rot_z(-s * 25), np.multiply([2.4, 5.5, 7.5], bulk), 2.0)
                inf_c = np.array([s * (px - 5.0), b + pl + 4.5, -d.height / 2 + 1.0 - gap * 0.2])
                inf = _rbox(lv, inf_c, _rot_z(-s * 25), np.multiply([2.4, 5.0, 7.5], bulk), 2.0)
                pars_r = 2.4 * bulk
            pars = Capsule(lv.to_world(sup_c + [0, 0, -2.0]), lv.to_world(inf_c + [0, 0, 2.0]), pars_r)
            prims += [sup, inf, pars]
            # Transverse process.
            if kind == "T":
                # Upper thoracic transverse processes point more laterally than the lower ones.
                upper = lv.name in ("T1", "T2", "T3")
                direction = np.array([s * 0.93, 0.3, 0.15]) if upper else np.array([s * 0.8, 0.55, 0.18])
            else:
                direction = np.array([s * 0.97, 0.15, 0.0])
            direction /= np.linalg.norm(direction)
            start = j + np.array([0.0, -1.0, 1.5])
            length = d.transverse_length + (0.0 if kind == "T" else 3.0)
            if sacralised:
                length *= 1.5
            tip = start + direction * length
            r = d.transverse_radius
            if kind == "L":
                prims.append(_segment_box(lv, start, tip, r * 0.6, r * 1.4 if not sacralised else r * 3.0))
            else:
                prims.append(Capsule(lv.to_world(start), lv.to_world(tip), r * 0.8, r * 0.7))
                prims.append(Ellipsoid(lv.to_world(tip), lv.rot, [r * 0.95, r * 0.95, r * 1.1]))
    # Spinous process: from the laminar junction, caudally inclined.
    ang = np.radians(d.spinous_angle)
    sp_dir = np.array([0.0, np.cos(ang), -np.sin(ang)])
    tip = root + sp_dir * d.spinous_length
    # Spinous processes are thick, tall plates: lumbar ~25-30 mm high and 6-10 mm thick, lower thoracic
    # ~15-20 mm high (the nominal table holds the cervical and mid-thoracic heights).
    half_w = {"C": 1.6, "T": 2.8, "L": 3.8}[kind]
    sp_half_h = d.spinous_half_height * {"C": 1.0, "T": 1.3, "L": 1.45}[kind]
    prims.append(_segment_box(lv, root, tip, half_w, sp_half_h))
    if kind == "C" and lv.name != "C7":
        for s in (-1.0, 1.0):  # bifid tip
            prims.append(Ellipsoid(lv.to_world(tip + [s * 3.0, 0.5, 0]), lv.rot, [2.0, 2.4, 2.6]))
    else:
        prims.append(Ellipsoid(lv.to_world(tip), lv.rot, [half_w * 1.3, 3.5, sp_half_h * 1.1]))
    return prims


def _atlas(lv: Level, c2: Level) -> list[Primitive]:
    """C1: anterior arch, lateral masses, posterior arch and long transverse processes; no body."""
    s_ = lv.dims.canal_width / 26.0
    # The dens axis is the level centre; the ring wraps around it and the canal behind it.
    ring_half = [
        (0.0, -11.0),
        (7.5, -10.5),
        (13.0, -6.5),
        (17.0, 2.0),
        (17.5, 10.0),
        (14.0, 21.0),
        (8.0, 28.5),
        (0.0, 31.0),
    ]
    pts = [(x * s_, y * s_) for x, y in ring_half]
    full = [(-x, y) for x, y in reversed(pts[1:])] + pts
    ring = np.array([[x, y, 0.0] for x, y in full])
    ring[:, 2] = np.where(np.abs(ring[:, 0]) > 12 * s_, 0.0, 1.0)  # arches slightly higher than masses
    prims: list[Primitive] = polyline_capsules([lv.to_world(p) for p in ring], 3.6 * s_)
    for s in (-1.0, 1.0):
        mass = np.array([s * 15.5 * s_, 2.5 * s_, 0.0])
        prims.append(Ellipsoid(lv.to_world(mass), lv.rot @ _rot_z(s * 20), [6.5 * s_, 9.0 * s_, 7.0 * s_]))
        tip = np.array([s * 37.0 * s_, 3.0 * s_, -1.0])
        prims.append(Capsule(lv.to_world(mass), lv.to_world(tip), 4.0 * s_, 3.2 * s_))
        prims.append(Ellipsoid(lv.to_world(tip), lv.rot, [4.0 * s_, 4.5 * s_, 5.0 * s_]))
    prims.append(Ellipsoid(lv.to_world([0, -11.5 * s_, 0.5]), lv.rot, [5.0, 3.5, 5.0]))  # anterior tubercle
    prims.append(Ellipsoid(lv.to_world([0, 31.5 * s_, -1.0]), lv.rot, [5.5, 3.5, 5.0]))  # posterior tubercle
    return prims


def _axis(lv: Level, c1: Level, rng: np.random.Generator) -> list[Primitive]:
    """C2: body, dens up into the atlas ring, big laminae and a large bifid spinous process."""
    d = lv.dims
    prims: list[Primitive] = []
    top = lv.to_world([0, -1.0, d.height / 2 - 1.0])
    dens_tip = c1.to_world([0, -1.0, 6.0])
    prims.append(Capsule(top, dens_tip, 5.2 * d.width / 17, 3.8 * d.width / 17))
    prims += _posterior_generic(lv, rng)
    for s in (-1.0, 1.0):
        # Superior articular surfaces under the atlas lateral masses.
        prims.append(_rbox(lv, [s * 12.0, 1.0, d.height / 2 - 1.5], _rot_z(s * 15), [6.0, 7.5, 3.5], 2.5))
    return prims


def _sacrum(spec: AnatomySpec, layout: SpineLayout, rng: np.random.Generator) -> list[Primitive]:
    """Fused sacral segments, alae, dorsal plate with the median crest, and superior articular processes."""
    sac = [lv for lv in layout.levels if lv.name.startswith("S")]
    prims: list[Primitive] = []
    for n, lv in enumerate(sac):
        d = lv.dims
        body = BodyShape(
            d.width / 2,
            d.depth / 2,
            d.height + 3.0,
            endplate_cavity=0.5 if n else 1.5,
            posterior_concavity=0.05 * d.depth,
            waist=0.05,
        )
        prims.append(VertebralBody(lv.centre, lv.rot, body))
        b = d.depth / 2
        # Dorsal wall behind the sacral canal.
        # Ellipsoids overlap from segment to segment, so the fused sacrum has no steps.
        prims.append(
            Ellipsoid(
                lv.to_world([0, b + d.canal_depth + d.lamina_thickness / 2, -1.0]),
                lv.rot,
                [d.width * 0.4 + 3, d.lamina_thickness / 2 + 1.0, d.height / 2 + 5.0],
            )
        )
        for s in (-1.0, 1.0):
            prims.append(
                Ellipsoid(
                    lv.to_world([s * (d.canal_width / 2 + 2.5), b + d.canal_depth / 2, 0]),
                    lv.rot,
                    [3.5, d.canal_depth / 2 + 3, d.height / 2 + 4.0],
                )
            )
        if d.spinous_length > 0:
            root = np.array([0, b + d.canal_depth + d.lamina_thickness, 0])
            prims.append(
                _segment_box(lv, root, root + [0, d.spinous_length * 0.5, -3], 2.5, d.spinous_half_height)
            )
    # Alae and lateral masses (auricular surfaces) of S1-S3.
    ala_scale = 1.0 if spec.variant != "lumbarised_S1" else 0.85
    for n, lv in enumerate(sac[:3]):
        d = lv.dims
        w = (26.0, 22.0, 14.0)[n] * spec.vertebra_scale * ala_scale
        hz = (16.0, 13.0, 10.0)[n] * spec.vertebra_scale
        hy = (16.0, 14.0, 11.0)[n] * spec.vertebra_scale
        for s in (-1.0, 1.0):
            centre = lv.to_world([s * (d.width / 2 + w / 2 - 6), 3.0 + n * 2.0, -2.0 * n])
            prims.append(Ellipsoid(centre, lv.rot @ _rot_z(-s * 12), [w / 2 + 9, hy + 2, hz + 4]))
    s1 = sac[0]
    d = s1.dims
    for s in (-1.0, 1.0):
        sup_c = np.array([s * (d.canal_width / 2 + 7.0), d.depth / 2 + 9.0, d.height / 2 + 4.0])
        prims.append(_rbox(s1, sup_c, _rot_z(-s * 35), [3.5, 7.0, 8.0], 2.5))
    return prims


def _coccyx(layout: SpineLayout) -> list[Primitive]:
    s_last = layout.levels[-1]
    pts = [s_last.to_world([0, 0, -s_last.dims.height / 2 - 3 - 9 * n]) for n in range(4)]
    return polyline_capsules(pts, [5.5, 4.5, 3.5, 2.5])


def _ilium_and_hips(spec: AnatomySpec, layout: SpineLayout, rng: np.random.Generator) -> list[Structure]:
    """Iliac wings (curved plates with a thick crest), acetabula, femoral heads and necks, pubis, ischium."""
    sac = [lv for lv in layout.levels if lv.name.startswith("S")]
    s1 = sac[0]
    last_l = layout.levels[layout.names.index(sac[0].name) - 1]
    bs = spec.body_scale
    s1c = layout.unroll_point(s1.centre)
    y0 = s1c[1]
    z_crest = 0.5 * (last_l.centre[2] + s1.centre[2]) + 10.0 + float(rng.normal(0, 6))
    z_low = sac[min(3, len(sac) - 1)].centre[2] - 5.0
    cortex, marrow = spec.cortical_hu * 0.95, spec.cancellous_hu * 0.85 + 20
    out: list[Structure] = []
    for s in (-1.0, 1.0):
        cx = s1c[0] + s * 40.0 * bs
        cy = y0 - 35.0 * bs
        ax, ay = 80.0 * bs, 52.0 * bs
        table = [
            (z_low - 25.0, cx + s * 10, cy - 15.0, ax * 0.55, ay * 0.6),
            (z_low, cx + s * 4, cy - 5.0, ax * 0.75, ay * 0.78),
            (z_crest - 25.0, cx, cy, ax, ay),
            (z_crest, cx, cy, ax * 0.98, ay * 0.98),
        ]
        table = [table[0], *table, table[-1]]
        table[0] = (table[0][0] - 30.0, *table[0][1:])
        table[-1] = (table[-1][0] + 30.0, *table[-1][1:])
        loft = Loft(table, roll=layout.body_roll, pivot=tuple(layout.roll_pivot))
        centre_pt = layout.roll_point(np.array([cx, cy, z_crest]))
        below_top = HalfSpace([0.0, 0.0, z_crest], [0.0, 0.0, 1.0])
        above_bottom = HalfSpace([0.0, 0.0, z_low - 25.0], [0.0, 0.0, -1.0])
        # Keep the arc of the ellipse from phi = 15 deg (posteromedial, at the sacroiliac joint) to
        # phi = 128 deg (anterior superior iliac spine); phi = 0 points posteriorly, 90 laterally.
        rz = rotation_z(layout.body_roll)
        ray0 = np.array([s * np.sin(np.radians(15.0)), np.cos(np.radians(15.0)), 0.0])
        ray1 = np.array([s * np.sin(np.radians(128.0)), np.cos(np.radians(128.0)), 0.0])
        n0 = -s * np.array([ray0[1], -ray0[0], 0.0])  # normal pointing to the excluded (medial) side
        n1 = s * np.array([ray1[1], -ray1[0], 0.0])
        keep_lateral = HalfSpace(centre_pt, rz @ n0)
        keep_posterior = HalfSpace(centre_pt, rz @ n1)
        wing = Intersection(Shell(loft, 5.5), keep_lateral, keep_posterior, below_top, above_bottom)
        prims: list[Primitive] = [wing]
        # Iliac crest: a thick rim along the top of the wing.
        phis = np.radians(np.linspace(15, 125, 12))
        crest = [
            layout.roll_point(
                np.array(
                    [
                        cx + s * ax * np.sin(p),
                        cy + ay * np.cos(p),
                        z_crest - 6.0 - 10.0 * ((p - 0.9) / 1.6) ** 2,
                    ]
                )
            )
            for p in phis
        ]
        prims += polyline_capsules(crest, 5.5)
        # Posterior ilium (tuberosity) beside the sacroiliac joint.
        si = layout.roll_point(np.array([s1c[0] + s * 62.0 * bs, y0 + 8.0, s1c[2] - 10]))
        prims.append(Ellipsoid(si, np.eye(3), [9.0, 16.0, 28.0]))
        # Acetabulum and hip.
        head = layout.roll_point(np.array([s1c[0] + s * 92.0 * bs, y0 - 78.0 * bs, z_low - 38.0]))
        body_il = layout.roll_point(np.array([s1c[0] + s * 80.0 * bs, y0 - 55.0 * bs, z_low - 5]))
        prims.append(Capsule(body_il, head + np.array([0, 0, 14.0]), 16.0, 14.0))
        cup = Intersection(
            Shell(Ellipsoid(head, np.eye(3), [27.0, 27.0, 27.0]), 6.0),
            HalfSpace(head + np.array([-s * 8.0, 0, 0]), [-s, 0, -0.3]),
        )
        prims.append(cup)
        pubis = layout.roll_point(np.array([s1c[0] + s * 12.0, y0 - 140.0 * bs, z_low - 60.0]))
        prims += polyline_capsules([head + np.array([-s * 20.0, -12.0, -5.0]), pubis], [9.0, 8.0])
        prims.append(RoundBox(pubis + np.array([0, 0, -10.0]), np.eye(3), [6.0, 9.0, 18.0], 4.0))
        isch = head + np.array([-s * 30.0, 35.0, -50.0])
        prims += polyline_capsules(
            [head + np.array([-s * 12.0, 18.0, -10.0]), isch, pubis + [0, 0, -28.0]], [12.0, 11.0, 6.0]
        )
        out.append(Structure(f"ilium_{'L' if s > 0 else 'R'}", prims, cortex, marrow, 2.0, 0, blend=4.0))
        femur = [
            Ellipsoid(head, np.eye(3), [23.0, 23.0, 23.0]),
            Capsule(head, head + np.array([s * 42.0, 8.0, -28.0]), 15.0, 17.0),
            Capsule(
                head + np.array([s * 45.0, 10.0, -22.0]),
                head + np.array([s * 50.0, 12.0, -220.0]),
                17.0,
                14.0,
            ),
        ]
        out.append(
            Structure(f"femur_{'L' if s > 0 else 'R'}", femur, cortex, marrow * 0.9, 3.0, 0, blend=6.0)
        )
    return out


#: How far (mm) the rib's tubercle lies in front of the middle of its transverse process (measured on
#: sub-verse012: bone 40-55 mm beside T10/T11 lies 36 mm behind the body centroid; 46 with the
#: tubercle 4 mm behind the process, v0.6).
TUBERCLE_FRONT_MM = 6.0
#: Floating ribs (the last two) slope this much more, drawn uniformly per person, than the 26-degree
#: trend of the ribs above them near the spine (v0.7; 0 before).
FLOATING_RIB_EXTRA_SLOPE_DEG = 25.0


def _ribs(spec: AnatomySpec, layout: SpineLayout, rng: np.random.Generator) -> tuple[list[Structure], F64]:
    """Ribs articulating with the thoracic bodies and transverse processes, costal cartilages, sternum.

    Returns the rib structures and the thorax table (rows z, cx, cy, a, b of the inner rib cage).
    """
    bs = spec.body_scale
    thoracic = [lv for lv in layout.levels if lv.name.startswith("T")]
    if spec.variant == "11_ribs":
        thoracic = thoracic[:11]
    # Rib n lateral half-span (mm) and antero-posterior half-depth at the widest, adult means.
    span = np.array([52, 76, 95, 108, 118, 125, 130, 132, 130, 126, 115, 100, 92])
    depth = np.array([38, 52, 64, 72, 78, 82, 86, 88, 88, 86, 82, 76, 70])
    drop = np.array([34, 50, 60, 68, 72, 74, 72, 66, 58, 48, 34, 26, 22])
    end_phi = np.array([165, 165, 165, 165, 165, 160, 158, 150, 148, 142, 115, 95, 88])
    cortex = spec.cortical_hu * 0.9
    marrow = spec.cancellous_hu * 0.9 + 40
    cart_hu = 110.0 + 250.0 * max(spec.degeneration - 0.5, 0)
    course = stream(spec.seed, STREAM_ANATOMY + 700)  # the ribs' posterior course (own stream)
    structures: list[Structure] = []
    thorax_rows = []
    sternum_pts = []
    n_ribs = len(thoracic)
    for n, lv in enumerate(thoracic):
        d = lv.dims
        A, B = span[n] * bs * rng.normal(1, 0.02), depth[n] * bs * rng.normal(1, 0.02)
        post = 28.0 + 6.0 * min(n, 6) / 6
        # From the tubercle the shaft runs on, back and out, to the rib's angle: the rib cage's most
        # posterior point lies beside the spine, behind the transverse processes, a few mm lateral of
        # the tubercle at rib 1 and 4-6 cm at ribs 7-10 (the paravertebral gutter that the lungs and
        # the erector spinae fill), and 0.3-0.6 of that behind it (real ribs leave the transverse
        # process ~45 degrees behind the frontal plane: sub-verse012, axial projections). Near the
        # spine the lower ribs already slope down (~20-30 degrees at ribs 10-12 in a frontal view).
        # The last two ribs float: their length varies widely (the 12th from a stub of a few cm to as
        # long as the 11th) and they are slimmer.
        floating = n >= n_ribs - 2
        lat_ang = (8.0 + 44.0 * min(n, 7) / 7) * bs * float(course.uniform(0.8, 1.2))
        if floating:
            lat_ang *= 0.75 if n == n_ribs - 2 else 0.5
        back_ang = 2.0 + lat_ang * float(course.uniform(0.3, 0.6))
        slope_deg = 6.0 + 20.0 * min(n, 11) / 11 + float(course.normal(0.0, 4.0))
        if floating:
            # Floating ribs hang steeper and vary more: the 12th often runs down beside L1's body
            # (sub-verse012: rib bone 30-48 mm beside L1, within 12 mm of its centroid's height).
            slope_deg += float(course.uniform(0.0, FLOATING_RIB_EXTRA_SLOPE_DEG))
        rib_slope = np.radians(slope_deg)
        end_n = float(end_phi[n])
        if floating:
            end_n = float(course.uniform(80, 135)) if n == n_ribs - 2 else float(course.uniform(30, 110))
        slim = float(course.uniform(0.7, 0.9)) if floating else 1.0
        for s in (-1.0, 1.0):
            head = lv.to_world([s * (d.width / 2 + 3.0), d.depth * 0.3, d.height * 0.32])
            tub_local = np.array(
                [
                    s * (d.canal_width / 2 + d.pedicle_radius + d.transverse_length * 0.8),
                    d.depth / 2 + d.pedicle_length + d.transverse_length * 0.5,
                    d.height * 0.25,
                ]
            )
            # The tubercle meets the front of the transverse process's tip (the rib's neck runs in front
            # of the process): TUBERCLE_FRONT_MM ahead of its middle, not 4 mm behind it as before v0.7
            # (real ribs beside T10-T12 lay 10-15 mm further forward than the phantoms').
            tub = lv.to_world(tub_local + np.array([0, -TUBERCLE_FRONT_MM, 0]))
            cu = layout.unroll_point(lv.centre)
            ccx = cu[0]
            tub_u = layout.unroll_point(tub)
            # The angle: lateral of and behind the tubercle, lower by the rib's slope.
            ang = tub_u + np.array([s * lat_ang, back_ang, -4.0 - lat_ang * np.tan(rib_slope)])
            # From the angle (phi = 0, the most posterior point) the shaft follows a quarter ellipse per
            # side out to the widest point of the cage (ccx +- A) and forward to the old front (cu_y +
            # post - 2B), so the cage's width and depth are what they were.
            a_side = max(A - abs(ang[0] - ccx), 10.0)
            front = cu[1] + post - 2.0 * B
            b_side = (ang[1] - front) / 2.0
            ccy = ang[1] - b_side
            phi1 = np.radians(end_n)
            phis = np.linspace(0.0, phi1, 12)[1:]
            frac = phis / phi1
            pts = [head, tub, layout.roll_point(ang)]
            for p, f in zip(phis, frac, strict=True):
                pts.append(
                    layout.roll_point(
                        np.array(
                            [
                                ang[0] + s * a_side * np.sin(p),
                                ccy + b_side * np.cos(p),
                                ang[2] - drop[n] * f**1.3,
                            ]
                        )
                    )
                )
            r = 4.6 * spec.vertebra_scale * (0.85 if n == 0 else 1.0) * slim
            radii = [r * 0.95, r * 1.0, r * 1.0] + [r * (1.0 - 0.15 * f) for f in frac]
            structures.append(
                Structure(
                    f"rib{n + 1}_{'L' if s > 0 else 'R'}",
                    polyline_capsules(pts, radii),
                    cortex,
                    marrow,
                    1.4,
                    0,
                )
            )
            # Costal cartilage to the sternum (true ribs) or the costal margin.
            if n < 10:
                end = pts[-1]
                if n < 7:
                    target = layout.roll_point(
                        np.array([ccx + s * 14.0, front + B * 0.02, end[2] - 6.0 - 2 * n])
                    )
                else:
                    target = layout.roll_point(
                        np.array([ccx + s * (35.0 + 8 * (n - 7)), front + B * 0.08, end[2] + 25.0])
                    )
                mid = 0.5 * (end + target) + np.array([0, -6.0, -4.0])
                structures.append(
                    Structure(
                        f"cartilage{n + 1}_{'L' if s > 0 else 'R'}",
                        polyline_capsules([end, mid, target], r * 0.9),
                        cart_hu,
                        cart_hu,
                        0.0,
                        0,
                    )
                )
                if n < 7 and s > 0:
                    sternum_pts.append(np.array([ccx, front + B * 0.02 - 2.0, target[2]]))
        cu = layout.unroll_point(lv.centre)
        # The inner cage reaches back to the ribs' angles, so the lungs fill the paravertebral gutters.
        front = cu[1] + post - 2.0 * B
        back = cu[1] + tub_local[1] - TUBERCLE_FRONT_MM + back_ang
        thorax_rows.append(
            (
                cu[2] + d.height * 0.3 - drop[n] * 0.35,
                cu[0],
                (front + back) / 2,
                A - 6.0,
                (back - front) / 2 - 6.0,
            )
        )
    if sternum_pts:
        top = sternum_pts[0] + np.array([0, 4.0, 6.0])
        bottom = sternum_pts[-1] + np.array([0, 0, -30.0])
        # A straight, slightly tilted sternum: y fitted linearly against z through the rib attachments.
        zs = np.array([p[2] for p in sternum_pts])
        ys = np.array([p[1] for p in sternum_pts])
        slope, intercept = np.polyfit(zs, ys, 1) if len(zs) > 1 else (0.0, float(ys[0]))
        x0 = float(np.mean([p[0] for p in sternum_pts]))
        st: list[Primitive] = []
        z_man = top[2] - 45.0
        for z0, z1, half_w, half_t in (
            (top[2], z_man, 26.0 * bs, 6.5),
            (z_man + 3.0, bottom[2], 15.0 * bs, 5.5),
        ):
            p0 = layout.roll_point(np.array([x0, slope * z0 + intercept, z0]))
            p1 = layout.roll_point(np.array([x0, slope * z1 + intercept, z1]))
            rot = frame_from(p0 - p1, rotation_z(layout.body_roll) @ np.array([0.0, 1.0, 0.0]))
            half_len = float(np.linalg.norm(p0 - p1)) / 2
            st.append(RoundBox(0.5 * (p0 + p1), rot, [half_w, half_t, half_len], 4.0))
        top = np.array([x0, slope * top[2] + intercept, top[2]])
        structures.append(Structure("sternum", st, cortex * 0.8, marrow, 1.2, 0, blend=3.0))
        # Clavicles from the manubrium out to the shoulders.
        for s in (-1.0, 1.0):
            m = top + np.array([s * 22.0 * bs, 0.0, -4.0])
            c_pts = [
                m,
                m + np.array([s * 50.0 * bs, 12.0, 6.0]),
                m + np.array([s * 85.0 * bs, 40.0, 8.0]),
                m + np.array([s * 112.0 * bs, 62.0, 10.0 if spec.arms_up else 4.0]),
            ]
            structures.append(
                Structure(
                    f"clavicle_{'L' if s > 0 else 'R'}",
                    polyline_capsules([layout.roll_point(p) for p in c_pts], [7.0, 6.0, 5.5, 7.0]),
                    cortex,
                    marrow,
                    1.8,
                    0,
                )
            )
    return structures, np.array(thorax_rows)


def _scapulae_and_arms(spec: AnatomySpec, layout: SpineLayout, thorax: F64) -> list[Structure]:
    """Scapulae on the posterior chest wall; with arms down, humeri beside the trunk."""
    out: list[Structure] = []
    t2c = layout.unroll_point(layout.level("T2").centre)
    t7c = layout.unroll_point(layout.level("T7").centre)
    bs = spec.body_scale
    cortex, marrow = spec.cortical_hu * 0.9, spec.cancellous_hu * 0.8 + 40
    for s in (-1.0, 1.0):
        up = 6.0 if spec.arms_up else 0.0
        lat = 82.0 * bs + (6.0 if spec.arms_up else 0.0)
        top = np.array([t2c[0] + s * lat, t2c[1] + 35.0, t2c[2] + 12 + up])
        bottom = np.array([t7c[0] + s * (lat - 25.0), t7c[1] + 40.0, t7c[2] + up])
        mid = 0.5 * (top + bottom)
        ez = (top - bottom) / np.linalg.norm(top - bottom)
        rot = frame_from(ez, np.array([s * 0.45, 1.0, 0.0]))
        half = [32.0 * bs, 2.6, float(np.linalg.norm(top - bottom)) / 2 + 2.0]
        prims: list[Primitive] = [
            RoundBox(layout.roll_point(mid), rotation_z(layout.body_roll) @ rot, half, 2.4)
        ]
        spine_a = top + np.array([-s * 20.0, 4.0, -15.0])
        acromion = top + np.array([s * 32.0 * bs, -5.0, 6.0])
        prims += polyline_capsules([layout.roll_point(spine_a), layout.roll_point(acromion)], [4.0, 6.0])
        glenoid = top + np.array([s * 38.0 * bs, -25.0, -8.0])
        prims.append(Ellipsoid(layout.roll_point(glenoid), np.eye(3), [8.0, 14.0, 18.0]))
        out.append(Structure(f"scapula_{'L' if s > 0 else 'R'}", prims, cortex, marrow, 1.5, 0, blend=3.0))
        if not spec.arms_up:
            head = glenoid + np.array([s * 24.0, 0.0, 0.0])
            elbow = head + np.array([s * 25.0, 10.0, -300.0])
            hum: list[Primitive] = [
                Ellipsoid(layout.roll_point(head), np.eye(3), [23.0, 23.0, 24.0]),
                Capsule(layout.roll_point(head), layout.roll_point(elbow), 13.0, 11.0),
            ]
            out.append(Structure(f"humerus_{'L' if s > 0 else 'R'}", hum, cortex, marrow * 0.7, 3.0, 0))
    return out


def _skull(spec: AnatomySpec, layout: SpineLayout, rng: np.random.Generator) -> list[Structure]:
    """Skull base above the atlas: condyles, foramen magnum, clivus, petrous ridges, vault, mandible."""
    c1, c2 = layout.level("C1"), layout.level("C2")
    rot = c1.rot
    cortex = spec.cortical_hu * 1.1
    marrow = spec.cancellous_hu * 0.8 + 150
    out: list[Structure] = []
    fm = c1.to_world([0, 12.0, 14.0])  # centre of the foramen magnum
    base_prims: list[Primitive] = []
    for s in (-1.0, 1.0):
        base_prims.append(
            Ellipsoid(c1.to_world([s * 14.0, 1.0, 10.0]), rot @ _rot_z(s * 25), [6.0, 10.0, 5.5])
        )
    # Occipital plate sloping up and back from the foramen magnum, with a hole for the foramen.
    occ = RoundBox(c1.to_world([0, 45.0, 32.0]), rot @ _rot_x(38), [62.0, 40.0, 5.5], 5.0)
    clivus = RoundBox(c1.to_world([0, -14.0, 34.0]), rot @ _rot_x(-28), [16.0, 6.5, 24.0], 4.0)
    hole = Capsule(fm + rot[:, 2] * -20.0, fm + rot[:, 2] * 30.0, 16.5)
    base_prims.append(Difference(occ, hole))
    base_prims.append(Difference(clivus, hole))
    for s in (-1.0, 1.0):
        base_prims += polyline_capsules(
            [c1.to_world([s * 12.0, -8.0, 38.0]), c1.to_world([s * 48.0, 18.0, 34.0])], [6.0, 9.0]
        )
    out.append(Structure("skull_base", base_prims, cortex * 1.15, marrow + 250, 3.0, 0, blend=4.0))
    # Vault: an ellipsoidal shell, cut below the skull base.
    vcentre = c1.to_world([0, 10.0, 78.0])
    vault = Intersection(
        Shell(Ellipsoid(vcentre, rot, [72.0, 92.0, 78.0]), 7.0),
        HalfSpace(c1.to_world([0, 0, 24.0]), -rot[:, 2] + 0.45 * rot[:, 1]),
    )
    out.append(Structure("skull_vault", [vault], cortex, marrow + 200, 2.0, 0))
    # Mandible: condyles, rami and the body around to the chin, with teeth.
    left = [
        c1.to_world([48.0, -12.0, 22.0]),
        c1.to_world([47.0, -22.0, -8.0]),
        c2.to_world([44.0, -30.0, -22.0]),
    ]
    chin = c2.to_world([0.0, -92.0, -18.0])
    arc = [
        c2.to_world([40.0 * np.cos(t), -30.0 - 62.0 * np.sin(t), -20.0]) for t in np.linspace(0.2, 1.35, 5)
    ]
    right = [np.array(p) for p in left]
    for p in right:
        p[:] = c1.centre + rot @ (np.array([-1, 1, 1]) * (rot.T @ (p - c1.centre)))
    arc_r = [c1.centre + rot @ (np.array([-1, 1, 1]) * (rot.T @ (p - c1.centre))) for p in arc]
    pts = left + arc + [chin] + list(reversed(arc_r)) + list(reversed(right))
    mand: list[Primitive] = polyline_capsules(pts, 6.0)
    out.append(Structure("mandible", mand, cortex, marrow, 2.5, 0, blend=2.0))
    teeth: list[Primitive] = []
    for t in np.linspace(0.25, np.pi - 0.25, 14):
        p = c2.to_world([38.0 * np.cos(t), -35.0 - 52.0 * np.sin(t), -6.0])
        teeth.append(Ellipsoid(p, rot, [3.5, 4.0, 6.0]))
    out.append(Structure("teeth", teeth, 2200.0, 1800.0, 1.0, 0))
    return out


def _implants(spec: AnatomySpec, layout: SpineLayout) -> tuple[list[Structure], list[F64]]:
    """Pedicle screws along the pedicle axes, and rods joining the screw heads when >= 2 levels."""
    screws: list[Primitive] = []
    heads: dict[float, list[F64]] = {-1.0: [], 1.0: []}
    for label in spec.implant_levels:
        lv = next((lv for lv in layout.levels if lv.label == label), None)
        if lv is None or lv.name[0] not in "TL":
            continue
        d = lv.dims
        px = d.canal_width / 2 + d.pedicle_radius * 0.9
        zp = 0.18 * d.height
        for s in (-1.0, 1.0):
            entry = np.array([s * (px + 4.0), d.depth / 2 + d.pedicle_length + 8.0, zp])
            tip = np.array([s * px * 0.35, -d.depth * 0.3, zp - 1.0])
            screws.append(Capsule(lv.to_world(entry), lv.to_world(tip), 3.2, 2.8))
            head = entry + np.array([0.0, 4.0, 0.0])
            screws.append(Ellipsoid(lv.to_world(head), lv.rot, [5.5, 5.5, 6.5]))
            heads[s].append(lv.to_world(head))
    rods: list[Primitive] = []
    for s in (-1.0, 1.0):
        if len(heads[s]) >= 2:
            h = heads[s]
            ext = [h[0] + (h[0] - h[1]) * 0.25, *h, h[-1] + (h[-1] - h[-2]) * 0.25]
            rods += polyline_capsules(ext, 3.0)
    structures = []
    if screws:
        structures.append(Structure("screws", screws, 3071.0 * 2.5, 3071.0 * 2.5, 0.0, 0))
    if rods:
        structures.append(Structure("rods", rods, 3071.0 * 2.5, 3071.0 * 2.5, 0.0, 0))
    points = heads[-1] + heads[1]
    return structures, points


@dataclass
class Skeleton:
    """All hard structures, in paint order, and the facts the soft tissue and artefacts need."""

    layout: SpineLayout
    vertebrae: list[Structure]  # one per labelled vertebra (C1..L6, T13), same order as the layout
    discs: list[Structure]
    others: list[Structure]  # sacrum, pelvis, ribs, skull ... (painted after discs, before vertebrae)
    canal: list[Primitive]  # dural sac along the canal
    thorax: F64  # inner rib cage rows (z, cx, cy, a, b)
    metal_points: list[F64]
    dense_points: list[F64]  # bone centres that cause beam-hardening streaks


def build_skeleton(spec: AnatomySpec, layout: SpineLayout) -> Skeleton:
    rng = stream(spec.seed, STREAM_ANATOMY + 300)
    rng_arch = stream(spec.seed, STREAM_ANATOMY + 601)  # per-level arch mass and density, own stream
    arches: list[Structure] = []
    cancellous = spec.cancellous_hu
    cortex = spec.cortical_hu
    vertebrae: list[Structure] = []
    discs: list[Structure] = []
    levels = layout.levels
    sacral = [lv for lv in levels if lv.name.startswith("S")]
    mobile = [lv for lv in levels if not lv.name.startswith("S")]
    for n, lv in enumerate(mobile):
        frac = lv.label in spec.fractures
        dens = float(
            np.clip(cancellous + rng.normal(0, 12) - 10.0 * (lv.name[0] == "L") + 25.0 * frac, 40, 340)
        )
        if lv.name == "C1":
            prims = _atlas(lv, levels[1])
        elif lv.name == "C2":
            prims = [_body(lv, spec, rng, frac), *_axis(lv, levels[0], rng)]
        else:
            sacralised = spec.variant == "sacralised_L5" and lv is mobile[-1]
            sacralised = sacralised or (spec.variant == "lumbarised_S1" and lv.name == "L6")
            bulk = spec.posterior_bulk * float(rng_arch.uniform(0.92, 1.08))
            arch = _posterior_generic(lv, rng, sacralised, bulk)
            prims = [_body(lv, spec, rng, frac), *arch]
            arches.append(_dense_arch(lv, arch, cortex, dens, rng_arch))
            if lv.name[0] == "C" or lv.name == "T1":
                prims += _uncinate(lv)
            if spec.degeneration > 0.3 and rng.uniform() < spec.degeneration:
                prims += _osteophytes(lv, rng, spec.degeneration)
        vertebrae.append(
            Structure(
                lv.name,
                prims,
                cortex * float(rng.normal(1, 0.04)),
                dens,
                cortex_mm=1.3 if lv.name[0] != "C" else 1.0,
                label=lv.label,
                blend=1.5,
            )
        )
        # Disc below (none below C1: the atlanto-axial joint is synovial).
        if n + 1 < len(levels) and lv.name != "C1":
            below = levels[n + 1]
            discs.append(_disc(spec, lv, below, rng))
    sac_prims = _sacrum(spec, layout, rng)
    sac_dens = float(np.clip(cancellous * 0.85 + rng.normal(0, 10), 40, 300))
    others = [
        Structure("sacrum", sac_prims, cortex * 0.95, sac_dens, 1.3, SACRUM_LABEL, blend=3.0),
        Structure("coccyx", _coccyx(layout), cortex * 0.8, sac_dens, 1.0, 0),
    ]
    # Rudimentary discs between fused sacral segments: slightly less dense lines.
    for upper, lower in zip(sacral[:-1], sacral[1:], strict=True):
        mid = 0.5 * (upper.centre + lower.centre)
        w = 0.5 * (upper.dims.width + lower.dims.width) / 2 * 0.8
        dd = 0.5 * (upper.dims.depth + lower.dims.depth) / 2 * 0.8
        others.append(
            Structure(
                "sacral_remnant",
                [VertebralBody(mid, upper.rot, BodyShape(w, dd, 1.6, 0.0, 0.0, 0.0))],
                sac_dens * 0.6 + 80,
                sac_dens * 0.6 + 80,
                0.0,
                SACRUM_LABEL,
            )
        )
    others += _ilium_and_hips(spec, layout, rng)
    ribs, thorax = _ribs(spec, layout, rng)
    others += ribs
    others += _scapulae_and_arms(spec, layout, thorax)
    others += _skull(spec, layout, rng)
    implants, metal = _implants(spec, layout)
    others += implants
    others += arches
    others += _vacuum_clefts(spec, mobile)
    # Dural sac (CSF) along the canal.
    canal_pts = []
    radii = []
    for lv in mobile:
        d = lv.dims
        canal_pts.append(lv.to_world([0, d.depth / 2 + d.canal_depth * 0.5, 0]))
        radii.append(min(d.canal_width, d.canal_depth) * 0.42)
    top = levels[0].to_world([0, levels[0].dims.canal_depth * 0.3, 25.0])
    canal = polyline_capsules(
        [top, *canal_pts, sacral[0].to_world([0, sacral[0].dims.depth / 2 + 6, 0])],
        [radii[0], *radii, radii[-1] * 0.6],
    )
    dense = [lv.centre for lv in levels if lv.name[0] in "LS"]
    for st in others:
        if st.name.startswith(("ilium", "femur", "skull_base", "humerus")):
            lo = np.min([p.lo for p in st.prims if np.all(np.isfinite(p.lo))], axis=0)
            hi = np.max([p.hi for p in st.prims if np.all(np.isfinite(p.hi))], axis=0)
            dense.append(0.5 * (lo + hi))
    return Skeleton(layout, vertebrae, discs, others, canal, thorax, metal, dense)


def _dense_arch(
    lv: Level, arch: list[Primitive], cortex: float, body_marrow: float, rng: np.random.Generator
) -> Structure:
    """The vertebral arch painted again, over the vertebra, as the denser bone it is.

    Pedicles, laminae, articular and spinous processes are mostly compact bone with a thick cortex, so
    in CT they stay bright when the body's cancellous bone is thin (osteoporosis takes trabeculae first):
    an elderly spine shows a dark body behind a bright arch. Painted with the vertebra's label after the
    vertebrae (``ARCH`` in ``generate.paint_bones``)."""
    marrow = min(body_marrow + float(rng.uniform(120.0, 350.0)), 0.8 * cortex)
    return Structure(
        ARCH, arch, cortex, marrow, cortex_mm=float(rng.uniform(1.4, 2.2)), label=lv.label, blend=1.5
    )


#: Name of the dense-arch overlay structures (:func:`_dense_arch`).
ARCH = "arch"


#: Share of fractured bodies with an intravertebral vacuum cleft (gas; Kummell's sign), common in
#: osteoporotic collapse that has not healed.
VACUUM_CLEFT_RATE = 0.35


def _vacuum_clefts(spec: AnatomySpec, mobile: list[Level]) -> list[Structure]:
    """Gas clefts inside some fractured bodies: a flat, horizontal pocket in the front half of the body.

    Painted after the vertebrae (gas replaces bone); its own random stream, so the rest of the anatomy
    does not move.
    """
    rng = stream(spec.seed, STREAM_ANATOMY + 500)
    out: list[Structure] = []
    for lv in mobile:
        if lv.label not in spec.fractures or rng.uniform() >= VACUUM_CLEFT_RATE:
            continue
        d = lv.dims
        centre = lv.to_world(
            [
                d.width * float(rng.uniform(-0.1, 0.1)),
                -d.depth * float(rng.uniform(0.05, 0.25)),
                d.height * float(rng.uniform(-0.1, 0.1)),
            ]
        )
        semi = [
            d.width * float(rng.uniform(0.15, 0.32)),
            d.depth * float(rng.uniform(0.12, 0.28)),
            float(rng.uniform(1.0, 2.5)),
        ]
        out.append(
            Structure("vacuum_cleft", [Ellipsoid(centre, lv.rot, semi)], 0.0, float(rng.uniform(-950, -600)))
        )
    return out


def _disc(spec: AnatomySpec, upper: Level, lower: Level, rng: np.random.Generator) -> Structure:
    """Intervertebral disc filling the space (and the endplate concavities) between two bodies."""
    mid = 0.5 * (upper.centre + lower.centre)
    ez = upper.centre - lower.centre
    gap_len = float(np.linalg.norm(ez))
    rot = frame_from(ez, upper.rot[:, 1] + lower.rot[:, 1])
    h = gap_len - upper.dims.height / 2 - lower.dims.height / 2
    w = 0.5 * (upper.dims.width + lower.dims.width) / 2
    d = 0.5 * (upper.dims.depth + lower.dims.depth) / 2
    if lower.name.startswith("S"):
        w, d = upper.dims.width / 2, upper.dims.depth / 2
    bulge = 1.0 + 0.03 + 0.05 * spec.degeneration
    shape = BodyShape(w * bulge, d * bulge, max(h, 0.5) + 2 * 2.5, 0.0, 0.06 * d, -0.03)
    annulus = float(rng.uniform(95, 125))
    nucleus = float(annulus - rng.uniform(10, 30) - 20 * spec.degeneration)
    prims: list[Primitive] = [VertebralBody(mid, rot, shape)]
    st = Structure(f"disc_{upper.name}", prims, annulus, nucleus, cortex_mm=0.3 * min(w, d), label=0)
    return st
