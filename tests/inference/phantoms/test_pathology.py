"""What real elderly spines show and the generator must too: fragility fractures where bone is thin, gas
clefts in collapsed bodies, calcified aortic plaque, coarse osteoporotic marrow, and viscera that do not
sit at one fixed vertebral level (so the level head must read the bones)."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_io.labels import LABEL_BY_NAME
from inference.phantoms import Phantom, PhantomSpec, generate_phantom
from inference.phantoms.anatomy import build_skeleton, level_positions
from inference.phantoms.generate import trabecular_texture
from inference.phantoms.shapes import Ellipsoid, Grid
from inference.phantoms.tissue import _aorta_path, vascular_calcification, viscera_offsets

SEEDS = range(3000, 3600)
JUNCTION = {LABEL_BY_NAME[n] for n in ("T11", "T12", "L1", "L2")}


def _cleft_seed() -> int:
    for seed in range(2000, 2400):
        spec = PhantomSpec.random(seed, fov="thoracolumbar")
        if spec.fractures and any(
            st.name == "vacuum_cleft" for st in build_skeleton(spec, level_positions(spec)).others
        ):
            return seed
    raise AssertionError("no phantom with a vacuum cleft in 400 seeds")


@pytest.fixture(scope="module")
def cleft_phantom() -> Phantom:
    return generate_phantom(
        seed=_cleft_seed(), fov="thoracolumbar", spacing=(1.0, 1.0, 1.0), noise_hu=0.0, beam_hardening=0.0
    )


def test_fragility_fractures_follow_bone_density() -> None:
    specs = [PhantomSpec.random(seed) for seed in SEEDS]
    thin = [s for s in specs if s.cancellous_hu < 110]
    dense = [s for s in specs if s.cancellous_hu > 200]
    assert len(thin) > 40 and len(dense) > 40
    share_thin = np.mean([bool(s.fractures) for s in thin])
    share_dense = np.mean([bool(s.fractures) for s in dense])
    assert share_thin > 0.25 > 0.1 > share_dense, (share_thin, share_dense)
    # Fragility fractures cluster at the thoracolumbar junction.
    levels = [lab for s in thin for lab in s.fractures]
    assert np.mean([lab in JUNCTION for lab in levels]) > 0.5


def test_vacuum_cleft_is_gas_inside_its_fractured_body(cleft_phantom: Phantom) -> None:
    spec = cleft_phantom.spec
    skeleton = build_skeleton(spec, level_positions(spec))
    clefts = [st for st in skeleton.others if st.name == "vacuum_cleft"]
    assert clefts
    for st in clefts:
        (prim,) = st.prims
        assert isinstance(prim, Ellipsoid)
        i, j, k = np.round(cleft_phantom.volume.lps_to_index(prim.center)).astype(int)
        assert cleft_phantom.volume.array[k, j, i] < -300, "the cleft holds no gas"
        assert cleft_phantom.labels[k, j, i] in spec.fractures, "the cleft is not inside a fractured body"


@pytest.mark.parametrize("seed", [3001, 3002, 3003])
def test_aortic_plaque_sits_on_the_wall_and_comes_with_age(seed: int) -> None:
    young = PhantomSpec.random(seed, degeneration=0.0)
    old = PhantomSpec.random(seed, degeneration=1.0)
    assert vascular_calcification(young, build_skeleton(young, level_positions(young))) == []
    layout = level_positions(old)
    (plaque,) = vascular_calcification(old, build_skeleton(old, layout))
    assert len(plaque.prims) >= 10 and plaque.marrow_hu > 800
    path = np.array([layout.roll_point(p) for p in _aorta_path(old, layout, viscera_offsets(old))])
    for prim in plaque.prims:
        assert isinstance(prim, Ellipsoid)
        # Distance from the plaque's centre to the aorta's centre line: on the wall (radius 8.5-13 mm).
        seg_a, seg_b = path[:-1], path[1:]
        d = seg_b - seg_a
        t = np.clip(np.einsum("ij,ij->i", prim.center - seg_a, d) / np.einsum("ij,ij->i", d, d), 0, 1)
        dist = np.min(np.linalg.norm(seg_a + t[:, None] * d - prim.center, axis=1))
        assert 7.0 < dist < 15.0, dist


def test_rendered_plaque_is_bright() -> None:
    spec = PhantomSpec.random(
        3001,
        fov="abdomen",
        spacing=(1.0, 1.0, 1.0),
        degeneration=1.0,
        noise_hu=0.0,
        beam_hardening=0.0,
        contrast="none",
    )
    ph = generate_phantom(spec)
    (plaque,) = vascular_calcification(spec, build_skeleton(spec, level_positions(spec)))
    inside = []
    for prim in plaque.prims:
        i, j, k = np.round(ph.volume.lps_to_index(prim.center)).astype(int)
        if (
            0 <= k < ph.volume.array.shape[0]
            and 0 <= j < ph.volume.array.shape[1]
            and 0 <= i < ph.volume.array.shape[2]
        ):
            inside.append(float(ph.volume.array[k, j, i]))
    assert len(inside) >= 5
    # Unenhanced blood and the vessel wall are ~40 HU; calcium stands out even with partial volume.
    assert np.median(inside) > 200, inside


def test_viscera_move_against_the_spine() -> None:
    offsets = [viscera_offsets(PhantomSpec.random(seed)) for seed in SEEDS[:300]]
    dome = np.array([o.diaphragm for o in offsets])
    bif = np.array([o.bifurcation for o in offsets])
    # About +-1 vertebral level (20-35 mm) either way, centred on the textbook level.
    assert 12 < dome.std() < 22 and dome.min() < -25 and dome.max() > 25 and abs(dome.mean()) < 4
    assert 10 < bif.std() < 20
    assert np.corrcoef(dome, [o.kidneys for o in offsets])[0, 1] > 0.3  # kidneys ride with the diaphragm
    # The bifurcation stays between L3 and L5 whatever the draw.
    for seed in SEEDS[:40]:
        spec = PhantomSpec.random(seed)
        layout = level_positions(spec)
        z = {lv.name: float(layout.unroll_point(lv.centre)[2]) for lv in layout.levels}
        bif_z = _aorta_path(spec, layout, viscera_offsets(spec))[-1][2]
        assert z["L5"] - 10 < bif_z < z["L3"], (seed, bif_z, z["L3"], z["L5"])


def test_osteoporotic_marrow_is_coarse_and_vertical() -> None:
    grid = Grid((0.0, 0.0, 0.0), (2.0, 2.0, 2.0), (32, 32, 32))
    thin = trabecular_texture(PhantomSpec.random(1, cancellous_hu=70.0), grid)
    dense = trabecular_texture(PhantomSpec.random(1, cancellous_hu=280.0), grid)
    assert thin is not None
    assert float(thin.std()) > 35.0
    assert dense is None or float(dense.std()) < 0.5 * float(thin.std())

    def corr(a: np.ndarray, axis: int) -> float:
        return float(np.mean(a * np.roll(a, 1, axis=axis)) / np.mean(a * a))

    # Striae along the body axis (k): neighbours along k are more alike than across (i).
    assert corr(thin, 0) > corr(thin, 2) + 0.15
