"""From per-label candidates to a consistent labelled spine.

Rules (Payer et al. 2020 bound consecutive vertebrae at 12.5-50 mm; see docs/anchors.md):

* keep labels whose presence probability reaches a threshold;
* the kept landmarks, taken in anatomical order (C1 .. L6, T13 between T12 and L1), must go
  monotonically caudal (decreasing LPS z), two landmarks must be at least 12.5 mm apart, and
  consecutive kept labels ``g`` steps apart in the anatomical order at most ``g x 50 mm`` apart;
* among all subsets satisfying this, keep the one with the largest total score (a longest-path
  dynamic programme over the anatomical order), which also resolves duplicates (two labels on one
  vertebra) in favour of the more confident one.

Confidence is ``sigmoid(a * logit(presence) + b * spread_mm + c)``, where ``spread_mm`` is the heatmap's
standard deviation; ``(a, b, c)`` are fitted on held-out data by :func:`fit_confidence_calibration`
(identity ``(1, 0, 0)`` until then).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dicom_io.labels import ANATOMICAL_ORDER
from dicom_io.result import Landmark

MIN_NEIGHBOUR_MM = 12.5
MAX_NEIGHBOUR_MM = 50.0


@dataclass(frozen=True)
class Candidate:
    """One label's merged stage-2 output before post-processing."""

    label: int
    position_lps: tuple[float, float, float]
    presence: float
    spread_mm: float


@dataclass(frozen=True)
class ConfidenceCalibration:
    """Logistic map from (logit presence, heatmap spread) to P(correctly identified)."""

    a: float = 1.0
    b: float = 0.0
    c: float = 0.0

    def __call__(self, presence: float, spread_mm: float) -> float:
        p = min(max(presence, 1e-6), 1 - 1e-6)
        z = self.a * math.log(p / (1 - p)) + self.b * spread_mm + self.c
        return 1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0)))

    def to_json(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "c": self.c}

    @classmethod
    def from_json(cls, d: Mapping[str, float]) -> ConfidenceCalibration:
        return cls(a=float(d["a"]), b=float(d["b"]), c=float(d["c"]))


def _compatible(upper: Candidate, lower: Candidate, gap: int) -> bool:
    """Can ``upper`` (anatomically ``gap`` steps above) and ``lower`` be consecutive kept landmarks?"""
    pu = np.asarray(upper.position_lps)
    pl = np.asarray(lower.position_lps)
    if pu[2] <= pl[2]:  # LPS z points superior: a cranial vertebra must lie higher
        return False
    d = float(np.linalg.norm(pu - pl))
    return MIN_NEIGHBOUR_MM <= d <= gap * MAX_NEIGHBOUR_MM


def enforce_anatomy(candidates: Sequence[Candidate], score: Mapping[int, float]) -> list[Candidate]:
    """The highest-scoring subset of ``candidates`` consistent with anatomical order and spacing."""
    rank = {lab: i for i, lab in enumerate(ANATOMICAL_ORDER)}
    cands = sorted((c for c in candidates if c.label in rank), key=lambda c: rank[c.label])
    n = len(cands)
    if n == 0:
        return []
    best = [score[c.label] for c in cands]
    prev = [-1] * n
    for j in range(n):
        for i in range(j):
            gap = rank[cands[j].label] - rank[cands[i].label]
            if _compatible(cands[i], cands[j], gap) and best[i] + score[cands[j].label] > best[j]:
                best[j] = best[i] + score[cands[j].label]
                prev[j] = i
    j = int(np.argmax(best))
    chain = []
    while j >= 0:
        chain.append(cands[j])
        j = prev[j]
    return chain[::-1]


def postprocess(
    candidates: Sequence[Candidate],
    presence_threshold: float = 0.5,
    calibration: ConfidenceCalibration | None = None,
) -> list[Landmark]:
    """Present, anatomically consistent landmarks with calibrated confidences, cranial first."""
    cal = calibration or ConfidenceCalibration()
    kept = [c for c in candidates if c.presence >= presence_threshold]
    conf = {c.label: cal(c.presence, c.spread_mm) for c in kept}
    # Score by confidence but never below a small positive value, so an all-low-confidence spine still
    # prefers keeping more vertebrae over fewer.
    score = {lab: 1e-3 + v for lab, v in conf.items()}
    chain = enforce_anatomy(kept, score)
    return [
        Landmark(label=c.label,
                 position_lps=(float(c.position_lps[0]), float(c.position_lps[1]), float(c.position_lps[2])),
                 confidence=float(conf[c.label]))
        for c in chain
    ]


def fit_confidence_calibration(
    presence: Sequence[float], spread_mm: Sequence[float], correct: Sequence[bool], iterations: int = 500,
    l2: float = 1e-3,
) -> ConfidenceCalibration:
    """Fit the logistic calibration by Newton's method (L2-regularised) on held-out outcomes."""
    p = np.clip(np.asarray(presence, dtype=np.float64), 1e-6, 1 - 1e-6)
    x = np.stack([np.log(p / (1 - p)), np.asarray(spread_mm, dtype=np.float64), np.ones(len(p))], axis=1)
    y = np.asarray(correct, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        # No contrast to learn from: identity on presence, shifted to the observed accuracy.
        rate = float(y.mean()) if len(y) else 0.5
        rate = min(max(rate, 1e-3), 1 - 1e-3)
        return ConfidenceCalibration(a=1.0, b=0.0, c=math.log(rate / (1 - rate)))
    w = np.zeros(3)
    for _ in range(iterations):
        z = np.clip(x @ w, -60, 60)
        mu = 1.0 / (1.0 + np.exp(-z))
        grad = x.T @ (mu - y) + l2 * w
        hess = x.T @ (x * (mu * (1 - mu))[:, None]) + l2 * np.eye(3)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return ConfidenceCalibration(a=float(w[0]), b=float(w[1]), c=float(w[2]))
