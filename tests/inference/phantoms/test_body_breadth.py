"""Vertebral bodies as broad as people's are: body width varies between people independently of body
height (``PhantomSpec.body_breadth``, on its own random stream), so the level head cannot read a level
from how wide a body is, and a broad-bodied patient's L1 does not look like a narrow-bodied L2."""

from __future__ import annotations

import numpy as np

from dicom_io.labels import LABEL_BY_NAME
from inference.phantoms import Phantom, PhantomSpec, generate_phantom
from inference.phantoms.spec import BODY_BREADTH_BOUNDS

L1 = LABEL_BY_NAME["L1"]


def _lumbar(breadth: float) -> Phantom:
    return generate_phantom(seed=43, fov="lumbar", spacing=(1.0, 1.0, 1.0), noise_hu=0.0, beam_hardening=0.0,
                            scoliosis=(), body_roll=0.0, body_breadth=breadth)


def _body_extent(ph: Phantom, label: int) -> tuple[float, float]:
    """Left-right width and front-back depth (mm) of the label's bone through its body centroid: the
    width along the row through the centroid (5 mm high, 5 mm deep band), the depth along the column
    through it up to the first gap (the canal behind the body)."""
    inv = np.linalg.inv(ph.volume.affine)
    i, j, k = (int(round(x)) for x in inv[:3, :3] @ np.asarray(ph.centroids[label]) + inv[:3, 3])
    m = ph.labels == label
    width = float(m[k - 2:k + 3, j - 2:j + 3, :].any(axis=(0, 1)).sum())
    column = m[k - 2:k + 3, :, i - 2:i + 3].any(axis=(0, 2))
    front = back = j
    while front > 0 and column[front - 1]:
        front -= 1
    while back < column.size - 1 and column[back + 1]:
        back += 1
    return width, float(back - front + 1)


def test_body_breadth_varies_between_people_on_its_own_stream() -> None:
    specs = [PhantomSpec.random(seed) for seed in range(300)]
    breadth = np.array([s.body_breadth for s in specs])
    scale = np.array([s.vertebra_scale for s in specs])
    assert BODY_BREADTH_BOUNDS[0] <= breadth.min() and breadth.max() <= BODY_BREADTH_BOUNDS[1]
    assert 0.045 < breadth.std() < 0.075, breadth.std()
    assert abs(breadth.mean() - 1.0) < 0.015, breadth.mean()
    # Independent of the overall size (so the width-to-height ratio varies too).
    assert abs(np.corrcoef(breadth, scale)[0, 1]) < 0.2


def test_a_broader_body_is_wider_and_deeper_at_the_same_height() -> None:
    narrow, broad = _lumbar(0.88), _lumbar(1.16)
    w0, d0 = _body_extent(narrow, L1)
    w1, d1 = _body_extent(broad, L1)
    # Width follows the breadth, depth its square root (1 mm voxels: a few mm of tolerance).
    assert abs(w1 / w0 - 1.16 / 0.88) < 0.06, (w0, w1)
    assert abs(d1 / d0 - np.sqrt(1.16 / 0.88)) < 0.07, (d0, d1)
    # The body height (centroid spacing L1-L2) is the same person's.
    l2 = LABEL_BY_NAME["L2"]
    gap = [np.linalg.norm(np.subtract(ph.centroids[L1], ph.centroids[l2])) for ph in (narrow, broad)]
    assert abs(gap[0] - gap[1]) < 1.5, gap
