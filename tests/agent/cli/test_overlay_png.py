"""The overlay PNG shows what it claims: mask contours, landmarks and truth in their colours, the right
way up. Decoded pixel by pixel (matplotlib reads the PNG back), not judged by its file size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from matplotlib.image import imread

from agent.cli.overlay import render_overlay
from dicom_io.result import Landmark
from inference.phantoms import Phantom, generate_phantom

YELLOW, CYAN, RED = (1.0, 0.835, 0.31), (0.0, 0.898, 1.0), (1.0, 0.322, 0.322)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return generate_phantom(seed=5, fov="lumbar", spacing=(4.0, 4.0, 4.0), shape=(40, 32, 32))


def _pixels(png: Path, colour: tuple[float, float, float]) -> npt.NDArray[np.intp]:
    """(row, column) of the pixels of ``colour`` (within antialiasing tolerance)."""
    rgb = imread(str(png))[..., :3]
    close = np.all(np.abs(rgb - np.asarray(colour)) < 0.08, axis=-1)
    return np.argwhere(close)


def test_overlay_draws_mask_landmarks_and_truth_in_their_colours(phantom: Phantom, tmp_path: Path) -> None:
    landmarks = [Landmark(label, pos, 0.9) for label, pos in sorted(phantom.centroids.items())]
    mask = (phantom.labels > 0).astype(np.uint8)
    full = render_overlay(
        phantom.volume, mask, landmarks, tmp_path / "full.png", ground_truth=phantom.centroids
    )
    bare = render_overlay(phantom.volume, None, [], tmp_path / "bare.png")

    image = imread(str(full))
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 200
    grey = image[..., :3].mean(axis=-1)
    assert grey.std() > 0.05  # the CT itself is drawn, not a blank canvas
    assert len(_pixels(full, YELLOW)) > 20 * len(landmarks) // 2  # a marker and a name per landmark
    assert len(_pixels(full, CYAN)) > 50  # mask contours
    assert len(_pixels(full, RED)) > 10  # ground-truth crosses
    for colour in (YELLOW, CYAN, RED):
        assert len(_pixels(bare, colour)) == 0  # and none of it without a mask, landmarks or truth


def test_superior_is_up(phantom: Phantom, tmp_path: Path) -> None:
    """A landmark at the most superior vertebra is drawn above one at the most inferior."""
    labels = sorted(phantom.centroids)  # VerSe labels run cranio-caudally
    rows = []
    for label in (labels[0], labels[-1]):
        png = render_overlay(
            phantom.volume, None, [Landmark(label, phantom.centroids[label], 0.9)], tmp_path / f"{label}.png"
        )
        rows.append(float(_pixels(png, YELLOW)[:, 0].mean()))
    assert rows[0] < rows[1] - 20, f"superior landmark drawn at row {rows[0]:.0f}, inferior at {rows[1]:.0f}"
