from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

from storage import (
    DELIVERY_TRANSITIONS,
    JOB_TRANSITIONS,
    DeliveryState,
    IllegalTransition,
    JobState,
    Ledger,
    NotFound,
    check_delivery_transition,
    check_job_transition,
)
from storage.migrate import current_revision, head_revision

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def queued_job(ledger: Ledger, uid: str = "1.2.3.4", now: datetime = T0) -> int:
    ledger.record_instance("1.2.3", uid, 1000, f"incoming/1.2.3/{uid}", now=now)
    (job_id,) = ledger.queue_quiet_series(30, now=now + timedelta(seconds=31))
    return job_id


def test_migrations_run_on_an_empty_database(tmp_path: Path) -> None:
    led = Ledger(f"sqlite:///{tmp_path / 'new' / 'l.sqlite3'}")
    assert current_revision(led.engine) is None
    led.upgrade()
    assert current_revision(led.engine) == head_revision(led.engine)
    assert {"series", "job", "delivery", "event", "alembic_version"} <= set(
        inspect(led.engine).get_table_names()
    )
    led.upgrade()  # idempotent at every start
    with led.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


ALL_PAIRS = [(a, b) for a in JobState for b in JobState]


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS)
def test_every_job_transition_is_either_legal_or_raises(current: JobState, target: JobState) -> None:
    if target in JOB_TRANSITIONS[current]:
        check_job_transition(1, current, target)
    else:
        with pytest.raises(
            IllegalTransition, match=f"job 1: cannot go from {current.value} to {target.value}"
        ):
            check_job_transition(1, current, target)


@pytest.mark.parametrize(("current", "target"), [(a, b) for a in DeliveryState for b in DeliveryState])
def test_every_delivery_transition_is_either_legal_or_raises(
    current: DeliveryState, target: DeliveryState
) -> None:
    if target in DELIVERY_TRANSITIONS[current]:
        check_delivery_transition(7, current, target)
    else:
        with pytest.raises(IllegalTransition, match="delivery 7"):
            check_delivery_transition(7, current, target)


def test_job_life_cycle_through_the_ledger(ledger: Ledger) -> None:
    job_id = queued_job(ledger)
    job = ledger.claim_job("w1", lease_s=60, now=T0 + timedelta(minutes=1))
    assert job is not None and job.id == job_id and job.state == JobState.RUNNING and job.attempts == 1
    assert ledger.claim_job("w2", lease_s=60, now=T0 + timedelta(minutes=1)) is None
    done = ledger.succeed_job(
        job_id,
        owner="w1",
        timings={"stage1": 1.5},
        model_version="v1",
        output_path="out/1",
        destinations=["pacs", "archive"],
        now=T0 + timedelta(minutes=2),
    )
    assert done.state == JobState.SUCCEEDED and done.finished_at is not None
    assert sorted(d.destination for d in done.deliveries) == ["archive", "pacs"]
    assert all(d.state == DeliveryState.PENDING for d in done.deliveries)
    kinds = [e.kind for e in ledger.events(job_id=job_id)]
    assert kinds[:3] == ["job.queued", "job.running", "job.succeeded"]
    # SUCCEEDED is final: every move out of it raises and changes nothing
    with pytest.raises(IllegalTransition):
        ledger.retry_job(job_id)
    with pytest.raises(IllegalTransition):
        ledger.cancel_job(job_id)
    assert ledger.get_job(job_id).state == JobState.SUCCEEDED


def test_illegal_moves_through_the_ledger_change_nothing(ledger: Ledger) -> None:
    job_id = queued_job(ledger)
    with pytest.raises(IllegalTransition):
        ledger.retry_job(job_id)  # QUEUED -> QUEUED
    with pytest.raises(IllegalTransition):
        ledger.fail_job(job_id, "boom")  # QUEUED -> FAILED
    with pytest.raises(IllegalTransition):
        ledger.succeed_job(
            job_id, owner=None, timings={}, model_version="v", output_path="o", destinations=[]
        )
    assert ledger.get_job(job_id).state == JobState.QUEUED
    with pytest.raises(NotFound):
        ledger.cancel_job(999)


def test_fail_retry_cancel(ledger: Ledger) -> None:
    job_id = queued_job(ledger)
    ledger.claim_job("w1", 60)
    failed = ledger.fail_job(job_id, "series has gantry tilt of 12.0 degrees", owner="w1")
    assert (
        failed.state == JobState.FAILED and failed.failure_reason == "series has gantry tilt of 12.0 degrees"
    )
    retried = ledger.retry_job(job_id)
    assert retried.state == JobState.QUEUED and retried.attempts == 0 and retried.failure_reason is None
    cancelled = ledger.cancel_job(job_id)
    assert cancelled.state == JobState.CANCELLED
    assert ledger.retry_job(job_id).state == JobState.QUEUED


def test_only_the_lease_owner_finishes_a_job(ledger: Ledger) -> None:
    job_id = queued_job(ledger)
    ledger.claim_job("w1", 60)
    with pytest.raises(IllegalTransition, match="held by w1"):
        ledger.fail_job(job_id, "x", owner="w2")
    assert ledger.renew_lease(job_id, "w1", 60)
    assert not ledger.renew_lease(job_id, "w2", 60)


def test_release_returns_the_job_without_spending_an_attempt(ledger: Ledger) -> None:
    job_id = queued_job(ledger)
    ledger.claim_job("w1", 60)
    released = ledger.release_job(job_id, owner="w1")
    assert released.state == JobState.QUEUED and released.attempts == 0 and released.lease_owner is None


def test_requeue_spends_the_attempt_and_keeps_the_reason(ledger: Ledger) -> None:
    job_id = queued_job(ledger)
    ledger.claim_job("w1", 60)
    job = ledger.requeue_job(job_id, owner="w1", reason="RuntimeError: out of memory")
    assert job.state == JobState.QUEUED and job.attempts == 1
    assert job.failure_reason == "RuntimeError: out of memory"
    again = ledger.claim_job("w1", 60)
    assert again is not None and again.attempts == 2


def test_expired_lease_is_reclaimed_then_failed_after_max_attempts(ledger: Ledger) -> None:
    job_id = queued_job(ledger)
    now = T0 + timedelta(minutes=1)
    for attempt in range(1, 4):
        job = ledger.claim_job(f"w{attempt}", lease_s=60, now=now)
        assert job is not None and job.attempts == attempt
        assert ledger.claim_job("other", lease_s=60, now=now + timedelta(seconds=30)) is None
        now += timedelta(seconds=61)  # the worker died: the lease lapses
    assert ledger.claim_job("w4", lease_s=60, now=now) is None
    job = ledger.get_job(job_id)
    assert job.state == JobState.FAILED
    assert job.failure_reason is not None and "3 attempt(s)" in job.failure_reason


def test_late_instances_open_a_new_series_version(ledger: Ledger) -> None:
    s1 = ledger.record_instance("1.2", "1.2.9", 10, "incoming/1.2/1.2.9", now=T0)
    s1b = ledger.record_instance("1.2", "1.2.9", 10, "incoming/1.2/1.2.9", now=T0 + timedelta(seconds=5))
    assert s1b.id == s1.id and s1b.instance_count == 2 and s1b.byte_count == 20
    assert ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=20)) == []  # not quiet yet
    jobs = ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=40))
    assert len(jobs) == 1
    assert ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=80)) == []  # exactly once per version
    s2 = ledger.record_instance("1.2", "1.2.9", 10, "incoming/1.2/1.2.9", now=T0 + timedelta(seconds=90))
    assert s2.id != s1.id and s2.version == 2 and s2.instance_count == 1


def test_delivery_attempts_back_off_and_finish(ledger: Ledger) -> None:
    job_id = queued_job(ledger)
    ledger.claim_job("w1", 60, now=T0)
    ledger.succeed_job(
        job_id, owner="w1", timings={}, model_version="v1", output_path="o", destinations=["pacs"], now=T0
    )
    (delivery,) = ledger.due_deliveries(now=T0)
    retry_at = T0 + timedelta(seconds=10)
    d = ledger.record_delivery_attempt(
        delivery.id,
        sent_instances=["1.2.3.1"],
        status=None,
        error="connection refused",
        outcome=DeliveryState.PENDING,
        next_attempt_at=retry_at,
        now=T0,
    )
    assert d.attempts == 1 and d.state == DeliveryState.PENDING
    assert ledger.due_deliveries(now=T0 + timedelta(seconds=5)) == []
    assert [x.id for x in ledger.due_deliveries(now=retry_at)] == [delivery.id]
    d = ledger.record_delivery_attempt(
        delivery.id,
        sent_instances=["1.2.3.2"],
        status=0,
        error=None,
        outcome=DeliveryState.DELIVERED,
        now=retry_at,
    )
    assert d.state == DeliveryState.DELIVERED and d.sent_instances == ["1.2.3.1", "1.2.3.2"]
    with pytest.raises(IllegalTransition):
        ledger.record_delivery_attempt(
            delivery.id, sent_instances=[], status=0, error=None, outcome=DeliveryState.DELIVERED
        )
    with pytest.raises(IllegalTransition):
        ledger.retry_delivery(delivery.id)
    assert ledger.delivery_counts()[DeliveryState.DELIVERED] == 1


def test_a_due_delivery_is_claimed_once(ledger: Ledger) -> None:
    job_id = queued_job(ledger)
    ledger.claim_job("w1", 60, now=T0)
    ledger.succeed_job(
        job_id, owner="w1", timings={}, model_version="v1", output_path="o", destinations=["pacs"], now=T0
    )
    (seen_by_a,) = ledger.due_deliveries(now=T0)
    (seen_by_b,) = ledger.due_deliveries(now=T0)
    assert ledger.claim_delivery(seen_by_a, 300, now=T0)
    assert not ledger.claim_delivery(seen_by_b, 300, now=T0)  # the other agent lost the race
    assert ledger.due_deliveries(now=T0 + timedelta(seconds=299)) == []
    assert len(ledger.due_deliveries(now=T0 + timedelta(seconds=300))) == 1  # lease lapsed: due again


def test_naive_datetimes_are_refused(ledger: Ledger) -> None:
    with pytest.raises(Exception, match="naive datetime"):
        ledger.record_instance("1", "1.1", 1, "p", now=datetime(2026, 1, 1))


def _claim_all(url: str, owner: str, queue: multiprocessing.Queue, start: Any) -> None:  # type: ignore[type-arg]
    led = Ledger(url)
    led.ping()  # connected before the start line: the race is between claims, not between start-ups
    start.wait(120)
    won: list[int] = []
    while True:
        job = led.claim_job(owner, lease_s=600)
        if job is None:
            break
        won.append(job.id)
    queue.put((owner, won))


def claim_in_processes(url: str, processes: int = 2) -> list[list[int]]:
    """Let ``processes`` spawned workers claim jobs from the ledger at ``url`` until none is left;
    return the job ids each one won. A barrier starts them together (each has connected first)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start = ctx.Barrier(processes)
    procs = [ctx.Process(target=_claim_all, args=(url, f"p{n}", queue, start)) for n in range(processes)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return [won for _, won in sorted(results)]


def test_two_processes_claiming_on_sqlite_never_share_a_job(ledger: Ledger, ledger_url: str) -> None:
    for i in range(40):
        ledger.record_instance("1.2", f"1.2.{i}", 1, "p", now=T0)
    job_ids = ledger.queue_quiet_series(1, now=T0 + timedelta(seconds=5))
    assert len(job_ids) == 40
    wins = claim_in_processes(ledger_url)
    claimed = [job_id for won in wins for job_id in won]
    assert sorted(claimed) == sorted(job_ids)  # every job claimed exactly once
    assert all(len(won) >= 1 for won in wins), f"one process won every job: {[len(w) for w in wins]}"
    assert len(set(claimed)) == len(claimed)


def test_single_queued_job_has_exactly_one_winner_among_processes(ledger: Ledger, ledger_url: str) -> None:
    for _round in range(5):
        queued_job(ledger, uid=f"9.9.{_round}")
        assert sum(len(won) for won in claim_in_processes(ledger_url)) == 1
