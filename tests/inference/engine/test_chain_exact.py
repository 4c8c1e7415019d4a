"""Exact values of the chain labelling's parts (inference.engine.chain): the checks that kill the mutants
tests/inference/engine/test_chain.py lets survive (docs/testing.md, mutation testing). Hand-computed
expectations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from inference.engine import chain
from inference.engine.chain import (
    MAX_DROPPED_IN_A_ROW,
    SCALE_COST,
    ChainPrior,
    drop_costs,
    fit_chain_prior,
    label_chain,
    region_of,
    transitions,
)

C7, T1, T11, T12, T13, L1, L2, L5, L6 = 7, 8, 18, 19, 28, 20, 21, 24, 25


def test_region_boundaries() -> None:
    got = [region_of(lab) for lab in (1, C7, T1, T12, T13, L1, L5, L6)]
    assert got == ["C", "C", "T", "T", "T", "L", "L", "L"]


def test_transition_costs_of_the_variants() -> None:
    moves = {lo: (key, pairs) for lo, key, pairs in transitions(L5)}
    assert moves == {L6: (1.0, [(L5, L6)])}  # L5 -> L6: a variant; nothing skips past L6
    moves = {lo: (key, pairs) for lo, key, pairs in transitions(T11)}
    assert moves[T12] == (0.0, [(T11, T12)])
    assert moves[L1] == (1.0, [(T11, L1)])  # 11 thoracic vertebrae: a variant, not a skip
    moves = {lo: (key, pairs) for lo, key, pairs in transitions(T12)}
    assert moves[T13] == (1.0, [(T12, T13)]) and moves[L1] == (0.0, [(T12, L1)])
    assert moves[L2] == (2.0, [(T12, L1), (L1, L2)])  # L1 skipped
    assert transitions(T13) == [(L1, 0.0, [(T13, L1)]), (L2, 2.0, [(T13, L1), (L1, L2)])]


def test_pair_scales_mean_and_std() -> None:
    prior = ChainPrior(spacing={(T12, L1): (30.0, 3.0)}, scale=1.1)
    mean, std = prior.pair(T12, L1)
    assert mean == pytest.approx(33.0) and std == pytest.approx(3.3)
    assert ChainPrior(scale=0.9).pair(L1, L2) == pytest.approx((35.0 * 0.9, 5.5 * 0.9))  # fallback "L"


def test_spacing_cost_exact_and_capped() -> None:
    prior = ChainPrior(spacing={(T12, L1): (30.0, 3.0), (L1, L2): (34.0, 4.0)})
    assert prior.spacing_cost([(T12, L1)], 33.0) == pytest.approx(0.5)
    # across a skipped label: means add, variances add
    assert prior.spacing_cost([(T12, L1), (L1, L2)], 64.0 + 5.0) == pytest.approx(0.5 * (5.0 / 5.0) ** 2)
    assert prior.spacing_cost([(T12, L1)], 300.0) == chain.SPACING_CAP


def test_prior_json_round_trip_and_defaults() -> None:
    prior = ChainPrior(spacing={(T12, L1): (30.0, 3.0)}, unary_weight=1.5, variant_cost=2.5, skip_cost=7.0,
                       drop_cost=4.0)
    assert ChainPrior.from_json(prior.to_json()) == prior
    d = prior.to_json()
    del d["spacing"], d["drop_cost"]
    back = ChainPrior.from_json(d)
    assert back.spacing == {} and back.drop_cost == 3.0 and back.unary_weight == 1.5


def test_fit_chain_prior_min_count_and_std_floors() -> None:
    five = [{T12: (0.0, 0.0, 0.0), L1: (0.0, 0.0, -30.0)}] * 5
    prior = fit_chain_prior(five, variant_cost=9.0)
    assert prior.spacing[(T12, L1)] == pytest.approx((30.0, max(2.0, 0.08 * 30.0)))  # rel_std wins
    assert prior.variant_cost == 9.0
    assert (T12, L1) not in fit_chain_prior(five[:4]).spacing  # seen 4 times: fallback
    short = [{T12: (0.0, 0.0, 0.0), L1: (0.0, 0.0, -20.0)}] * 5
    assert fit_chain_prior(short).spacing[(T12, L1)][1] == pytest.approx(2.0)  # min_std_mm wins
    spread = [{T12: (0.0, 0.0, 0.0), L1: (0.0, 0.0, -d)} for d in (20.0, 40.0, 20.0, 40.0, 30.0)]
    assert fit_chain_prior(spread).spacing[(T12, L1)][1] == pytest.approx(float(np.std([20, 40, 20, 40, 30])))


def test_drop_costs_exact() -> None:
    prior = ChainPrior(drop_cost=3.0)
    got = drop_costs([0.5, 0.01, 1e-9, 0.9], prior)
    assert got == pytest.approx([3.0, 3.0 + math.log(99.0), 9.0, 3.0])


def test_label_chain_scale_penalty_is_symmetric_and_ties_keep_the_first_scale() -> None:
    assert SCALE_COST * math.log(1.25) ** 2 / 0.01 == pytest.approx(SCALE_COST * math.log(0.8) ** 2 / 0.01)
    labels = [T12, L1]
    logp = np.log(np.array([[0.9, 0.1], [0.1, 0.9]]))
    # at 35 mm the fallback "L" mean: scale 1.0 is free, so the cost is the unary terms only
    res = label_chain(np.array([[0, 0, 0.0], [0, 0, -35.0]]), logp, labels)
    assert res.labels == [T12, L1]
    assert res.cost == pytest.approx(-2 * math.log(0.9))


def test_label_chain_drop_list_empty_chain_and_drops_in_a_row() -> None:
    assert label_chain(np.zeros((0, 3)), np.zeros((0, 2)), [T12, L1]).cost == 0.0
    n = MAX_DROPPED_IN_A_ROW + 2
    # the first vertebra, then MAX_DROPPED_IN_A_ROW duplicate answers on it, then the next vertebra
    pos = np.array([[0.0, 0.0, -0.01 * t] for t in range(n)])
    pos[-1, 2] = -35.0
    logp = np.log(np.full((n, 2), 0.5))
    res = label_chain(pos, logp, [T12, L1], ChainPrior(), drop=[1.0] * n)
    assert res.labels[0] == T12 and res.labels[-1] == L1
    assert res.labels[1:-1] == [None] * MAX_DROPPED_IN_A_ROW
    assert res.cost == pytest.approx(-2 * math.log(0.5) + 1.0 * MAX_DROPPED_IN_A_ROW)


def test_drop_costs_of_a_saturated_level_head_without_numpy_warnings() -> None:
    # A softmax in float32 gives p_none of exactly 0 or 1: the cost is the capped one (base + 6, base + 0)
    # and no "divide by zero" RuntimeWarning reaches the agent's log (p is clipped to 1e-6..1-1e-6 first).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = drop_costs(np.array([0.0, 1.0]), ChainPrior(drop_cost=3.0))
    assert got == pytest.approx([9.0, 3.0])


def test_label_chain_fits_the_patient_size() -> None:
    # L1..L5 42 mm apart: 1.2 x the fallback "L" spacing (35, 5.5). Per scale s the cost is the unary
    # terms + 4 x 0.5 ((42 - 35 s) / (5.5 s))^2 + SCALE_COST ln(s)^2 / 0.01; over SCALES the least is at
    # s = 1.05 (2.129 + unary; s = 1.0: 3.240, s = 1.1: 2.486, s = 1.2: 6.648).
    labels = [L1, L2, 22, 23, 24]
    pos = np.array([[0.0, 0.0, -42.0 * i] for i in range(5)])
    logp = np.log(np.where(np.eye(5) > 0, 0.9, 0.025))
    res = label_chain(pos, logp, labels)
    assert res.labels == labels
    spacing = 4 * 0.5 * ((42.0 - 35.0 * 1.05) / (5.5 * 1.05)) ** 2
    assert res.cost == pytest.approx(-5 * math.log(0.9) + spacing + SCALE_COST * math.log(1.05) ** 2 / 0.01)


def test_label_chain_never_drops_more_than_max_in_a_row_between_named_vertebrae() -> None:
    # L1, then MAX_DROPPED_IN_A_ROW + 1 detections that are no vertebra (free to drop), then L2 35 mm
    # below (the fallback spacing: free). Dropping all the middle ones is not allowed, naming one of them
    # costs 50, so the best chain names L1 and drops everything after it, L2 included (100).
    n = MAX_DROPPED_IN_A_ROW + 3
    pos = np.array([[0.0, 0.0, -35.0 * t / (n - 1)] for t in range(n)])
    logp = np.full((n, 2), -50.0)
    logp[0] = [0.0, -50.0]
    logp[-1] = [-50.0, 0.0]
    drop = [100.0] + [0.0] * (n - 2) + [100.0]
    res = label_chain(pos, logp, [L1, L2], ChainPrior(), drop=drop)
    assert res.labels == [L1] + [None] * (n - 1)
    assert res.cost == pytest.approx(100.0)


def test_label_chain_with_impossible_labels() -> None:
    # log p = -inf (a probability of exactly 0) for the first label in column order: the chain goes on
    # from the labels that remain possible instead of stopping at the impossible one.
    labels = [T12, L1, L2]
    with np.errstate(divide="ignore"):
        logp = np.log(np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    res = label_chain(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -35.0]]), logp, labels)
    assert res.labels == [L1, L2]
    assert res.cost == pytest.approx(0.0)
