"""The phantoms' independent random streams: a seed and a stream number give one generator."""

from __future__ import annotations

import numpy as np

#: Independent random streams, so one choice never shifts the draws of another.
STREAM_ANATOMY = 1
STREAM_ACQUISITION = 2
STREAM_FOV = 3
STREAM_DETAIL = 4
STREAM_NOISE = 5


def stream(seed: int, which: int) -> np.random.Generator:
    """The random generator of one independent stream of a seed."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, which, 7919])
