"""What an attempt does with instances in doubt when the destination's answer to C-FIND does not come.

An instance is *in doubt* when its C-STORE went out and no answer is on record (a kill, a lost
association); the next attempt asks the destination (C-FIND) before sending it again. The destination
here is :class:`QueryStoreSCP` (tests/reliability/suite_support.py, a pynetdicom SCP on loopback that
stores and answers C-FIND, counting every reception), told to reject or abort the query association, or
to answer the C-FIND with a failure status. The doubt is set up as a kill leaves it: the destination
already holds the first instance (sent to it beforehand), and the ledger marks it in doubt.

Judged by what the destination holds (one count per reception), the delivery row, its events, the log
and the counter; the attempts run with an explicit clock, so the back-off costs no waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.service.sender import QUERY_DEFERRALS, run_due_deliveries, send_files
from agent.web.metrics import REGISTRY
from config import Destination, Settings
from config.settings import DeliverySettings, StorageSettings
from storage import DeliveryState, Ledger
from storage.models import Delivery
from storage.spool import Spool
from tests.agent.service.test_sender_bookkeeping import _job_with_outputs
from tests.dicom_io.ct_series import CTSeries
from tests.reliability.suite_support import start_query_scp

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
#: Stands for patient data in a peer's free text; must never reach INFO or WARNING lines or the ledger.
PATIENT = "DOE^JANE"


class Case:
    """One delivery of two CT instances to a :class:`QueryStoreSCP`, the first held and in doubt."""

    def __init__(
        self, tmp_path: Path, ledger: Ledger, ct_series: CTSeries, max_attempts: int, **faults: Any
    ) -> None:
        self.ledger = ledger
        self.spool = Spool(tmp_path / "spool")
        self.dest = start_query_scp(tmp_path / "dest", **faults)
        files = ct_series.files[:2]
        self.uids = [str(ds.SOPInstanceUID) for ds in ct_series.datasets[:2]]
        _job_with_outputs(ledger, self.spool, files)
        (delivery,) = ledger.list_deliveries()
        self.id = delivery.id
        # the destination stored the first instance; its answer never reached the agent (a kill)
        first = send_files(self.dest.ae_title, "127.0.0.1", self.dest.port, files[:1], calling_ae="BEFORE")
        assert first.all_succeeded, first.summary()
        ledger.mark_in_doubt(delivery.id, self.uids[0])
        self.settings = Settings(
            storage=StorageSettings(spool_dir=self.spool.root),
            destinations=[
                Destination(name="pacs", ae_title=self.dest.ae_title, host="127.0.0.1", port=self.dest.port)
            ],
            delivery=DeliverySettings(
                calling_ae_title="SPINEAGENT", max_attempts=max_attempts, retry_base_s=10, retry_cap_s=60
            ),
        )
        self.now = T0

    def attempt(self) -> Delivery:
        """The next attempt, at the time it is due."""
        (done,) = run_due_deliveries(self.ledger, self.settings, self.spool, now=self.now)
        row = self.ledger.list_deliveries()[0]
        assert done.id == row.id == self.id
        if row.next_attempt_at is not None:
            self.now = row.next_attempt_at
        return row

    def held(self) -> list[int]:
        counts = self.dest.held()
        return [counts[uid] for uid in self.uids]

    def events(self, kind: str) -> list[str]:
        return [e.detail or "" for e in self.ledger.events() if e.kind == kind and e.delivery_id == self.id]


@pytest.fixture
def make_case(tmp_path: Path, ledger: Ledger, ct_series: CTSeries) -> Iterator[Callable[..., Case]]:
    """``make_case(max_attempts=10, **faults)``: a :class:`Case` whose destination has those faults."""
    cases: list[Case] = []

    def make(max_attempts: int = 10, **faults: Any) -> Case:
        cases.append(Case(tmp_path, ledger, ct_series, max_attempts, **faults))
        return cases[-1]

    yield make
    for case in cases:
        case.dest.stop()


def _in_doubt_counter(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "spine_agent_delivery_in_doubt_instances_total", {"outcome": outcome, "destination": "pacs"}
    )
    return float(value or 0.0)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (
            "reject_transient",
            "rejected the association (Rejected Transient, source Service Provider "
            "(Presentation): Local limit exceeded)",
        ),
        ("abort", "aborted or did not answer the association request for C-FIND"),
    ],
)
def test_a_query_association_refused_for_now_leaves_the_instance_in_doubt_and_asks_later(
    fault: str, reason: str, make_case: Callable[..., Case]
) -> None:
    """A PACS at its association limit (a transient rejection), or one that aborts the query association
    while setting it up, twice: those attempts send nothing (a re-send would be held twice), count, and
    say why; the third asks, learns that the destination holds the first instance, and sends the second."""
    case = make_case(query_fault=fault, query_faults=2)
    held_before = _in_doubt_counter("held")

    for n in (1, 2):
        row = case.attempt()
        assert (row.state, row.attempts) == (DeliveryState.PENDING, n), row.last_error
        assert row.in_doubt_instances == [case.uids[0]] and row.sent_instances == []
        assert str(row.last_error).startswith(f"in-doubt query deferred ({n} of {QUERY_DEFERRALS}): ")
        assert reason in str(row.last_error) and "nothing sent" in str(row.last_error)
        assert case.held() == [1, 0]  # nothing sent: the destination holds what it held
        assert case.dest.other_associations == 1  # only the store made beforehand; no store association
    assert [d.startswith("in-doubt query deferred") for d in case.events("delivery.retry")] == [True, True]
    assert case.events("delivery.in_doubt") == []  # nothing decided yet

    row = case.attempt()
    assert (row.state, row.attempts) == (DeliveryState.DELIVERED, 3)
    assert case.held() == [1, 1]  # exactly once
    assert sorted(row.sent_instances) == sorted(case.uids) and row.in_doubt_instances == []
    assert case.dest.query_associations == 3 and case.dest.finds == 1
    assert ["holds 1 (C-FIND), not sent again" in d for d in case.events("delivery.in_doubt")] == [True]
    assert _in_doubt_counter("held") == held_before + 1


def test_a_destination_that_aborts_every_query_association_gets_the_instance_again_in_the_end(
    make_case: Callable[..., Case],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Waiting is bounded: after QUERY_DEFERRALS deferred attempts the instance is sent again
    (at-least-once, a WARNING), rather than the delivery waiting until ``max_attempts`` fails it."""
    case = make_case(query_fault="abort")
    with caplog.at_level(logging.INFO, logger="agent.service.sender"):
        for n in range(1, QUERY_DEFERRALS + 1):
            row = case.attempt()
            assert (row.state, row.attempts, case.held()) == (DeliveryState.PENDING, n, [1, 0])
        row = case.attempt()
    assert (row.state, row.attempts) == (DeliveryState.DELIVERED, QUERY_DEFERRALS + 1)
    assert case.held() == [2, 1]  # the first sent again: at-least-once, as said
    assert case.dest.query_associations == QUERY_DEFERRALS + 1 and case.dest.finds == 0
    (decided,) = case.events("delivery.in_doubt")
    assert f"asking the destination failed after {QUERY_DEFERRALS} deferred attempt(s)" in decided
    assert "at-least-once" in decided
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "at-least-once" in warnings[0], warnings


def test_the_last_attempt_sends_rather_than_waits(make_case: Callable[..., Case]) -> None:
    """With ``max_attempts = 2`` the second attempt may not be deferred (that would fail the delivery):
    it sends the instance again."""
    case = make_case(max_attempts=2, query_fault="reject_transient")
    assert case.attempt().state == DeliveryState.PENDING
    row = case.attempt()
    assert (row.state, row.attempts, case.held()) == (DeliveryState.DELIVERED, 2, [2, 1]), row.last_error
    assert ["failed at the last attempt" in d for d in case.events("delivery.in_doubt")] == [True]


def test_a_permanent_rejection_of_the_query_sends_again_at_once(make_case: Callable[..., Case]) -> None:
    """Waiting would not help: the first attempt sends the instance again (at-least-once)."""
    case = make_case(query_fault="reject_permanent")
    row = case.attempt()
    assert (row.state, row.attempts, case.held()) == (DeliveryState.DELIVERED, 1, [2, 1]), row.last_error
    (decided,) = case.events("delivery.in_doubt")
    assert "Rejected Permanent" in decided and "at-least-once" in decided


@pytest.mark.parametrize(
    ("status", "deferred"),
    [(0xA700, True), (0xC001, False), (0x0122, False)],
    ids=["out-of-resources", "unable-to-process", "sop-class-not-supported"],
)
def test_a_c_find_failure_status_is_waited_out_only_when_it_says_out_of_resources(
    status: int,
    deferred: bool,
    make_case: Callable[..., Case],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """0xA7xx (Refused: Out of Resources) is asked again later; another failure status is a destination
    that cannot answer: sent again. Either way the peer's Error Comment (free text, here a patient's
    name) is neither in the INFO/WARNING lines nor in the ledger: only at DEBUG."""
    case = make_case(find_status=status, find_comment=f"no match for {PATIENT}")
    with caplog.at_level(logging.DEBUG):
        row = case.attempt()
    said = f"answered C-FIND with status 0x{status:04X}"
    if deferred:
        assert (row.state, case.held()) == (DeliveryState.PENDING, [1, 0])
        assert said in str(row.last_error) and "Out of Resources" in str(row.last_error)
    else:
        assert (row.state, case.held()) == (DeliveryState.DELIVERED, [2, 1])
        (decided,) = case.events("delivery.in_doubt")
        assert said in decided and "Error Comment (at DEBUG)" in decided
    ledger_text = " ".join(e.detail or "" for e in case.ledger.events()) + str(row.last_error)
    assert PATIENT not in ledger_text
    above_debug = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert not any(PATIENT in m for m in above_debug), above_debug
    assert any(PATIENT in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_a_query_association_lost_during_the_c_find_is_asked_again_later(
    make_case: Callable[..., Case],
) -> None:
    case = make_case(find_abort=True)
    row = case.attempt()
    assert (row.state, row.in_doubt_instances, case.held()) == (DeliveryState.PENDING, [case.uids[0]], [1, 0])
    assert str(row.last_error).startswith("in-doubt query deferred (1 of ")
    case.dest.find_abort = False
    row = case.attempt()
    assert (row.state, case.held()) == (DeliveryState.DELIVERED, [1, 1])


def test_an_instance_in_doubt_is_decided_and_counted_once(make_case: Callable[..., Case]) -> None:
    """A destination without C-FIND (the query fails: send again) whose store association is then
    rejected: the next attempt sends the instance without asking again, so it is counted once, with one
    event and one WARNING, not once per attempt."""
    case = make_case(find=False)
    case.dest.store_rejects = case.dest.other_associations + 1  # the next store association
    failed_before = _in_doubt_counter("query_failed")
    row = case.attempt()
    assert (row.state, row.in_doubt_instances, case.held()) == (DeliveryState.PENDING, [], [1, 0])
    assert "rejected the association" in str(row.last_error)
    row = case.attempt()
    assert (row.state, case.held()) == (DeliveryState.DELIVERED, [2, 1])  # at-least-once, as decided
    assert case.dest.query_associations == 1  # asked once
    assert len(case.events("delivery.in_doubt")) == 1
    assert _in_doubt_counter("query_failed") == failed_before + 1
