"""The shipped weights (newest ``weights/<version>/``) end to end on a held-out phantom.

Bounds come from measurement (v0.1.0-phantom, CPU): on this phantom (lumbar field of view, 2 mm grid,
seed 700001) the engine predicted 6 of 7 vertebrae (T11-L5 of T10-L5), identified 5, with distances
1.9-17.1 mm (median 6.2 mm), and its mask covered 59 % of the labelled spine. The bounds leave room
for numerical differences between CPUs, not for a broken engine: a shifted labelling or a lost spine
fails them.
"""

from __future__ import annotations

import numpy as np
import pytest

from inference.engine.engine import Engine, WeightsError, default_weights_dir
from inference.phantoms import generate_phantom
from inference.training.metrics import match_subject


@pytest.fixture(scope="module")
def shipped_engine() -> Engine:
    try:
        directory = default_weights_dir()
    except WeightsError:
        pytest.skip("no shipped weights in weights/")
    return Engine.from_weights(directory, device="cpu")


def test_shipped_engine_labels_a_held_out_lumbar_phantom(shipped_engine: Engine) -> None:
    ph = generate_phantom(seed=700001, fov="lumbar", spacing=(2.0, 2.0, 2.0))
    result = shipped_engine.predict(ph.volume)
    pred = {lm.label: np.asarray(lm.position_lps) for lm in result.landmarks}
    match = match_subject(ph.centroids, pred)
    assert 4 <= len(result.landmarks) <= len(ph.centroids) + 1
    assert sum(match.identified.values()) >= 3
    assert float(np.median(list(match.distances.values()))) <= 12.0
    assert all(0.0 <= lm.confidence <= 1.0 for lm in result.landmarks)
    # The stage-1 mask covers most of the labelled spine on the input grid.
    spine = ph.labels > 0
    assert result.mask.shape == ph.volume.shape
    assert (result.mask[spine] > 0).mean() > 0.4  # measured 0.59
