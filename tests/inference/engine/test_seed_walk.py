"""Seeds walk to the vertebra their crops point at (inference.engine.engine.settle_seeds), and are put
again where the named chain skips a level (gap_seeds).

The crops' answers come from a stand-in that is geometry, not a network: each answers the body centroid
nearest its centre (within 40 mm), "no vertebra" where its centre lies more than 20 mm from it, as a
crop centred on the posterior elements does."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dicom_io.labels import LABEL_BY_NAME
from dicom_io.result import Landmark
from inference.engine.engine import gap_seeds, settle_seeds
from inference.engine.plan import Stage2Plan

BODIES = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -30.0]])
PLAN = Stage2Plan()
N_CLS = len(PLAN.labels) + 1


class Crops:
    """Answers like stage 2, and counts the crops asked for."""

    def __init__(self, step_when_none: float | None = None) -> None:
        self.asked = 0
        self.step_when_none = step_when_none

    def __call__(self, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.asked += len(centres)
        pts = centres.copy()
        probs = np.zeros((len(centres), N_CLS + PLAN.network.region_classes))
        for n, c in enumerate(centres):
            d = np.linalg.norm(BODIES - c, axis=1)
            b = int(np.argmin(d))
            none = d[b] > 20.0
            if self.step_when_none is not None:  # "none" everywhere, each answer somewhere new
                pts[n] = c + [0.0, self.step_when_none, 0.0]
                none = True
            elif d[b] <= 40.0:
                pts[n] = BODIES[b]
            probs[n, N_CLS - 1] = 0.9 if none else 0.02
            probs[n, b] = 0.0 if none else 0.98
        return pts, probs


def test_a_seed_behind_the_body_walks_to_it() -> None:
    seeds = np.array([[0.0, 35.0, 0.0]])  # 35 mm behind the first body: its crop says "none"
    pts, probs = settle_seeds(seeds, Crops(), PLAN)
    assert np.allclose(pts, [BODIES[0]]) and probs[0, N_CLS - 1] < 0.5


def test_without_walks_the_seed_behind_the_body_is_given_up() -> None:
    pts, _ = settle_seeds(np.array([[0.0, 35.0, 0.0]]), Crops(), replace(PLAN, none_walks=0))
    assert len(pts) == 0


def test_a_seed_answered_none_again_and_again_is_given_up_after_its_walks() -> None:
    for walks in (0, 1, 2):
        crops = Crops(step_when_none=10.0)
        pts, _ = settle_seeds(np.array([[0.0, 100.0, 0.0]]), crops, replace(PLAN, none_walks=walks))
        assert len(pts) == 0
        assert crops.asked == walks + 1


def test_seeds_on_the_bodies_settle_at_once_and_far_seeds_are_not_kept() -> None:
    crops = Crops()
    seeds = np.array([[0.0, 5.0, 0.0], [0.0, 4.0, -33.0], [0.0, 200.0, 0.0]])
    pts, _ = settle_seeds(seeds, crops, PLAN)
    assert np.allclose(np.sort(pts[:, 2]), [-30.0, 0.0])
    assert crops.asked == 3 + 2  # one answer each, then the two that moved confirm their point


def test_new_plans_walk_once_and_plans_written_before_do_not() -> None:
    assert PLAN.none_walks == 1
    again = Stage2Plan.from_json(PLAN.to_json())
    assert again == PLAN
    old = PLAN.to_json()
    del old["none_walks"]  # engine.json of v0.7.0 and before: seeds given up at the first "none"
    assert Stage2Plan.from_json(old).none_walks == 0


def _lm(name: str, z: float) -> Landmark:
    return Landmark(label=LABEL_BY_NAME[name], position_lps=(0.0, 10.0, z), confidence=0.5)


def test_gap_seeds_lie_between_names_that_skip_levels() -> None:
    neck = [_lm("C2", 0.0), _lm("C4", -30.0), _lm("C5", -45.0)]
    assert np.allclose(gap_seeds(neck), [[0.0, 10.0, -15.0]])
    low_back = [_lm("T12", -300.0), _lm("L1", -330.0), _lm("L4", -435.0)]
    assert np.allclose(gap_seeds(low_back), [[0.0, 10.0, -365.0], [0.0, 10.0, -400.0]])
    # The variants are not gaps: T12 -> T13 -> L1 and L5 -> L6 are whole chains.
    assert gap_seeds([_lm("T12", 0.0), _lm("T13", -25.0), _lm("L1", -55.0)]).shape == (0, 3)
    assert gap_seeds([_lm("L4", 0.0), _lm("L5", -35.0), _lm("L6", -70.0)]).shape == (0, 3)
    # T11 -> L1 is both the 11-rib variant and a missed T12 by name: looked at, the search tells.
    assert np.allclose(gap_seeds([_lm("T11", 0.0), _lm("L1", -30.0)]), [[0.0, 10.0, -15.0]])
    assert gap_seeds([]).shape == (0, 3)


def test_new_plans_fill_gaps_and_plans_written_before_do_not() -> None:
    assert PLAN.fill_gaps
    old = PLAN.to_json()
    del old["fill_gaps"]
    assert not Stage2Plan.from_json(old).fill_gaps
