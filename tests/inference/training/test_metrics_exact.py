"""Exact checks of inference/training/metrics.py that kill the mutants which
tests/inference/training/test_metrics.py lets survive (docs/testing.md, mutation testing).
Hand-computed expectations, no engine involved.
"""

from __future__ import annotations

import numpy as np
import pytest

from inference.training.metrics import Tally, dice, match_subject, region_of

GT = {20: (0.0, 0.0, 0.0), 21: (0.0, 0.0, -30.0), 22: (0.0, 0.0, -60.0)}


def test_labels_restrict_scoring_to_the_given_gt_vertebrae() -> None:
    pred = {20: (0.0, 0.0, 1.0), 21: (0.0, 0.0, -31.0), 22: (0.0, 0.0, -62.0)}
    match = match_subject(GT, pred, labels=[21, 22, 99])  # 99 is not in the GT: ignored
    assert match.identified == {21: True, 22: True}  # 20 is predicted, but not scored
    assert match.distances == {20: 1.0, 21: 1.0, 22: 2.0}  # distances cover every label in both


def test_a_skipped_label_does_not_stop_the_scoring_of_the_next_ones() -> None:
    pred = {20: (0.0, 0.0, 0.0), 21: (0.0, 0.0, -30.0), 22: (0.0, 0.0, -60.0)}
    match = match_subject(GT, pred, labels=[22])
    assert match.identified == {22: True}


def test_integer_coordinates_of_any_width_give_true_distances() -> None:
    gt = {20: np.array([10, 10, 10], dtype=np.uint8)}
    pred = {20: np.array([7, 14, 10], dtype=np.uint8)}  # pred - gt would wrap around in uint8
    match = match_subject(gt, pred)
    assert match.distances == {20: 5.0} and match.identified == {20: True}


def test_tally_accumulates_over_subjects() -> None:
    tally = Tally()
    tally.add(match_subject(GT, {20: (0.0, 0.0, 3.0), 21: (0.0, 0.0, -60.0)}))  # 20 hit, 21 mislabelled
    tally.add(match_subject(GT, GT))  # 3 of 3
    assert (tally.gt_count, tally.hits) == (6, 4)
    assert tally.id_rate == pytest.approx(4 / 6)
    assert tally.errors_mm == [3.0, 30.0, 0.0, 0.0, 0.0]
    assert tally.mean_error_mm == pytest.approx(6.6) and tally.median_error_mm == 0.0


def test_dice_treats_any_non_zero_label_as_foreground() -> None:
    a = np.array([0, 3, 3, 7, 0])  # a label map, not 0/1
    b = np.array([0, 1, 0, 1, 1])
    assert dice(a, b) == pytest.approx(2 * 2 / (3 + 3))
    assert dice(b, a) == pytest.approx(2 * 2 / (3 + 3))  # either argument may be a label map
    assert dice(np.zeros(4), np.zeros(4)) == 1.0 and dice(np.zeros(4), np.zeros(4), empty_score=0.0) == 0.0
    with pytest.raises(ValueError, match=r"shape mismatch: \(2,\) vs \(3,\)"):
        dice(np.ones(2), np.ones(3))


def test_region_errors_name_the_label() -> None:
    assert [region_of(x) for x in (1, 8, 19, 28, 20, 25)] == [
        "cervical",
        "thoracic",
        "thoracic",
        "thoracic",
    ] + [
        "lumbar",
        "lumbar",
    ]
    with pytest.raises(ValueError, match="label 26 belongs to no C/T/L region"):
        region_of(26)
