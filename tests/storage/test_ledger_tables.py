"""The ledger's state machines against literal tables written here, not read from the code under test.

``tests/storage/test_ledger.py`` checks that :func:`check_job_transition` agrees with
:data:`JOB_TRANSITIONS`; this file pins what those tables must *be* (docs/design.md, the job and delivery
life cycles), so that adding or dropping a move in the table is a visible test change.
"""

from __future__ import annotations

import pytest

from storage import (
    DELIVERY_TRANSITIONS,
    JOB_TRANSITIONS,
    DeliveryState,
    IllegalTransition,
    JobState,
    check_delivery_transition,
    check_job_transition,
)

# fmt: off
#: (from, to) for every legal job move. RUNNING->QUEUED: release, requeue, expired lease, deferral;
#: FAILED/CANCELLED->QUEUED: an admin's retry. SUCCEEDED is final. SKIPPED (routing left the series out)
#: is created final when the version closes: no move leads into it or out of it.
LEGAL_JOB_MOVES = {
    ("QUEUED", "RUNNING"), ("QUEUED", "CANCELLED"),
    ("RUNNING", "SUCCEEDED"), ("RUNNING", "FAILED"), ("RUNNING", "QUEUED"), ("RUNNING", "CANCELLED"),
    ("FAILED", "QUEUED"),
    ("CANCELLED", "QUEUED"),
}
#: (from, to) for every legal delivery move; FAILED/CANCELLED->PENDING is an admin's retry.
LEGAL_DELIVERY_MOVES = {
    ("PENDING", "DELIVERED"), ("PENDING", "FAILED"), ("PENDING", "CANCELLED"),
    ("FAILED", "PENDING"),
    ("CANCELLED", "PENDING"),
    ("DELIVERED", "PENDING"),  # an admin's re-send (deliveries resend, jobs send)
}
# fmt: on

JOB_STATES = ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED"]
DELIVERY_STATES = ["PENDING", "DELIVERED", "FAILED", "CANCELLED"]


def test_the_states_are_these_and_no_others() -> None:
    assert [s.value for s in JobState] == JOB_STATES
    assert [s.value for s in DeliveryState] == DELIVERY_STATES


def test_the_tables_hold_exactly_the_legal_moves() -> None:
    job_moves = {(a.value, b.value) for a, targets in JOB_TRANSITIONS.items() for b in targets}
    delivery_moves = {(a.value, b.value) for a, targets in DELIVERY_TRANSITIONS.items() for b in targets}
    assert job_moves == LEGAL_JOB_MOVES
    assert delivery_moves == LEGAL_DELIVERY_MOVES
    assert set(JOB_TRANSITIONS) == set(JobState) and set(DELIVERY_TRANSITIONS) == set(DeliveryState)


@pytest.mark.parametrize(("current", "target"), [(a, b) for a in JOB_STATES for b in JOB_STATES])
def test_each_job_move_is_allowed_or_refused_as_written_here(current: str, target: str) -> None:
    if (current, target) in LEGAL_JOB_MOVES:
        check_job_transition(3, JobState(current), JobState(target))
    else:
        with pytest.raises(IllegalTransition, match=f"job 3: cannot go from {current} to {target}"):
            check_job_transition(3, JobState(current), JobState(target))


@pytest.mark.parametrize(("current", "target"), [(a, b) for a in DELIVERY_STATES for b in DELIVERY_STATES])
def test_each_delivery_move_is_allowed_or_refused_as_written_here(current: str, target: str) -> None:
    if (current, target) in LEGAL_DELIVERY_MOVES:
        check_delivery_transition(5, DeliveryState(current), DeliveryState(target))
    else:
        with pytest.raises(IllegalTransition, match=f"delivery 5: cannot go from {current} to {target}"):
            check_delivery_transition(5, DeliveryState(current), DeliveryState(target))
