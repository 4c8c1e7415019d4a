"""Chain labelling: the most consistent naming of the whole column (inference.chain)."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_io.labels import ENGINE_LABELS, vertebra_name
from inference.engine.chain import (
    REGIONS,
    ChainPrior,
    drop_costs,
    fit_chain_prior,
    label_chain,
    region_of,
    transitions,
    with_region_evidence,
)

LABELS = ENGINE_LABELS
T11, T12, T13, L1, L2, L3, L4, L5, L6 = 18, 19, 28, 20, 21, 22, 23, 24, 25

#: Body-centroid spacing used to build test chains (mm), close to the fallback means.
SPACING = {"T": 24.0, "L": 35.0}


def _positions(labels: list[int], gaps: dict[int, float] | None = None) -> np.ndarray:
    """Points going down the z axis, spaced as the region of each lower label (plus extra gaps)."""
    z = 0.0
    out = [[0.0, 0.0, z]]
    for lab in labels[1:]:
        z -= SPACING["T" if lab <= T12 or lab == T13 else "L"] + (gaps or {}).get(lab, 0.0)
        out.append([0.0, 0.0, z])
    return np.array(out)


def _evidence(true: list[int], strength: float = 0.6, overrides: dict[int, dict[int, float]] | None = None
              ) -> np.ndarray:
    """Log-probabilities: ``strength`` on the true label, the rest spread evenly; ``overrides`` replace
    a vertebra's distribution by {label: p} (rest spread)."""
    rows = []
    for n, lab in enumerate(true):
        dist = (overrides or {}).get(n, {lab: strength})
        rest = (1.0 - sum(dist.values())) / (len(LABELS) - len(dist))
        p = np.full(len(LABELS), rest)
        for k, v in dist.items():
            p[LABELS.index(k)] = v
        rows.append(np.log(p))
    return np.array(rows)


def names(labels: list[int]) -> list[str]:
    return [vertebra_name(v) for v in labels]


def test_consistent_evidence_is_kept() -> None:
    true = [17, 18, 19, 20, 21, 22]
    got = label_chain(_positions(true), _evidence(true), LABELS).labels
    assert names(got) == ["T10", "T11", "T12", "L1", "L2", "L3"]


def test_two_vertebrae_read_one_level_low_do_not_shift_the_chain() -> None:
    # Each vertebra alone: T12 and L1 are read as L1 and L2 (a duplicate pair with their neighbours).
    true = [17, 18, 19, 20, 21, 22]
    ev = _evidence(true, overrides={2: {L1: 0.45, T12: 0.35}, 3: {L2: 0.45, L1: 0.35}})
    assert names(label_chain(_positions(true), ev, LABELS).labels) == ["T10", "T11", "T12", "L1", "L2", "L3"]


def test_whole_chain_shifted_by_one_when_all_evidence_says_so() -> None:
    # Every vertebra's evidence points one level lower than "true": the chain follows the evidence as a
    # whole (no duplicates, no gaps), it does not invent a mixture.
    true = [17, 18, 19, 20, 21, 22]
    shifted = [18, 19, 20, 21, 22, 23]
    got = label_chain(_positions(true), _evidence(shifted), LABELS).labels
    assert names(got) == names(shifted)


def test_thirteen_thoracic_vertebrae_use_t13() -> None:
    true = [T11, T12, T13, L1, L2, L3, L4, L5]
    # The extra vertebra's own evidence is split between T12 and L1; its neighbours are sure.
    ev = _evidence(true, strength=0.8, overrides={2: {T12: 0.3, L1: 0.3, T13: 0.05}})
    sure = drop_costs(np.full(len(true), 0.02), ChainPrior())  # every detection is surely a vertebra
    got = label_chain(_positions(true), ev, LABELS, drop=sure).labels
    assert names(got) == ["T11", "T12", "T13", "L1", "L2", "L3", "L4", "L5"]


def test_six_lumbar_vertebrae_use_l6() -> None:
    true = [T12, L1, L2, L3, L4, L5, L6]
    ev = _evidence(true, strength=0.8, overrides={6: {L5: 0.5, L6: 0.05}})
    sure = drop_costs(np.full(len(true), 0.02), ChainPrior())
    got = label_chain(_positions(true), ev, LABELS, drop=sure).labels
    assert names(got) == ["T12", "L1", "L2", "L3", "L4", "L5", "L6"]


def test_missing_vertebra_is_skipped_not_renamed() -> None:
    # L3 was not detected: L2 and L4 sit two lumbar spacings apart.
    true = [L1, L2, L4, L5]
    pos = _positions(true, gaps={L4: SPACING["L"]})
    ev = _evidence(true, strength=0.5)
    got = label_chain(pos, ev, LABELS, drop=drop_costs(np.full(len(true), 0.02), ChainPrior())).labels
    assert names(got) == ["L1", "L2", "L4", "L5"]


def test_spacing_decides_between_equal_evidence() -> None:
    # Flat evidence for the lower two: spacing alone must keep them consecutive, not skipped.
    true = [L1, L2, L3]
    ev = _evidence(true, strength=0.9, overrides={2: {L3: 0.2, L4: 0.2}})
    assert names(label_chain(_positions(true), ev, LABELS).labels) == ["L1", "L2", "L3"]


def test_more_vertebrae_than_labels_drops_the_excess() -> None:
    pos = np.array([[0.0, 0.0, -20.0 * n] for n in range(30)])
    ev = np.log(np.full((30, len(LABELS)), 1.0 / len(LABELS)))
    got = [v for v in label_chain(pos, ev, LABELS).labels if v is not None]
    assert 0 < len(got) <= 26
    assert len(set(got)) == len(got)


def test_a_detection_between_two_vertebrae_is_dropped() -> None:
    # A second answer half-way between L1 and L2 (not settled on a body), unsure of its level.
    pos = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -17.0], [0.0, 0.0, -35.0], [0.0, 0.0, -70.0]])
    ev = _evidence([L1, L1, L2, L3], overrides={1: {L1: 0.3, L2: 0.3}})
    got = label_chain(pos, ev, LABELS, drop=drop_costs([0.05, 0.4, 0.05, 0.05], ChainPrior())).labels
    assert got == [L1, None, L2, L3]


def test_a_sure_vertebra_is_named_not_dropped() -> None:
    true = [L1, L2, L3]
    ev = _evidence(true, strength=0.9, overrides={1: {L2: 0.2, L3: 0.2}})
    sure = drop_costs(np.full(3, 0.01), ChainPrior())
    assert label_chain(_positions(true), ev, LABELS, drop=sure).labels == true


def test_empty_chain() -> None:
    assert label_chain(np.zeros((0, 3)), np.zeros((0, len(LABELS))), LABELS).labels == []


def test_transitions_allow_only_anatomical_moves() -> None:
    moves = {lower for lower, _, _ in transitions(T12)}
    assert moves == {L1, L2, T13}
    assert {lower for lower, _, _ in transitions(T11)} == {T12, L1}
    assert {lower for lower, _, _ in transitions(L5)} == {L6}
    assert transitions(L6) == []


def test_fit_chain_prior_learns_offsets_and_ignores_gaps() -> None:
    subjects = []
    rng = np.random.default_rng(0)
    for _ in range(20):
        cents = {lab: (0.0, 0.0, -30.0 * n + rng.normal(0, 1)) for n, lab in enumerate([T11, T12, L1, L2])}
        subjects.append(cents)
    prior = fit_chain_prior(subjects, min_std_mm=2.0, rel_std=0.0)
    mean, std = prior.pair(T12, L1)
    assert mean == pytest.approx(30.0, abs=1.0)
    assert 2.0 <= std < 3.0
    # T11 -> L1 is the 11-thoracic variant: with T12 present in every subject it is never measured.
    assert (T11, L1) not in prior.spacing
    again = ChainPrior.from_json(prior.to_json())
    assert again.pair(T12, L1) == prior.pair(T12, L1)


def test_region_evidence_puts_the_last_rib_where_the_region_head_sees_it() -> None:
    """Diffuse level evidence that leans one level low everywhere (0.3 on the next level, 0.15 on the
    right one) names the whole chain one low; confident region evidence that sees ribs on T10-T12 and
    none on L1-L3 (SPINEPS weighs a region softmax beside the level one) puts T12/L1 right, and with
    weight 0 changes nothing."""
    true = [17, 18, 19, 20, 21, 22]  # T10 .. L3
    ev = _evidence(true, overrides={n: {lab + 1: 0.3, lab: 0.15} for n, lab in enumerate(true)})
    pos = _positions(true)
    assert names(label_chain(pos, ev, LABELS).labels) == ["T11", "T12", "L1", "L2", "L3", "L4"]
    regions = np.array([[0.02, 0.9, 0.08]] * 3 + [[0.02, 0.08, 0.9]] * 3)  # C, T, L
    got = label_chain(pos, with_region_evidence(ev, regions, LABELS, 1.0), LABELS).labels
    assert names(got) == ["T10", "T11", "T12", "L1", "L2", "L3"]
    unchanged = label_chain(pos, with_region_evidence(ev, regions, LABELS, 0.0), LABELS).labels
    assert unchanged == label_chain(pos, ev, LABELS).labels


def test_regions_follow_the_ribs() -> None:
    assert [region_of(lab) for lab in (1, 7, 8, 19, T13, L1, L6)] == ["C", "C", "T", "T", "T", "L", "L"]
    assert REGIONS == ("C", "T", "L")
