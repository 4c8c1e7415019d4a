"""What the engine returns: labelled landmarks, the spine mask and timings (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

#: VerSe label numbers (anjany/verse): 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum, 28 T13.
VERTEBRA_NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{7 + i: f"T{i}" for i in range(1, 13)},
    **{19 + i: f"L{i}" for i in range(1, 7)},
    26: "S1",
    28: "T13",
}

#: Vertebra labels in cranio-caudal anatomical order (T13 sits between T12 and L1).
ANATOMICAL_ORDER: tuple[int, ...] = (*range(1, 20), 28, *range(20, 26))

#: The labels the engine localises: C1..L5 plus the L6 and T13 variants (sacrum excluded).
ENGINE_LABELS: tuple[int, ...] = ANATOMICAL_ORDER


def vertebra_name(label: int) -> str:
    """The conventional name of a VerSe label ("L3"), or raise ValueError for an unknown label."""
    try:
        return VERTEBRA_NAMES[label]
    except KeyError:
        raise ValueError(f"unknown VerSe vertebra label {label}") from None


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
