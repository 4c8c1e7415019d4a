"""VerSe metrics on hand-made cases (semantics of anjany/verse utils/eval_utilities.py get_hits)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.training.metrics import Tally, dice, match_subject, region_of


def _column(labels: list[int], step: float = 25.0) -> dict[int, np.ndarray]:
    return {lab: np.array([0.0, 0.0, -step * n]) for n, lab in enumerate(labels)}


def test_perfect_prediction_identifies_all() -> None:
    gt = _column([18, 19, 20, 21])
    m = match_subject(gt, gt)
    assert all(m.identified.values())
    assert max(m.distances.values()) == 0.0


def test_small_offset_is_a_hit_and_error_is_reported() -> None:
    gt = _column([20, 21, 22])
    pred = {k: v + np.array([3.0, 4.0, 0.0]) for k, v in gt.items()}
    m = match_subject(gt, pred)
    assert m.identified == {20: True, 21: True, 22: True}
    assert m.distances[21] == pytest.approx(5.0)


def test_shift_by_one_level_fails_every_vertebra() -> None:
    gt = _column([18, 19, 20, 21])
    # Every label predicted on the next vertebra down: close to a GT landmark, but the wrong one.
    pred = {lab: gt[lab] + np.array([0.0, 0.0, -25.0]) for lab in gt}
    m = match_subject(gt, pred)
    assert not any(m.identified[lab] for lab in (18, 19, 20))
    # L2's prediction lies below everything: its nearest GT is L2 itself but 25 mm away (> 20 mm).
    assert m.identified[21] is False


def test_nearest_gt_with_wrong_label_is_a_miss_even_within_20mm() -> None:
    gt = {20: np.array([0.0, 0.0, 0.0]), 21: np.array([0.0, 0.0, -30.0])}
    # L1's prediction is 18 mm from L1 (within 20 mm) but 12 mm from L2: nearest GT is L2 -> miss.
    pred = {20: np.array([0.0, 0.0, -18.0]), 21: np.array([0.0, 0.0, -30.0])}
    m = match_subject(gt, pred)
    assert m.identified == {20: False, 21: True}
    assert m.distances[20] == pytest.approx(18.0)


def test_threshold_is_inclusive_at_20mm_like_the_challenge_code() -> None:
    gt = {20: np.zeros(3)}
    assert match_subject(gt, {20: np.array([20.0, 0, 0])}).identified[20] is True
    assert match_subject(gt, {20: np.array([20.01, 0, 0])}).identified[20] is False


def test_nearest_gt_only_among_vertebrae_predicted_too() -> None:
    # GT L2 is not predicted, so it cannot be "nearest" to L1's prediction (challenge code intersects first).
    gt = {20: np.array([0.0, 0.0, 0.0]), 21: np.array([0.0, 0.0, -30.0])}
    pred = {20: np.array([0.0, 0.0, -18.0])}
    m = match_subject(gt, pred)
    assert m.identified == {20: True, 21: False}


def test_missing_and_extra_predictions() -> None:
    gt = _column([1, 2, 3])
    pred = {1: gt[1], 5: np.array([0.0, 0.0, -200.0])}
    m = match_subject(gt, pred)
    assert m.identified == {1: True, 2: False, 3: False}
    assert set(m.distances) == {1}


def test_tally_rates_and_regions() -> None:
    t = Tally()
    gt = _column([7, 8, 9])
    m = match_subject(gt, {7: gt[7], 8: gt[8] + np.array([0, 0, 30.0])})
    t.add(m)
    assert t.gt_count == 3 and t.hits == 1
    assert t.id_rate == pytest.approx(1 / 3)
    assert t.mean_error_mm == pytest.approx(15.0)
    cerv = Tally()
    cerv.add(m, labels=[lab for lab in m.identified if region_of(lab) == "cervical"])
    assert cerv.gt_count == 1 and cerv.id_rate == 1.0
    assert region_of(28) == "thoracic" and region_of(25) == "lumbar"


def test_dice() -> None:
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    assert dice(a, b) == 1.0
    a[0] = True
    b[:2] = True
    assert dice(a, b) == pytest.approx(2 * 16 / (16 + 32))
