"""Naming the vertebrae as one chain: the labelling of all detected vertebrae that is most consistent
along the whole spine (a Viterbi dynamic programme, as SPINEPS' ``find_min_cost_path`` and Payer et al.'s
shortest path over a label graph do).

Input: the detected vertebrae in cranio-caudal order, each with a body centroid (LPS mm) and log
probabilities over the engine's labels (from the stage-2 level head, which sees the neighbours, ribs
and sacrum around each vertebra). Output: one label per vertebra.

Cost of a labelling = sum over vertebrae of ``-unary_weight x log p(label)`` + sum over consecutive pairs
of a transition cost:

* the next label in the standard chain (C1..C7, T1..T12, L1..L5) costs nothing but its spacing term;
* anatomical variants cost ``variant_cost``: T12 -> T13 -> L1 (13 thoracic), L5 -> L6 (6 lumbar),
  T11 -> L1 (11 thoracic, 11 rib pairs);
* a label skipped (a vertebra the detector missed) costs ``skip_cost``;
* a detection left out of the chain (a second answer on one vertebra, or bone that is not a vertebra)
  costs ``drop_cost``;
* the spacing term ``0.5 ((d - mean) / std)^2`` (capped) compares the distance between the two body
  centroids with the neighbour offset learnt from the training phantoms for that pair of labels (the
  sum of the pairs' means and variances across a skipped label).

A chain shifted by one therefore loses to the right one whenever the level evidence of the whole chain
favours the right one, even if single vertebrae are mis-classified, and T13 / L6 / missing vertebrae are
explained with a cost rather than forced into a wrong name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from dicom_io.labels import ANATOMICAL_ORDER, LABEL_BY_NAME

T11, T12, T13, L1, L5, L6 = (LABEL_BY_NAME[n] for n in ("T11", "T12", "T13", "L1", "L5", "L6"))
#: Anatomical rank of each label (T13 between T12 and L1).
RANK = {lab: i for i, lab in enumerate(ANATOMICAL_ORDER)}
#: The standard chain (no T13, no L6).
STANDARD_CHAIN: tuple[int, ...] = tuple(lab for lab in ANATOMICAL_ORDER if lab not in (T13, L6))
_NEXT = {a: b for a, b in zip(STANDARD_CHAIN[:-1], STANDARD_CHAIN[1:], strict=True)}
_NEXT[T13] = L1
_NEXT[L5] = L6

#: Spacing (mm) between consecutive body centroids when no fitted value exists, by the lower label's
#: region: (mean, std). Cervical bodies ~15 mm high + discs, thoracic ~20-28, lumbar ~35.
_FALLBACK = {"C": (16.0, 3.5), "T": (24.0, 4.5), "L": (35.0, 5.5)}
SPACING_CAP = 8.0
#: The chain may leave out at most this many detections in a row.
MAX_DROPPED_IN_A_ROW = 3


#: The regions of the stage-2 region head, in its logits' order: rib-bearing (T, T13 included) or not.
REGIONS = ("C", "T", "L")


def region_of(label: int) -> str:
    """C, T or L: T1-T12 and T13 bear ribs (VerSe names L1 the first vertebra without a rib), L1-L6 not."""
    if label <= 7:
        return "C"
    if label <= 19 or label == T13:
        return "T"
    return "L"


def transitions(upper: int) -> list[tuple[int, float, list[tuple[int, int]]]]:
    """(lower label, fixed cost key, the neighbour pairs spanned) for every move down from ``upper``.

    The cost key is 0 (standard), 1 (variant) or 2 (skip); the caller maps keys to costs."""
    out: list[tuple[int, float, list[tuple[int, int]]]] = []
    nxt = _NEXT.get(upper)
    if nxt is not None:
        out.append((nxt, 1.0 if nxt == L6 else 0.0, [(upper, nxt)]))
        after = _NEXT.get(nxt)
        if after is not None and after != L6:
            out.append((after, 2.0, [(upper, nxt), (nxt, after)]))
    if upper == T12:
        out.append((T13, 1.0, [(T12, T13)]))
    if upper == T11:
        out.append((L1, 1.0, [(T11, L1)]))
    return out


@dataclass(frozen=True)
class ChainPrior:
    """Neighbour offsets learnt from training data, and the costs of variants and gaps."""

    #: (upper label, lower label) -> (mean, std) distance in mm between their body centroids.
    spacing: Mapping[tuple[int, int], tuple[float, float]] = field(default_factory=dict)
    unary_weight: float = 1.0
    variant_cost: float = 3.0
    skip_cost: float = 6.0
    #: Cost of leaving a detection out of the chain (a duplicate, or not a vertebra).
    drop_cost: float = 3.0
    #: Weight of the region head's evidence (C, T, L) beside the level evidence (unused where the
    #: network has no region head).
    region_weight: float = 1.0
    #: Patient size relative to the training phantoms (set per chain by :func:`label_chain`).
    scale: float = 1.0

    def pair(self, upper: int, lower: int) -> tuple[float, float]:
        mean, std = self.spacing.get((upper, lower), _FALLBACK[region_of(lower)])
        return mean * self.scale, std * self.scale

    def spacing_cost(self, pairs: Sequence[tuple[int, int]], distance_mm: float) -> float:
        means, variances = zip(*(self.pair(a, b) for a, b in pairs), strict=True)
        mean = float(sum(means))
        std = float(np.sqrt(sum(v * v for v in variances)))
        return min(SPACING_CAP, 0.5 * ((distance_mm - mean) / std) ** 2)

    def to_json(self) -> dict[str, Any]:
        return {"spacing": [[a, b, m, s] for (a, b), (m, s) in sorted(self.spacing.items())],
                "unary_weight": self.unary_weight, "variant_cost": self.variant_cost,
                "skip_cost": self.skip_cost, "drop_cost": self.drop_cost, "region_weight": self.region_weight}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ChainPrior:
        spacing = {(int(a), int(b)): (float(m), float(s)) for a, b, m, s in d.get("spacing", [])}
        return cls(spacing=spacing, unary_weight=float(d["unary_weight"]),
                   variant_cost=float(d["variant_cost"]), skip_cost=float(d["skip_cost"]),
                   drop_cost=float(d.get("drop_cost", 3.0)), region_weight=float(d.get("region_weight", 1.0)))


def fit_chain_prior(subjects: Sequence[Mapping[int, Sequence[float]]], min_std_mm: float = 2.0,
                    rel_std: float = 0.08, min_count: int = 5, **costs: float) -> ChainPrior:
    """Mean and std of the distance between consecutive body centroids, per label pair, from training
    subjects (label -> LPS mm). Pairs seen fewer than ``min_count`` times keep the fallback. The std is
    at least ``rel_std`` of the mean: people differ in size more than one generator's phantoms do."""
    dists: dict[tuple[int, int], list[float]] = {}
    for cents in subjects:
        for upper in cents:
            for lower, _, pairs in transitions(upper):
                between = [lab for lab in ANATOMICAL_ORDER if RANK[upper] < RANK[lab] < RANK[lower]]
                if len(pairs) == 1 and lower in cents and not any(lab in cents for lab in between):
                    d = float(np.linalg.norm(np.subtract(cents[upper], cents[lower])))
                    dists.setdefault((upper, lower), []).append(d)
    spacing = {k: (float(np.mean(v)), max(min_std_mm, rel_std * float(np.mean(v)), float(np.std(v))))
               for k, v in dists.items() if len(v) >= min_count}
    return ChainPrior(spacing=spacing, **costs)


@dataclass(frozen=True)
class ChainResult:
    #: One entry per input vertebra: its label, or None where the chain drops it.
    labels: list[int | None]
    cost: float


#: Patient sizes tried: the learnt neighbour offsets are scaled by each (people differ in size; the
#: proportions along the spine are what names levels), with a small cost for leaving 1.0.
SCALES = tuple(float(s) for s in np.round(np.arange(0.8, 1.2001, 0.05), 3))
SCALE_COST = 2.0  # per unit of |log scale|^2 / 0.01, i.e. 2 nats at 10 % off


def with_region_evidence(log_probs: npt.ArrayLike, region_probs: npt.ArrayLike, labels: Sequence[int],
                         weight: float) -> npt.NDArray[np.float64]:
    """Level log probabilities ``(N, len(labels))`` plus ``weight`` x the log probability of each label's
    region (``region_probs``: ``(N, 3)`` over :data:`REGIONS`): a labelling must agree with the region
    evidence too, so a vertebra the region head calls lumbar is expensive to name thoracic whatever
    level the level head favours (SPINEPS' chain adds its region softmax to its level softmax)."""
    lp = np.asarray(log_probs, dtype=np.float64)
    rp = np.log(np.clip(np.asarray(region_probs, dtype=np.float64), 1e-6, 1.0))
    cols = [REGIONS.index(region_of(lab)) for lab in labels]
    return lp + weight * rp[:, cols]


def drop_costs(p_none: npt.ArrayLike, prior: ChainPrior) -> npt.NDArray[np.float64]:
    """Per-detection cost of leaving it out: the base cost plus the log-odds that it is a vertebra (a
    detection the level head is sure about is expensive to drop; clipped to 0..6 nats)."""
    p = np.clip(np.asarray(p_none, dtype=np.float64), 1e-6, 1 - 1e-6)
    return prior.drop_cost + np.clip(np.log((1 - p) / p), 0.0, 6.0)


def label_chain(positions: npt.ArrayLike, log_probs: npt.ArrayLike, labels: Sequence[int],
                prior: ChainPrior | None = None, drop: npt.ArrayLike | None = None) -> ChainResult:
    """The minimum-cost labelling of vertebrae given cranial first, over a range of patient sizes.

    ``positions``: ``(N, 3)`` LPS mm body centroids, cranio-caudal order; ``log_probs``: ``(N, len(labels))``
    log probabilities of each label (the classes' order is ``labels``); ``drop``: ``(N,)`` cost of leaving
    each detection out (default ``prior.drop_cost`` each; see :func:`drop_costs`)."""
    prior = prior or ChainPrior()
    n = len(np.asarray(positions).reshape(-1, 3))
    drop_arr = np.full(n, prior.drop_cost) if drop is None else np.asarray(drop, dtype=np.float64).reshape(n)
    best: ChainResult | None = None
    for scale in SCALES:
        scaled = replace(prior, scale=scale)
        res = _label_chain(positions, log_probs, labels, scaled, drop_arr)
        total = res.cost + SCALE_COST * float(np.log(scale)) ** 2 / 0.01
        if best is None or total < best.cost:
            best = ChainResult(res.labels, total)
    assert best is not None
    return best


def _label_chain(positions: npt.ArrayLike, log_probs: npt.ArrayLike, labels: Sequence[int],
                 prior: ChainPrior, drop: npt.NDArray[np.float64]) -> ChainResult:
    """Viterbi over (last named candidate, its label); candidates between two named ones are dropped
    (a duplicate answer, or a detection that is not a vertebra) at ``drop[t]`` each."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    lp = np.asarray(log_probs, dtype=np.float64).reshape(len(pos), len(labels))
    n = len(pos)
    if n == 0:
        return ChainResult([], 0.0)
    n_lab = len(labels)
    index = {lab: c for c, lab in enumerate(labels)}
    fixed = {0.0: 0.0, 1.0: prior.variant_cost, 2.0: prior.skip_cost}
    moves = [[(index[lo], fixed[key], pairs) for lo, key, pairs in transitions(up) if lo in index]
             for up in labels]
    unary = -prior.unary_weight * lp
    before = np.concatenate([[0.0], np.cumsum(drop)])  # before[t]: cost of dropping candidates 0..t-1
    # best[t, c]: cost of the best chain whose last named candidate is t, named labels[c].
    best = unary + before[:n, None]
    back = np.full((n, n_lab, 2), -1, dtype=np.int64)
    for t in range(1, n):
        for u in range(max(0, t - 1 - MAX_DROPPED_IN_A_ROW), t):
            d = float(np.linalg.norm(pos[t] - pos[u]))
            gap = before[t] - before[u + 1]
            for c_up in range(n_lab):
                base = best[u, c_up]
                if not np.isfinite(base):
                    continue
                for c_lo, fixed_cost, pairs in moves[c_up]:
                    v = base + gap + fixed_cost + prior.spacing_cost(pairs, d) + unary[t, c_lo]
                    if v < best[t, c_lo]:
                        best[t, c_lo] = v
                        back[t, c_lo] = (u, c_up)
    total_cost = best + (before[n] - before[1:n + 1])[:, None]
    t, c = (int(v) for v in np.unravel_index(int(np.argmin(total_cost)), total_cost.shape))
    total = float(total_cost[t, c])
    out: list[int | None] = [None] * n
    while t >= 0:
        out[t] = labels[c]
        t, c = (int(v) for v in back[t, c])
    return ChainResult(out, total)
