"""Field-of-view cuts of the training augmentation: narrow slabs and circular reconstruction fields occur
as often as real spine CT has them (the real VerSe scan is a 105 mm wide sagittal slab: outside-FOV air
lies 52 mm beside the spine, where in the phantoms only the lungs were ever dark)."""

from __future__ import annotations

import numpy as np

from inference.training.augment import OUTSIDE_HU, cut_field_of_view

SHAPE = (64, 64, 64)  # a stage-2 crop: 128 mm at 2 mm, (k head-foot, j front-back, i left-right)
SPACING = 2.0
CENTRE = np.array([32.0, 32.0, 32.0])


def _cuts(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = np.zeros(SHAPE, np.float32)
        cut_field_of_view(img, None, CENTRE, SPACING, rng)
        out.append(img <= OUTSIDE_HU + 0.5)
    return out


def test_narrow_left_right_slabs_are_common() -> None:
    """A slab narrower than the crop on both sides (outside-FOV within 64 mm left and right of the spine,
    as in VerSe's sagittal reconstructions) in at least 12 % of cuts (uniform 35-130 mm half-widths cut
    in 70 % of cuts gave 6.5 %)."""
    cuts = _cuts(600)
    row = [c[32, 32, :] for c in cuts]
    both = np.mean([r[0] and r[-1] for r in row])
    assert both >= 0.12, both
    # ... and never at the spine itself: the slab always keeps at least 30 mm either side.
    assert not any(r[32 - 15 : 32 + 15].any() for r in row)


def test_some_cuts_are_a_circular_field() -> None:
    """A reconstruction circle blanks the crop's corners while the axes through the spine stay inside:
    a box cut cannot do that."""
    cuts = _cuts(600, seed=1)
    corner_only = np.mean([c[32, 0, 0] and not c[32, 0, 32] and not c[32, 32, 0] for c in cuts])
    assert corner_only >= 0.02, corner_only


def test_the_target_is_cut_where_the_image_is() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        img = np.zeros(SHAPE, np.float32)
        target = np.ones(SHAPE, np.uint8)
        cut_field_of_view(img, target, CENTRE, SPACING, rng)
        np.testing.assert_array_equal(target == 0, img <= OUTSIDE_HU + 0.5)
