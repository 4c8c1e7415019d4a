"""What the engine returns: labelled landmarks, the spine mask and timings (no torch here).

Labels are VerSe label numbers (:mod:`dicom_io.labels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dicom_io.labels import vertebra_name


@dataclass(frozen=True)
class Landmark:
    """One labelled vertebra: its centroid in LPS mm and a confidence in [0, 1]."""

    label: int
    position_lps: tuple[float, float, float]
    confidence: float

    @property
    def name(self) -> str:
        return vertebra_name(self.label)


@dataclass
class Result:
    """The engine's output for one volume."""

    #: uint8 mask on the input volume's grid (same shape as ``Volume.array``): 0 background,
    #: 1 vertebral column, or VerSe labels where per-vertebra masks are available.
    mask: npt.NDArray[np.uint8]
    landmarks: list[Landmark]
    #: Seconds per stage, e.g. {"stage1": 1.2, "stage2": 3.4, "postprocess": 0.01}.
    timings: dict[str, float] = field(default_factory=dict)
    model_version: str = "unknown"
