"""Soft tissue, air, organs and the table: smooth structures painted on a coarse grid, then upsampled.

HU values: air -1000, lung ~-850, fat ~-100, water 0, CSF ~10, muscle ~45-55, liver ~55-65 unenhanced,
blood ~40 (arterial contrast 250-450, venous 140-200), disc 80-120 (anchors.md, standard CT tables).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from inference.phantoms.anatomy import Level, Skeleton, SpineLayout, Structure
from inference.phantoms.shapes import (
    Capsule,
    Difference,
    Ellipsoid,
    Grid,
    HalfSpace,
    Intersection,
    Loft,
    Primitive,
    RoundBox,
    Shell,
    bounds_of,
    frame_from,
    polyline_capsules,
    rotation_z,
    union_sdf,
)
from inference.phantoms.spec import PhantomSpec
from inference.phantoms.streams import STREAM_DETAIL, stream

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: HU of a texture: called with the world coordinates of a box, returns HU values for it.
Texture = Callable[[F32, F32, F32, tuple[slice, slice, slice]], F32]


@dataclass
class Tissue:
    """A soft structure: union of primitives filled with a constant HU or a texture."""

    name: str
    prims: list[Primitive]
    hu: float
    texture: Texture | None = None


@dataclass(frozen=True)
class VisceraOffsets:
    """Where this person's viscera sit along the body axis relative to the textbook level (mm, + = up).

    The diaphragm's dome lies anywhere from about T9 to T11 (build, breathing), the kidneys' hila at
    L1-L2 and the aortic bifurcation at L3-L5 (docs/anchors.md, "Real anatomy"). Drawn per phantom so
    that no organ marks a vertebral level exactly: the level must be read from the bones.
    """

    diaphragm: float
    kidneys: float
    bifurcation: float


def viscera_offsets(spec: PhantomSpec) -> VisceraOffsets:
    """The phantom's viscera offsets (their own random stream: other draws do not move)."""
    rng = stream(spec.seed, STREAM_DETAIL + 20)
    dome = float(np.clip(rng.normal(0.0, 16.0), -40.0, 40.0))
    kidneys = float(np.clip(0.5 * dome + rng.normal(0.0, 12.0), -40.0, 40.0))
    bifurcation = float(np.clip(rng.normal(0.0, 14.0), -35.0, 35.0))
    return VisceraOffsets(dome, kidneys, bifurcation)


def _level_frames(layout: SpineLayout) -> tuple[dict[str, Level], dict[str, float], dict[str, F64]]:
    """Levels by name, with each body centre's height and (x, y) in the un-rolled body frame."""
    levels = {lv.name: lv for lv in layout.levels}
    cz = {name: float(layout.unroll_point(lv.centre)[2]) for name, lv in levels.items()}
    cxy = {name: layout.unroll_point(lv.centre)[:2] for name, lv in levels.items()}
    return levels, cz, cxy


#: Radii (mm) of the aorta at the points of :func:`_aorta_path`.
AORTA_RADII = (14.0, 15.0, 14.0, 13.0, 12.5, 12.0, 11.5, 10.5, 9.5, 8.5)
#: Index in the aorta path where the descending aorta starts.
DESCENDING_FROM = 4


def _heart_centre(spec: PhantomSpec, layout: SpineLayout, offsets: VisceraOffsets) -> F64:
    _, cz, cxy = _level_frames(layout)
    # The heart rests on the diaphragm and follows most of its shift.
    return np.array(
        [
            cxy["T8"][0] + 30.0,
            cxy["T8"][1] - 105.0 * spec.body_scale,
            cz["T8"] - 5.0 + 0.7 * offsets.diaphragm,
        ]
    )


def _aorta_path(spec: PhantomSpec, layout: SpineLayout, offsets: VisceraOffsets) -> list[F64]:
    """Centre line (un-rolled frame): ascending, arch, descending along the left front of the spine,
    abdominal, to the iliac bifurcation (the last point)."""
    levels, cz, cxy = _level_frames(layout)
    heart_c = _heart_centre(spec, layout, offsets)
    asc = heart_c + np.array([-10.0, 10.0, 40.0])
    arch_top = np.array([cxy["T4"][0] + 5.0, cxy["T4"][1] - 45.0, cz["T3"] + 5.0])
    desc = [
        np.array([cxy[n][0] + 22.0, cxy[n][1] - levels[n].dims.depth / 2 - 8.0, cz[n]])
        for n in ("T5", "T8", "T11", "L1", "L3")
    ]
    bif = np.array(
        [
            cxy["L4"][0] + 5.0,
            cxy["L4"][1] - levels["L4"].dims.depth / 2 - 12.0,
            max(cz["L4"] + offsets.bifurcation, cz["L3"] - 15.0),
        ]
    )
    return [
        heart_c + np.array([-5.0, 5.0, 20.0]),
        asc,
        arch_top,
        np.array([cxy["T4"][0] + 20.0, cxy["T4"][1] - 25.0, cz["T4"] + 4.0]),
        *desc,
        bif,
    ]


def vascular_calcification(spec: PhantomSpec, skeleton: Skeleton) -> list[Structure]:
    """Atherosclerotic plaques in the wall of the descending and abdominal aorta, for bone painting.

    Prevalence and burden grow with age (``degeneration`` is the phantom's age proxy): calcified aortic
    plaque is common after 60 and near universal at 80. Plaques are thin curved shells on the wall,
    denser and more numerous below the renal arteries; painted at full resolution like bone (the soft
    tissue grid is too coarse for 1-2 mm calcium).
    """
    rng = stream(spec.seed, STREAM_DETAIL + 21)
    if rng.uniform() >= min(0.95, 1.2 * spec.degeneration):
        return []
    layout = skeleton.layout
    path = _aorta_path(spec, layout, viscera_offsets(spec))
    segments = list(range(DESCENDING_FROM, len(path) - 1))
    weights = np.linspace(1.0, 2.5, len(segments))
    rot_roll = rotation_z(layout.body_roll)
    prims: list[Primitive] = []
    for _ in range(int(3 + 45 * spec.degeneration * rng.uniform(0.3, 1.0))):
        i = int(rng.choice(segments, p=weights / weights.sum()))
        t = float(rng.uniform())
        axis = path[i + 1] - path[i]
        radius = AORTA_RADII[i] + t * (AORTA_RADII[i + 1] - AORTA_RADII[i]) - 0.6
        frame = frame_from(axis, [0.0, 1.0, 0.0])
        angle = float(rng.uniform(0.0, 2.0 * np.pi))
        radial = np.cos(angle) * frame[:, 0] + np.sin(angle) * frame[:, 1]
        centre = path[i] + t * axis + radius * radial
        rot = rot_roll @ frame_from(axis, radial)
        semi = [float(rng.uniform(1.5, 4.5)), float(rng.uniform(0.6, 1.4)), float(rng.uniform(1.5, 6.0))]
        prims.append(Ellipsoid(layout.roll_point(centre), rot, semi))
    hu = float(rng.uniform(350, 700) + 500 * spec.degeneration)
    return [Structure("aortic_calcification", prims, 0.0, hu, 0.0, 0)]


def paint_tissue(vol: F32, grid: Grid, tissue: Tissue, soft_edge: float) -> None:
    """Alpha-composite one soft structure into ``vol`` (anti-aliased over ``soft_edge`` mm)."""
    lo, hi = bounds_of(tissue.prims)
    box = grid.index_box(lo - soft_edge, hi + soft_edge)
    if box is None:
        return
    d = union_sdf(tissue.prims, grid, box, margin=soft_edge)
    occ = np.clip(0.5 - d / np.float32(soft_edge), 0.0, 1.0)
    if not np.any(occ):
        return
    if tissue.texture is not None:
        x, y, z = grid.axes(box)
        value: F32 | np.float32 = tissue.texture(x, y, z, box)
    else:
        value = np.float32(tissue.hu)
    view = vol[box]
    view += occ * (value - view)


def _smooth_noise(shape: tuple[int, ...], sigma_vox: tuple[float, ...], rng: np.random.Generator) -> F32:
    """Zero-mean, unit-std, spatially correlated noise (Gaussian-filtered white noise)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    field = ndimage.gaussian_filter(white, sigma_vox, mode="wrap")
    std = float(field.std()) or 1.0
    return (field / np.float32(std)).astype(np.float32)


def table_top(layout: SpineLayout) -> float:
    """World y of the surface the patient lies on: the back is flattened a little against it."""
    tz, cx, cy, a, b = layout.trunk.T
    z_lo = layout.levels[-1].centre[2] - 40.0
    z_hi = layout.level("T1").centre[2]
    rows = (tz >= z_lo) & (tz <= z_hi)
    back = float(np.max((cy + b)[rows])) if rows.any() else float(np.max(cy + b))
    return back - 10.0


def _table(spec: PhantomSpec, layout: SpineLayout, rng: np.random.Generator) -> list[Tissue]:
    """Patient table under the back (posterior, +y): carbon-fibre shells with a foam core, and a pad."""
    tz, cx, cy, a, b = layout.trunk.T
    x0 = float(np.mean(cx))
    top = table_top(layout)
    pad = float(rng.uniform(0.0, 15.0))
    width = float(rng.uniform(190.0, 240.0))
    z0, z1 = float(tz.min()) - 2000.0, float(tz.max()) + 2000.0
    zc, zh = 0.5 * (z0 + z1), 0.5 * (z1 - z0)
    out = []
    if pad > 3:
        out.append(
            Tissue(
                "pad",
                [RoundBox([x0, top + pad / 2, zc], np.eye(3), [width * 0.9, pad / 2, zh], 3.0)],
                float(rng.uniform(-900, -650)),
            )
        )
    shell = float(rng.uniform(2.0, 4.0))
    core = float(rng.uniform(25.0, 50.0))
    y_top = top + pad
    curved = rng.uniform() < 0.5
    if curved:
        # A shallow trough: a large cylinder shell cut to the table width.
        radius = float(rng.uniform(600, 1000))
        centre = np.array([x0, y_top + shell - radius, zc])
        cyl = Loft([[z0, centre[0], centre[1], radius, radius], [z1, centre[0], centre[1], radius, radius]])
        slab = RoundBox([x0, y_top + core / 2, zc], np.eye(3), [width, core / 2 + shell, zh], 1.0)
        inner = Loft(
            [
                [z0, centre[0], centre[1], radius + core, radius + core],
                [z1, centre[0], centre[1], radius + core, radius + core],
            ]
        )
        out.append(
            Tissue("table_core", [Difference(Intersection(slab, inner), cyl)], float(rng.uniform(-950, -800)))
        )
        out.append(
            Tissue(
                "table_shell",
                [Intersection(Shell(cyl, shell * 2), slab), Intersection(Shell(inner, shell * 2), slab)],
                float(rng.uniform(150, 450)),
            )
        )
    else:
        out.append(
            Tissue(
                "table_core",
                [RoundBox([x0, y_top + core / 2, zc], np.eye(3), [width, core / 2, zh], 2.0)],
                float(rng.uniform(-950, -800)),
            )
        )
        for yy in (y_top, y_top + core):
            out.append(
                Tissue(
                    "table_shell",
                    [RoundBox([x0, yy, zc], np.eye(3), [width, shell / 2, zh], 0.5)],
                    float(rng.uniform(150, 450)),
                )
            )
    return out


def build_tissues(
    spec: PhantomSpec, skeleton: Skeleton, grid: Grid, rng: np.random.Generator
) -> list[Tissue]:
    """Every soft structure in paint order (later ones cover earlier ones)."""
    layout = skeleton.layout
    roll, pivot = layout.body_roll, tuple(layout.roll_pivot)
    rz = rotation_z(roll)
    trunk = layout.trunk.copy()
    fat = 12.0 * spec.adiposity
    contrast = spec.contrast
    arterial = "arterial" in contrast
    venous = "venous" in contrast
    oral = "oral" in contrast
    blood = 40.0 + (
        float(rng.uniform(250, 420)) if arterial else float(rng.uniform(130, 190)) if venous else 0.0
    )
    vein = 40.0 + (
        float(rng.uniform(20, 80)) if arterial else float(rng.uniform(120, 180)) if venous else 0.0
    )
    muscle = float(rng.uniform(42, 58))
    fat_hu = float(rng.uniform(-115, -85))

    def loft(table: npt.ArrayLike, squareness: float = 0.0) -> Loft:
        return Loft(table, squareness=squareness, roll=roll, pivot=pivot)

    levels, cz, cxy = _level_frames(layout)
    offsets = viscera_offsets(spec)
    last_t = "T13" if "T13" in levels else "T12"
    sac = [lv.name for lv in layout.levels if lv.name.startswith("S")]
    out: list[Tissue] = list(_table(spec, layout, rng))
    # Skin contour (filled with subcutaneous fat) flattened on the table, then the muscle wall inside it.
    on_table = HalfSpace([0.0, table_top(layout), 0.0], [0.0, 1.0, 0.0])
    out.append(Tissue("subcutaneous_fat", [Intersection(loft(trunk, 0.35), on_table)], fat_hu))
    inner = trunk.copy()
    inner[:, 3] -= fat * 0.9 + 2.0
    inner[:, 4] -= fat * 1.1 + 2.0
    back_fat = HalfSpace([0.0, table_top(layout) - 0.6 * fat - 4.0, 0.0], [0.0, 1.0, 0.0])
    out.append(Tissue("muscle_wall", [Intersection(loft(inner, 0.35), back_fat)], muscle))
    # Arms beside the trunk when they are down.
    if not spec.arms_up:
        for s in (-1.0, 1.0):
            rows = []
            for z, x, y, a, _b in _rows_between(trunk, cz["L5"] - 60, cz["T1"] + 40):
                arm_a = 42 * spec.body_scale + fat * 0.6
                rows.append((z, x + s * (a + 10 + 45 * spec.body_scale), y + 15, arm_a, arm_a + 3))
            if len(rows) >= 2:
                out.append(Tissue("arm_fat", [loft(rows)], fat_hu))
                arm_m = [(z, x, y, a - fat * 0.6 - 3, b - fat * 0.6 - 3) for z, x, y, a, b in rows]
                out.append(Tissue("arm_muscle", [loft(arm_m)], muscle))

    # ---- abdomen and pelvis: visceral fat, the peritoneal cavity (bowel) in front of the spine, organs
    z_dome = cz["T10"] + offsets.diaphragm
    order = sorted(cz, key=lambda n: cz[n])
    lz = np.array([cz[n] for n in order])
    ly = np.array([cxy[n][1] for n in order])
    ld = np.array([levels[n].dims.depth for n in order])
    vis_rows, per_rows = [], []
    for z, x, y, a, b in _rows_between(inner, cz[sac[-1]] - 140, z_dome + 10):
        vis_rows.append((z, x, y, a - 8.0, b - 8.0))
        front = y - b + 12.0
        back = float(np.interp(z, lz, ly) - 0.5 * np.interp(z, lz, ld) + 4.0)
        if back - front > 20:
            per_rows.append((z, x, 0.5 * (front + back), a - 16.0, 0.5 * (back - front)))
    if len(vis_rows) >= 2:
        visceral = loft(vis_rows)
        out.append(Tissue("visceral_fat", [visceral], fat_hu * 0.9))
        if len(per_rows) >= 2:
            bowel = _bowel_texture(grid, rng, spec, oral, fat_hu)
            out.append(
                Tissue("peritoneal_cavity", [Intersection(loft(per_rows, 0.3), visceral)], 0.0, texture=bowel)
            )
        liver_c = np.array([cxy[last_t][0] - 70.0 * spec.body_scale, cxy[last_t][1] - 85.0, z_dome - 40.0])
        liver = Ellipsoid(layout.roll_point(liver_c), rz @ _rz(0.3), [85.0 * spec.body_scale, 80.0, 85.0])
        liver_hu = 60.0 + (55.0 if venous else 20.0 if arterial else 0.0)
        out.append(Tissue("liver", [Intersection(liver, visceral)], liver_hu + float(rng.normal(0, 5))))
        spleen_c = np.array([cxy["T11"][0] + 85.0 * spec.body_scale, cxy["T11"][1] - 10.0, z_dome - 45.0])
        out.append(
            Tissue(
                "spleen",
                [Intersection(Ellipsoid(layout.roll_point(spleen_c), rz, [30.0, 48.0, 55.0]), visceral)],
                48.0 + (70.0 if (venous or arterial) else 0.0),
            )
        )
        for s in (-1.0, 1.0):
            kc = np.array(
                [
                    cxy["L1"][0] + s * (levels["L1"].dims.width / 2 + 42.0),
                    cxy["L1"][1] - 12.0,
                    cz["L1"] + offsets.kidneys - (12.0 if s < 0 else 0.0),
                ]
            )
            kid = Ellipsoid(layout.roll_point(kc), rz @ _rz(s * 0.5), [27.0, 32.0, 55.0])
            k_hu = 35.0 + (160.0 if arterial else 130.0 if venous else 0.0)
            out.append(Tissue("kidney", [kid], k_hu))
            out.append(
                Tissue(
                    "renal_sinus",
                    [Ellipsoid(layout.roll_point(kc + [-s * 10.0, -5.0, 0.0]), rz, [9.0, 12.0, 28.0])],
                    fat_hu * 0.5,
                )
            )
        blad = np.array([cxy[sac[-1]][0], cxy[sac[-1]][1] - 115.0 * spec.body_scale, cz[sac[-1]] - 35.0])
        out.append(
            Tissue(
                "bladder",
                [Ellipsoid(layout.roll_point(blad), rz, [45.0, 38.0, 40.0])],
                float(rng.uniform(0, 15)),
            )
        )
    # ---- thorax: rib-cage interior, lungs with vessels, mediastinum, heart, great vessels, airway
    thorax = skeleton.thorax.copy()
    if len(thorax):
        z_dome = cz["T10"] + offsets.diaphragm + float(rng.uniform(-10, 10))
        apex = cz["T1"] + 25.0
        cav = thorax.copy()
        cav[:, 3:] = np.maximum(cav[:, 3:] - 6.0, 10.0)
        cav = np.vstack(
            [[apex, cav[0, 1], cav[0, 2] + cav[0, 4] * 0.3, cav[0, 3] * 0.55, cav[0, 4] * 0.55], cav]
        )
        cav = cav[np.argsort(cav[:, 0])]
        cavity = loft(cav)
        lung_noise = _vessel_texture(grid, rng, spec)
        for s in (-1.0, 1.0):
            rows = []
            for z, x, y, a, b in cav:
                w = a * 0.5
                rows.append((z, x + s * (a - w), y + b * 0.1, w, b * 0.92))
            dome_c = np.array(
                [cxy[last_t][0] + s * 40.0, cxy[last_t][1] - 70.0, z_dome + (10.0 if s < 0 else 0.0) - 140.0]
            )
            dome = Ellipsoid(layout.roll_point(dome_c), rz, [120.0 * spec.body_scale, 140.0, 140.0])
            lung = Intersection(loft(rows), cavity)
            out.append(
                Tissue(f"lung_{'L' if s > 0 else 'R'}", [Difference(lung, dome)], -850.0, texture=lung_noise)
            )
        # Mediastinum (fat and soft tissue) in front of the spine between the lungs.
        med = []
        for z, x, y, a, b in cav:
            if z > z_dome - 20:
                med.append((z, x, y - b * 0.15, 28.0 + 0.15 * a, b * 0.75))
        if len(med) >= 2:
            out.append(Tissue("mediastinum", [loft(med)], fat_hu * 0.6 + 20))
        heart_c = _heart_centre(spec, layout, offsets)
        heart = Ellipsoid(layout.roll_point(heart_c), rz @ _rz(np.radians(-35)), [52.0, 40.0, 50.0])
        out.append(Tissue("heart", [heart], 45.0 if blood < 100 else blood * 0.9))
        if blood > 100:
            out.append(Tissue("myocardium", [Difference(Shell(heart, 10.0), heart)], 55.0))
        aorta_pts = _aorta_path(spec, layout, offsets)
        bif = aorta_pts[-1]
        aorta = polyline_capsules([layout.roll_point(p) for p in aorta_pts], list(AORTA_RADII))
        out.append(Tissue("aorta", aorta, blood))
        for s in (-1.0, 1.0):
            il = [bif, bif + np.array([s * 45.0, -10.0, -60.0]), bif + np.array([s * 75.0, -25.0, -140.0])]
            out.append(
                Tissue("iliac", polyline_capsules([layout.roll_point(p) for p in il], [7.5, 6.5, 6.0]), blood)
            )
        ivc = [
            np.array([cxy[n][0] - 25.0, cxy[n][1] - levels[n].dims.depth / 2 - 12.0, cz[n]])
            for n in ("T10", "L1", "L3", "L4")
        ]
        out.append(Tissue("ivc", polyline_capsules([layout.roll_point(p) for p in ivc], 11.0), vein))

    # ---- neck: airway from the pharynx to the carina, thyroid, vessels
    air = float(rng.uniform(-1000, -960))
    airway = []
    for n in ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "T1", "T2", "T3"):
        lv = levels[n]
        gap = 20.0 if n in ("C1", "C2", "C3") else 24.0
        airway.append(np.array([cxy[n][0], cxy[n][1] - lv.dims.depth / 2 - gap, cz[n]]))
    carina = np.array([cxy["T5"][0], cxy["T5"][1] - 45.0, cz["T5"]])
    airway.append(carina)
    radii = [11.0, 10.0, 8.0, 7.0, 8.0, 8.5, 8.5, 9.0, 9.0, 9.0, 8.0]
    out.append(Tissue("airway", polyline_capsules([layout.roll_point(p) for p in airway], radii), air))
    for s in (-1.0, 1.0):
        br = [carina, carina + np.array([s * 30.0, 5.0, -25.0]), carina + np.array([s * 55.0, 10.0, -45.0])]
        out.append(
            Tissue("bronchus", polyline_capsules([layout.roll_point(p) for p in br], [6.5, 5.0, 3.5]), air)
        )
        thy = np.array(
            [cxy["C7"][0] + s * 16.0, cxy["C7"][1] - levels["C7"].dims.depth / 2 - 22.0, cz["C7"] + 6]
        )
        out.append(Tissue("thyroid", [Ellipsoid(layout.roll_point(thy), rz, [9.0, 9.0, 20.0])], 110.0))
        car = [np.array([cxy[n][0] + s * 25.0, cxy[n][1] - 20.0, cz[n]]) for n in ("C2", "C4", "C6", "T1")]
        out.append(Tissue("carotid", polyline_capsules([layout.roll_point(p) for p in car], 3.5), blood))
        jug = [np.array([cxy[n][0] + s * 32.0, cxy[n][1] - 14.0, cz[n]]) for n in ("C2", "C4", "C6", "T1")]
        out.append(Tissue("jugular", polyline_capsules([layout.roll_point(p) for p in jug], 5.5), vein))

    # Psoas muscles from T12 down along the lumbar bodies into the pelvis.
    for s in (-1.0, 1.0):
        rows = []
        names = [n for n in (last_t, "L1", "L2", "L3", "L4", "L5", "L6") if n in levels]
        for q, n in enumerate(names):
            lv = levels[n]
            r = 7.0 + 3.5 * q
            rows.append(
                (cz[n], cxy[n][0] + s * (lv.dims.width / 2 + r * 0.8), cxy[n][1] - 4.0 + q * -2.0, r, r * 1.1)
            )
        s1 = sac[0]
        rows.append((cz[s1] - 30.0, cxy[s1][0] + s * 62.0, cxy[s1][1] - 55.0, 24.0, 24.0))
        out.append(Tissue("psoas", [loft(rows)], muscle))
    # Paraspinal muscles behind the laminae, C2 to the sacrum; fatty in the elderly.
    para_hu = muscle - 60.0 * spec.degeneration * float(rng.uniform(0.3, 1.0))
    for s in (-1.0, 1.0):
        rows = []
        for lv in layout.levels[1:-2]:
            d = lv.dims
            c = layout.unroll_point(lv.centre)
            kind = lv.name[0]
            w = {"C": 15.0, "T": 20.0, "L": 27.0, "S": 20.0}[kind] * spec.body_scale
            depth = {"C": 17.0, "T": 19.0, "L": 24.0, "S": 14.0}[kind]
            y = c[1] + d.depth / 2 + d.canal_depth + depth * 0.75
            rows.append((c[2], c[0] + s * (w + 4.0), y, w, depth))
        out.append(Tissue("paraspinal", [loft(rows)], para_hu))
    # Gluteal muscles behind and beside the pelvis.
    s1 = sac[0]
    for s in (-1.0, 1.0):
        rows = [
            (cz[s1] + 20.0, cxy[s1][0] + s * 70.0, cxy[s1][1] + 25.0, 30.0, 25.0),
            (cz[sac[-1]] - 20.0, cxy[s1][0] + s * 95.0, cxy[s1][1] + 10.0, 55.0, 45.0),
            (cz[sac[-1]] - 120.0, cxy[s1][0] + s * 100.0, cxy[s1][1] - 10.0, 45.0, 40.0),
        ]
        out.append(Tissue("gluteus", [loft(rows)], muscle))
    # Spinal canal: CSF in the dural sac.
    out.append(Tissue("csf", skeleton.canal, float(rng.uniform(5, 15))))
    # ---- head: brain inside the vault, cerebellum, sinuses
    c1 = levels["C1"]
    brain = Ellipsoid(c1.to_world([0, 10.0, 80.0]), c1.rot, [66.0, 86.0, 72.0])
    out.append(Tissue("brain", [brain], float(rng.uniform(30, 40))))
    out.append(
        Tissue("cerebellum", [Ellipsoid(c1.to_world([0, 40.0, 38.0]), c1.rot, [48.0, 28.0, 22.0])], 38.0)
    )
    for s in (-1.0, 1.0):
        out.append(
            Tissue(
                "maxillary_sinus",
                [Ellipsoid(c1.to_world([s * 22.0, -70.0, 30.0]), c1.rot, [12.0, 16.0, 16.0])],
                air,
            )
        )
        out.append(
            Tissue(
                "mastoid", [Ellipsoid(c1.to_world([s * 48.0, 14.0, 28.0]), c1.rot, [6.0, 8.0, 8.0])], -700.0
            )
        )
    out.append(
        Tissue(
            "nasopharynx", [Capsule(c1.to_world([0, -22.0, 8.0]), c1.to_world([0, -55.0, 28.0]), 9.0)], air
        )
    )
    return out


def _rows_between(table: F64, z_lo: float, z_hi: float) -> F64:
    """Rows of a (z, ...) table between two heights, with rows interpolated exactly at both ends."""
    z = table[:, 0]
    ends = [
        np.array([zz, *(np.interp(zz, z, table[:, c]) for c in range(1, table.shape[1]))])
        for zz in (z_lo, z_hi)
    ]
    inside = table[(z > z_lo) & (z < z_hi)]
    return np.vstack([ends[0], inside, ends[1]])


def _rz(angle: float) -> F64:
    return rotation_z(angle)


def _vessel_texture(grid: Grid, rng: np.random.Generator, spec: PhantomSpec) -> Texture:
    """Lung parenchyma: ~-850 HU with a network of vessels (where two smooth noise fields are both ~0)."""
    base = float(rng.uniform(-880, -820))
    seed = int(rng.integers(2**31))
    radius = float(rng.uniform(0.33, 0.42))

    def texture(x: F32, y: F32, z: F32, box: tuple[slice, slice, slice]) -> F32:
        shape = tuple(s.stop - s.start for s in box)
        g = np.random.default_rng(seed)
        sig = tuple(max(5.0 / sp, 0.6) for sp in (grid.spacing[2], grid.spacing[1], grid.spacing[0]))
        n1 = _smooth_noise(shape, sig, g)
        n2 = _smooth_noise(shape, sig, g)
        # Tubes: the intersection of two thin sheets |n1| ~ 0 and |n2| ~ 0, anti-aliased.
        r2 = n1 * n1 + n2 * n2
        vessels = np.clip((radius * radius - r2) / (radius * radius) * 3.0, 0.0, 1.0)
        return (base + (40.0 - base) * 0.8 * vessels + 12.0 * n1).astype(np.float32)

    return texture


def _bowel_texture(
    grid: Grid, rng: np.random.Generator, spec: PhantomSpec, oral: bool, fat_hu: float
) -> Texture:
    """Abdominal contents: bowel loops (thresholded smooth noise), gas pockets, mesenteric fat."""
    seed = int(rng.integers(2**31))
    fill = float(np.clip(0.6 - 0.08 * (spec.adiposity - 1.0), 0.35, 0.75))
    gas_frac = float(rng.uniform(0.04, 0.2))
    fluid = float(rng.uniform(15, 35))
    lumen = float(rng.uniform(250, 450)) if oral else fluid

    def texture(x: F32, y: F32, z: F32, box: tuple[slice, slice, slice]) -> F32:
        shape = tuple(s.stop - s.start for s in box)
        g = np.random.default_rng(seed)
        sig_loops = tuple(max(9.0 / sp, 0.6) for sp in (grid.spacing[2], grid.spacing[1], grid.spacing[0]))
        loops = _smooth_noise(shape, sig_loops, g)
        gas = _smooth_noise(shape, sig_loops, g)
        thr = float(np.quantile(loops, 1.0 - fill))
        in_bowel = np.clip((loops - thr) * 2.5, 0.0, 1.0)
        wall = np.clip(1.0 - np.abs(loops - thr) * 6.0, 0.0, 1.0)
        # Gas rises: more gas anteriorly (smaller y) in a supine patient.
        yn = (y - y.mean()) / max(float(np.ptp(y)), 1.0)
        gthr = float(np.quantile(gas, 1.0 - gas_frac)) + 0.8 * yn
        in_gas = np.clip((gas - gthr) * 2.5, 0.0, 1.0) * in_bowel
        if oral:
            # Oral contrast fills some loops only (a third smooth field picks which).
            which = np.clip(_smooth_noise(shape, sig_loops, g) * 2.0, 0.0, 1.0)
            content = fluid + (lumen - fluid) * which
        else:
            content = np.float32(lumen)
        hu = fat_hu + in_bowel * (content - fat_hu) + wall * (40.0 - fat_hu) * 0.5
        hu = hu + in_gas * (-1000.0 - hu)
        return hu.astype(np.float32)

    return texture
