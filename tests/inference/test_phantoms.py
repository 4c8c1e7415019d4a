"""Ground truth of the synthetic CT phantoms (fast: coarse grids)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.phantoms import PhantomSpec, generate_phantom
from inference.result import ANATOMICAL_ORDER


@pytest.fixture(scope="module")
def whole() -> object:
    return generate_phantom(seed=5, fov="whole", spacing=(3.0, 3.0, 3.0), variant="none")


def test_api_shapes(whole) -> None:  # type: ignore[no-untyped-def]
    ph = whole
    assert ph.volume.array.dtype == np.float32
    assert ph.labels.dtype == np.uint8
    assert ph.labels.shape == ph.volume.array.shape
    assert set(ph.centroids) >= set(range(1, 25))


def test_centroids_inside_own_mask(whole) -> None:  # type: ignore[no-untyped-def]
    ph = whole
    for label, c in ph.centroids.items():
        if label == 1:
            continue  # the atlas is a ring: its centre of mass lies in the canal, as in VerSe
        ijk = ph.volume.lps_to_index(np.array(c))
        # The nearest voxels (1 voxel = 3 mm here) around the centroid carry its label.
        lo = np.floor(ijk).astype(int)
        near = ph.labels[lo[2] : lo[2] + 2, lo[1] : lo[1] + 2, lo[0] : lo[0] + 2]
        assert (near == label).any(), f"centroid of {label} not in its mask"


def test_neighbour_distances_and_order(whole) -> None:  # type: ignore[no-untyped-def]
    ph = whole
    labels = [lab for lab in ANATOMICAL_ORDER if lab in ph.centroids]
    pts = np.array([ph.centroids[lab] for lab in labels])
    gaps = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    assert np.all(gaps > 12.5) and np.all(gaps < 50.0), gaps
    assert np.all(np.diff(pts[:, 2]) < 0), "labels must run cranio-caudally"


def test_coarse_and_fine_same_centroids() -> None:
    a = generate_phantom(seed=9, fov="lumbar", spacing=(4.0, 4.0, 4.0))
    b = generate_phantom(seed=9, fov="lumbar", spacing=(2.0, 2.0, 2.0))
    assert a.centroids.keys() == b.centroids.keys()
    for lab in a.centroids:
        assert np.allclose(a.centroids[lab], b.centroids[lab], atol=1e-6)


def test_spec_deterministic() -> None:
    assert PhantomSpec.random(3) == PhantomSpec.random(3)
    assert PhantomSpec.random(3) != PhantomSpec.random(4)
