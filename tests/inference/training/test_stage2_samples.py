"""Stage-2 training crops: the top of the sacrum is shown to the network as "no vertebra"."""

from __future__ import annotations

import numpy as np

from dicom_io.labels import LABEL_BY_NAME, SACRUM_LABEL
from dicom_io.volume import Volume
from inference.engine.plan import Stage2Plan
from inference.training.datasets import (
    SACRUM_HALF_WIDTH_MM,
    SACRUM_TOP_MM,
    Subject,
    sacrum_top_point,
    stage2_sample,
)

L5 = LABEL_BY_NAME["L5"]
SP = 2.0


def _subject(with_sacrum: bool = True) -> Subject:
    """A 200 x 200 x 400 mm block whose HU encode height (4 HU per mm of z), a sacrum block 80 mm wide
    and 60 mm high whose top lies at z = -60, and L5's body centroid 40 mm above it."""
    nk, nj, ni = 200, 100, 100
    aff = np.diag([SP, SP, SP, 1.0])
    aff[:3, 3] = (-100.0, -100.0, -200.0)
    z = aff[2, 3] + SP * np.arange(nk, dtype=np.float32)
    array = np.broadcast_to((4.0 * z)[:, None, None], (nk, nj, ni)).copy()
    labels = np.zeros((nk, nj, ni), np.uint8)
    if with_sacrum:
        x = aff[0, 3] + SP * np.arange(ni)
        zz = (z >= -120) & (z <= -60)
        labels[np.ix_(zz, np.arange(20, 40), np.abs(x) <= 40)] = SACRUM_LABEL
    return Subject("block", Volume(array, aff), labels, {L5: np.array([0.0, -30.0, -20.0])})


def test_the_sacrum_top_point_lies_on_the_top_of_the_sacrum_near_its_midline() -> None:
    rng = np.random.default_rng(3)
    pts = np.array([sacrum_top_point(_subject(), rng) for _ in range(200)])
    assert pts[:, 2].max() <= -60 + 1e-6 and pts[:, 2].min() >= -60 - SACRUM_TOP_MM - 1e-6
    assert np.abs(pts[:, 0]).max() <= SACRUM_HALF_WIDTH_MM + 1e-6
    assert pts[:, 0].min() < -SACRUM_HALF_WIDTH_MM / 2 and pts[:, 0].max() > SACRUM_HALF_WIDTH_MM / 2
    assert sacrum_top_point(_subject(with_sacrum=False), rng) is None
    # A top made only of two alae far from the midline still gives a point (no empty draw).
    alae = _subject(with_sacrum=False)
    alae.labels[170:175, 20:40, :10] = SACRUM_LABEL
    alae.labels[170:175, 20:40, -10:] = SACRUM_LABEL
    p = sacrum_top_point(alae, rng)
    assert p is not None and abs(p[0]) > 70


def _crop_centres_z(subject: Subject, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode each crop's centre height from its central voxels; and whether it has a vertebra."""
    plan = Stage2Plan()
    rng = np.random.default_rng(seed)
    zs, positive = [], []
    for _ in range(n):
        s = stage2_sample(subject, plan, rng, augment=False)
        c = np.asarray(plan.crop) // 2
        hu = float(s.image[0, c[0] - 1:c[0] + 1, c[1] - 1:c[1] + 1, c[2] - 1:c[2] + 1].mean()) * 1000.0
        zs.append(hu / 4.0)
        positive.append(s.has_target)
    return np.array(zs), np.array(positive)


def test_about_one_crop_in_twelve_shows_the_sacrum_as_no_vertebra() -> None:
    def on_top(subject: Subject) -> float:
        z, positive = _crop_centres_z(subject, 400, seed=5)
        return float(((z <= -60 + 14) & (z >= -60 - SACRUM_TOP_MM - 14) & ~positive).mean())

    with_sacrum, without = on_top(_subject()), on_top(_subject(with_sacrum=False))
    # The crops drawn anywhere in the block land there about 2 % of the time; the sacrum crops add 8 %.
    assert 0.05 <= with_sacrum - without <= 0.12
    assert without < 0.04
