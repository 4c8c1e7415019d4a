"""Seeds walk to the vertebra their crops point at (inference.engine.engine.settle_seeds).

The crops' answers come from a stand-in that is geometry, not a network: each answers the body centroid
nearest its centre (within 40 mm), "no vertebra" where its centre lies more than 20 mm from it, as a
crop centred on the posterior elements does."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from inference.engine.engine import settle_seeds
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
