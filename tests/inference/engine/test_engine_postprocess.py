"""Post-processing: presence, anatomical order, neighbour spacing, duplicates, calibration."""

from __future__ import annotations

import numpy as np
import pytest

from inference.engine.postprocess import (
    Candidate,
    ConfidenceCalibration,
    enforce_anatomy,
    fit_confidence_calibration,
    postprocess,
)


def _c(label: int, z: float, presence: float = 0.9, x: float = 0.0) -> Candidate:
    return Candidate(label=label, position_lps=(x, 0.0, z), presence=presence, spread_mm=3.0)


def test_keeps_a_consistent_column_cranial_first() -> None:
    cands = [_c(22, -50.0), _c(20, 0.0), _c(21, -25.0)]
    out = postprocess(cands)
    assert [lm.label for lm in out] == [20, 21, 22]
    assert all(0 < lm.confidence <= 1 for lm in out)


def test_absent_labels_are_dropped() -> None:
    out = postprocess([_c(20, 0.0), _c(21, -25.0, presence=0.2)])
    assert [lm.label for lm in out] == [20]


def test_order_violation_drops_the_less_confident() -> None:
    # L3 placed above L2: one of them must go; L3 is the less confident.
    cands = [_c(20, 0.0), _c(21, -25.0, 0.95), _c(22, -10.0, 0.6), _c(23, -75.0)]
    assert [lm.label for lm in postprocess(cands)] == [20, 21, 23]


def test_duplicate_on_one_vertebra_resolved_by_confidence() -> None:
    # T12 and L1 both on the same vertebra (3 mm apart): keep the more confident one.
    cands = [_c(19, -1.5, 0.7), _c(20, 1.5, 0.95), _c(21, -30.0)]
    assert [lm.label for lm in postprocess(cands)] == [20, 21]


def test_neighbours_too_far_apart_are_not_both_kept() -> None:
    # Adjacent labels 80 mm apart (> 50 mm): keep the better-supported pair.
    cands = [_c(20, 0.0), _c(21, -30.0), _c(22, -110.0, 0.6)]
    assert [lm.label for lm in postprocess(cands)] == [20, 21]
    # With a gap of two labels, 80 mm is allowed (<= 2 x 50 mm).
    assert [lm.label for lm in postprocess([_c(20, 0.0), _c(22, -80.0)])] == [20, 22]


def test_t13_sits_between_t12_and_l1() -> None:
    cands = [_c(19, 0.0), _c(28, -25.0), _c(20, -50.0)]
    assert [lm.label for lm in enforce_anatomy(cands, {19: 1, 28: 1, 20: 1})] == [19, 28, 20]


def test_empty_input() -> None:
    assert postprocess([]) == []


def test_calibration_fit_separates_good_from_bad() -> None:
    rng = np.random.default_rng(0)
    presence = rng.uniform(0.5, 1.0, 400)
    spread = rng.uniform(2, 20, 400)
    correct = rng.random(400) < np.clip(1.2 - spread / 15, 0.02, 0.98)
    cal = fit_confidence_calibration(presence.tolist(), spread.tolist(), correct.tolist())
    assert cal.b < 0  # wider heatmaps -> less confident
    assert cal(0.9, 3.0) > cal(0.9, 18.0)
    restored = ConfidenceCalibration.from_json(cal.to_json())
    assert restored(0.8, 5.0) == pytest.approx(cal(0.8, 5.0))


def test_calibration_without_contrast_falls_back_to_rate() -> None:
    cal = fit_confidence_calibration([0.9, 0.8], [3.0, 4.0], [True, True])
    assert cal(0.5, 3.0) > 0.9
