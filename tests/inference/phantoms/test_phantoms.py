"""Ground truth of the synthetic CT phantoms (fast: coarse grids, a few seconds in all)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dicom_io.labels import ANATOMICAL_ORDER, vertebra_name
from inference.phantoms import FOV_NAMES, Phantom, PhantomSpec, generate_phantom
from inference.phantoms.anatomy import build_skeleton, level_positions

COARSE = (3.0, 3.0, 3.0)


@pytest.fixture(scope="module")
def whole() -> Phantom:
    return generate_phantom(seed=5, fov="whole", spacing=COARSE, variant="none")


@pytest.fixture(scope="module")
def quiet_whole() -> Phantom:
    """No noise, no streaks: HU values can be checked against the tissue tables."""
    return generate_phantom(
        seed=6,
        fov="whole",
        spacing=(2.0, 2.0, 2.0),
        variant="none",
        noise_hu=0.0,
        beam_hardening=0.0,
        implant_levels=(),
        contrast="none",
    )


def _ordered(ph: Phantom) -> list[int]:
    return [lab for lab in ANATOMICAL_ORDER if lab in ph.centroids]


def _assert_centroids_in_own_masks(ph: Phantom) -> None:
    for label, c in ph.centroids.items():
        if label == 1:
            continue  # the atlas is a ring: its centre of mass lies in the canal (so does VerSe's)
        ijk = ph.volume.lps_to_index(np.array(c))
        lo = np.floor(ijk).astype(int)
        # The 2x2x2 voxels around the centroid: centroids of C2-T5 sit at the posterior body wall.
        near = ph.labels[lo[2] : lo[2] + 2, lo[1] : lo[1] + 2, lo[0] : lo[0] + 2]
        assert (near == label).any(), f"centroid of {vertebra_name(label)} is not in its own mask"


def test_api_types_and_grid(whole: Phantom) -> None:
    ph = whole
    assert ph.volume.array.dtype == np.float32
    assert ph.labels.dtype == np.uint8
    assert ph.labels.shape == ph.volume.array.shape == ph.spec.shape
    assert np.allclose(ph.volume.spacing, COARSE)
    assert np.allclose(ph.volume.direction, np.eye(3))  # axial slices, k towards the head
    assert set(ph.centroids) == set(range(1, 25))
    assert set(np.unique(ph.labels)) >= set(range(1, 25)) | {26}
    assert all(isinstance(v, float) for c in ph.centroids.values() for v in c)


def test_centroids_inside_own_masks(whole: Phantom) -> None:
    _assert_centroids_in_own_masks(whole)


@pytest.mark.parametrize(
    "seed,fov", [(21, "lumbar"), (22, "cervical"), (23, "chest"), (24, "abdomen_pelvis")]
)
def test_fields_of_view_and_masks(seed: int, fov: str) -> None:
    ph = generate_phantom(seed=seed, fov=fov, spacing=COARSE)
    assert ph.centroids, f"{fov}: no vertebra in the field of view"
    lo, hi = ph.volume.index_to_lps([0, 0, 0]), ph.volume.index_to_lps(np.array(ph.volume.shape[::-1]) - 1)
    for c in ph.centroids.values():  # only vertebrae whose centroid is in the field of view
        assert np.all(np.asarray(c) >= lo - 1e-6) and np.all(np.asarray(c) <= hi + 1e-6)
    expected = {"lumbar": {22, 23}, "cervical": {3, 4, 5}, "chest": {12, 13, 14}, "abdomen_pelvis": {21, 22}}
    assert expected[fov] <= set(ph.centroids)
    _assert_centroids_in_own_masks(ph)


@pytest.mark.parametrize("seed", range(30, 36))
def test_order_and_neighbour_distances(seed: int) -> None:
    """Labels run cranio-caudally along the spine; neighbours 12.5-50 mm apart (Payer et al.)."""
    spec = PhantomSpec.random(seed, fov="whole", spacing=(4.0, 4.0, 4.0))
    ph = generate_phantom(spec)
    labels = _ordered(ph)
    assert labels == sorted(labels, key=ANATOMICAL_ORDER.index)
    assert len(labels) == len(set(labels))
    pts = np.array([ph.centroids[lab] for lab in labels])
    assert np.all(np.diff(pts[:, 2]) < 0), "centroids must descend from C1 to L5"
    gaps = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    assert np.all((gaps > 12.5) & (gaps < 50.0)), dict(zip(labels[1:], gaps.round(1), strict=True))
    by_name = dict(zip(labels[1:], gaps, strict=True))
    # anchors.md: cervical ~15-18, thoracic ~20-28, lumbar ~33-38 mm (margins: body size, narrowed discs).
    for lab, gap in by_name.items():
        name = vertebra_name(lab)
        if name in ("C4", "C5", "C6"):
            assert 13.0 < gap < 22.0, (name, gap)
        if name in ("T4", "T5", "T6", "T7"):
            assert 17.0 < gap < 30.0, (name, gap)
        if name in ("L2", "L3", "L4"):
            assert 25.0 < gap < 45.0, (name, gap)


def test_hu_ranges(quiet_whole: Phantom) -> None:
    ph = quiet_whole
    vol = ph.volume
    hu = vol.array
    spec = ph.spec
    layout = level_positions(spec)
    # Cancellous bone at the centre of each lumbar body (the spec's density, +-level jitter), 60-300 HU.
    for lv in layout.levels:
        if lv.name in ("L1", "L2", "L3", "L4"):
            i, j, k = np.round(vol.lps_to_index(lv.centre)).astype(int)
            value = float(np.median(hu[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2]))
            assert 40.0 <= value <= 340.0, (lv.name, value)
            assert abs(value - spec.cancellous_hu) < 60.0, (lv.name, value, spec.cancellous_hu)
    # Discs between L2 and L3: 80-120 HU (annulus/nucleus), blurred a little by neighbours.
    l2, l3 = layout.level("L2"), layout.level("L3")
    i, j, k = np.round(vol.lps_to_index(0.5 * (l2.centre + l3.centre))).astype(int)
    assert 40.0 <= float(hu[k, j, i]) <= 160.0
    # Cortical shell: the brightest bone of a vertebra (700-1200 HU drawn) survives partial volume.
    l3_max = float(hu[ph.labels == 22].max())
    assert 450.0 <= l3_max <= 1300.0
    # Air outside the patient, fat and lungs present in their ranges.
    assert float(np.median(hu[:, :3, :3])) <= -950.0
    assert ((hu > -130) & (hu < -70)).mean() > 0.03, "too little fat"
    assert ((hu > -900) & (hu < -780)).mean() > 0.01, "no lungs"
    assert ((hu > 30) & (hu < 70)).mean() > 0.03, "too little muscle / soft tissue"
    assert hu.min() >= -1024.0 and hu.max() <= 3071.0


def test_coarse_and_fine_have_the_same_anatomy() -> None:
    coarse = generate_phantom(seed=9, fov="lumbar", spacing=(4.0, 4.0, 4.0))
    fine = generate_phantom(seed=9, fov="lumbar", spacing=(1.5, 1.5, 2.5))
    assert coarse.centroids.keys() == fine.centroids.keys()
    for lab in coarse.centroids:
        assert np.allclose(coarse.centroids[lab], fine.centroids[lab], atol=1e-9)
    assert np.allclose(coarse.spec.world_box()[0], fine.spec.world_box()[0], atol=2.5)


def test_deterministic_per_seed() -> None:
    assert PhantomSpec.random(3) == PhantomSpec.random(3)
    assert PhantomSpec.random(3) != PhantomSpec.random(4)
    a = generate_phantom(seed=12, fov="cervical", spacing=(4.0, 4.0, 4.0))
    b = generate_phantom(seed=12, fov="cervical", spacing=(4.0, 4.0, 4.0))
    assert np.array_equal(a.volume.array, b.volume.array)
    assert np.array_equal(a.labels, b.labels)
    assert a.centroids == b.centroids


def test_shape_override_keeps_field_of_view() -> None:
    spec = PhantomSpec.random(40, fov="thoracic")
    small = PhantomSpec.random(40, fov="thoracic", shape=(60, 64, 64))
    assert small.shape == (60, 64, 64)
    assert np.allclose(spec.world_box()[0], small.world_box()[0])
    assert np.allclose(spec.world_box()[1], small.world_box()[1], rtol=0.02)


@pytest.mark.parametrize(
    "variant,present,absent",
    [
        ("T13", {28, 24}, {25}),
        ("L6", {25, 24}, {28}),
        ("lumbarised_S1", {25}, {28}),
        ("sacralised_L5", {24}, {25, 28}),
        ("11_ribs", {19, 24}, {25, 28}),
    ],
)
def test_variants(variant: str, present: set[int], absent: set[int]) -> None:
    ph = generate_phantom(
        seed=50, fov="thoracolumbar", spacing=(4.0, 4.0, 4.0), variant=variant, fov_bottom_level=30.0
    )
    assert present <= set(ph.centroids), sorted(ph.centroids)
    assert not absent & set(ph.centroids)
    skeleton = build_skeleton(ph.spec, level_positions(ph.spec))
    ribs = {st.name for st in skeleton.others if st.name.startswith("rib")}
    pairs = len(ribs) // 2
    assert pairs == {"T13": 13, "11_ribs": 11}.get(variant, 12)


def test_implants_are_metal_dense() -> None:
    ph = generate_phantom(seed=60, fov="lumbar", spacing=(2.0, 2.0, 2.0), implant_levels=(22, 23))
    assert (ph.volume.array > 2500).sum() > 20


def test_every_fov_generates() -> None:
    for n, fov in enumerate(FOV_NAMES):
        ph = generate_phantom(seed=70 + n, fov=fov, spacing=(5.0, 5.0, 5.0))
        assert ph.centroids, fov


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="field of view"):
        PhantomSpec.random(1, fov="knee")
    with pytest.raises(ValueError, match="variant"):
        PhantomSpec.random(1, variant="L7")
    with pytest.raises(ValueError, match="spec or a seed"):
        generate_phantom()
    spec = PhantomSpec.random(1, spacing=(4.0, 4.0, 4.0))
    with pytest.raises(ValueError):
        dataclasses.replace(spec, spacing=(0.0, 1.0, 1.0))
