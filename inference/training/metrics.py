"""VerSe evaluation metrics, computed the way the challenge code does (anjany/verse utils/eval_utilities.py).

* A GT vertebra ``v`` is *identified* iff it was predicted, and among the GT landmarks of the vertebrae
  present in both GT and prediction, the one nearest to the prediction of ``v`` is ``v`` itself, at a
  distance of at most 20 mm (the challenge code discards distances ``> 20``).
* Identification rate = identified / GT vertebrae present.
* Localisation error = mean distance between prediction and GT over vertebrae present in both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dicom_io.labels import ANATOMICAL_ORDER, vertebra_name

#: VerSe identification threshold (mm), from the challenge evaluation code.
ID_THRESHOLD_MM = 20.0

#: Regions used for per-region reporting (T13 counts as thoracic, L6 as lumbar).
REGIONS: dict[str, tuple[int, ...]] = {
    region: tuple(lab for lab in ANATOMICAL_ORDER if vertebra_name(lab)[0] == letter)
    for region, letter in (("cervical", "C"), ("thoracic", "T"), ("lumbar", "L"))
}

Centroids = Mapping[int, "npt.ArrayLike"]


def region_of(label: int) -> str:
    for name, labels in REGIONS.items():
        if label in labels:
            return name
    raise ValueError(f"label {label} belongs to no C/T/L region")


@dataclass(frozen=True)
class SubjectMatch:
    """Per-vertebra outcome for one subject."""

    #: GT label -> identified (True/False), for every GT vertebra considered.
    identified: dict[int, bool]
    #: label -> distance (mm) for labels present in both GT and prediction.
    distances: dict[int, float]


def match_subject(gt: Centroids, pred: Centroids, labels: Iterable[int] | None = None) -> SubjectMatch:
    """Match predicted to GT centroids of one subject (same coordinate system, mm).

    ``labels`` restricts which GT vertebrae are scored (default: all GT labels given).
    """
    gt_pts = {int(k): np.asarray(v, dtype=np.float64) for k, v in gt.items()}
    pred_pts = {int(k): np.asarray(v, dtype=np.float64) for k, v in pred.items()}
    considered = sorted(gt_pts) if labels is None else sorted(set(labels) & set(gt_pts))
    both = sorted(set(gt_pts) & set(pred_pts))
    distances = {lab: float(np.linalg.norm(pred_pts[lab] - gt_pts[lab])) for lab in both}
    identified = {lab: False for lab in considered}
    if both:
        gt_arr = np.stack([gt_pts[lab] for lab in both])
        for lab in both:
            if lab not in identified:
                continue
            d = np.linalg.norm(gt_arr - pred_pts[lab], axis=1)
            nearest = both[int(np.argmin(d))]
            identified[lab] = nearest == lab and float(d.min()) <= ID_THRESHOLD_MM
    return SubjectMatch(identified=identified, distances=distances)


@dataclass
class Tally:
    """Accumulates identification hits and localisation errors over subjects."""

    gt_count: int = 0
    hits: int = 0
    errors_mm: list[float] = field(default_factory=list)

    def add(self, match: SubjectMatch, labels: Iterable[int] | None = None) -> None:
        keep = set(match.identified) if labels is None else set(labels)
        ids = {k: v for k, v in match.identified.items() if k in keep}
        self.gt_count += len(ids)
        self.hits += sum(ids.values())
        self.errors_mm.extend(d for k, d in match.distances.items() if k in keep)

    @property
    def id_rate(self) -> float | None:
        return self.hits / self.gt_count if self.gt_count else None

    @property
    def mean_error_mm(self) -> float | None:
        return float(np.mean(self.errors_mm)) if self.errors_mm else None

    @property
    def median_error_mm(self) -> float | None:
        return float(np.median(self.errors_mm)) if self.errors_mm else None


def dice(a: npt.ArrayLike, b: npt.ArrayLike, empty_score: float = 1.0) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty, like the VerSe code)."""
    x = np.asarray(a).astype(bool)
    y = np.asarray(b).astype(bool)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {x.shape} vs {y.shape}")
    total = int(x.sum()) + int(y.sum())
    if total == 0:
        return empty_score
    return 2.0 * int(np.logical_and(x, y).sum()) / total
