"""Ledger pieces of issue 16: instance records and identical re-sends, quiet time while up, deferral of
transient errors, release of this agent's jobs at start, per-instance delivery bookkeeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storage import DeliveryState, JobState, Ledger
from storage.spool import Spool, SpoolBusy

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SERIES = "1.2.3.4"


def receive(ledger: Ledger, sop: str, sha: str, now: datetime = T0, nbytes: int = 100):  # type: ignore[no-untyped-def]
    return ledger.record_instance(
        "1.2.3", SERIES, nbytes, f"incoming/1.2.3/{SERIES}", now, sop_instance_uid=sop, sha256=sha * 64
    )


def test_identical_resend_counts_nothing_and_opens_no_version(ledger: Ledger) -> None:
    assert not receive(ledger, "1.9.1", "a").duplicate
    assert receive(ledger, "1.9.1", "a", T0 + timedelta(seconds=5)).duplicate
    assert ledger.get_series(1).instance_count == 1
    assert ledger.get_series(1).last_received_at == T0 + timedelta(seconds=5)  # still restarts the clock
    assert ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=40)) == [1]
    assert receive(ledger, "1.9.1", "a", T0 + timedelta(minutes=5)).duplicate  # after the job: nothing
    assert [v.version for v in ledger.series_versions(SERIES)] == [1]
    changed = receive(ledger, "1.9.1", "b", T0 + timedelta(minutes=6))  # other bytes: new data
    assert not changed.duplicate and changed.version == 2


def test_version_instances_are_this_and_earlier_versions_only(ledger: Ledger) -> None:
    receive(ledger, "1.9.1", "a")
    receive(ledger, "1.9.2", "a")
    ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=40))
    receive(ledger, "1.9.3", "c", T0 + timedelta(minutes=1))
    receive(ledger, "1.9.1", "d", T0 + timedelta(minutes=1))
    assert sorted(ledger.version_instances(1)) == ["1.9.1", "1.9.2"]
    second = ledger.version_instances(2)
    assert sorted(second) == ["1.9.1", "1.9.2", "1.9.3"]
    assert second["1.9.1"].sha256 == "d" * 64  # the newest record wins
    assert ledger.newer_instance(1, "1.9.1") and not ledger.newer_instance(1, "1.9.2")


def test_quiet_time_counts_only_while_up(ledger: Ledger) -> None:
    receive(ledger, "1.9.1", "a")
    up = T0 + timedelta(hours=1)  # the agent was down for an hour
    assert ledger.queue_quiet_series(30, now=up + timedelta(seconds=29), up_since=up) == []
    assert ledger.queue_quiet_series(30, now=up + timedelta(seconds=30), up_since=up) == [1]


def test_a_deferred_job_keeps_its_attempt_and_waits(ledger: Ledger) -> None:
    receive(ledger, "1.9.1", "a")
    [job_id] = ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=31))
    now = T0 + timedelta(minutes=1)
    assert ledger.claim_job("w", 60, now=now) is not None
    job = ledger.defer_job(job_id, owner="w", reason="disk full", delay_s=30, now=now)
    assert (job.state, job.attempts, job.deferrals) == (JobState.QUEUED, 0, 1)
    assert ledger.claim_job("w", 60, now=now + timedelta(seconds=29)) is None
    assert ledger.claim_job("w", 60, now=now + timedelta(seconds=30)).attempts == 1  # type: ignore[union-attr]


def test_release_owned_jobs_touches_only_this_agent(ledger: Ledger) -> None:
    receive(ledger, "1.9.1", "a")
    ledger.record_instance("1.2.3", "1.2.3.5", 1, "incoming/1.2.3/1.2.3.5", T0)
    mine, theirs = ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=31))
    assert ledger.claim_job("aaaa@host:1", 900).id == mine  # type: ignore[union-attr]
    assert ledger.claim_job("bbbb@host:2", 900).id == theirs  # type: ignore[union-attr]
    assert ledger.release_owned_jobs("aaaa") == [mine]
    assert ledger.get_job(mine).state == JobState.QUEUED
    assert ledger.get_job(mine).attempts == 1  # the interrupted attempt counts
    assert ledger.get_job(theirs).state == JobState.RUNNING
    assert ledger.release_owned_jobs("aaaa") == []


def test_release_owned_jobs_fails_a_job_out_of_attempts(ledger: Ledger) -> None:
    receive(ledger, "1.9.1", "a")
    [job_id] = ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=31))
    for _ in range(ledger.max_attempts):
        ledger.claim_job("aaaa@h:1", 900)
        ledger.release_owned_jobs("aaaa")
    job = ledger.get_job(job_id)
    assert job.state == JobState.FAILED
    assert "agent stopped during 3 attempt(s)" in (job.failure_reason or "")


def test_record_sent_instance_is_kept_across_attempts(ledger: Ledger) -> None:
    receive(ledger, "1.9.1", "a")
    [job_id] = ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=31))
    ledger.claim_job("w", 60)
    [delivery] = ledger.succeed_job(
        job_id, owner="w", timings={}, model_version="v", output_path="outgoing/1", destinations=["pacs"]
    ).deliveries
    ledger.record_sent_instance(delivery.id, "1.9.9.1")
    ledger.record_sent_instance(delivery.id, "1.9.9.1")
    assert ledger.list_deliveries()[0].sent_instances == ["1.9.9.1"]
    done = ledger.record_delivery_attempt(
        delivery.id, sent_instances=["1.9.9.2"], status=0, error=None, outcome=DeliveryState.DELIVERED
    )
    assert done.sent_instances == ["1.9.9.1", "1.9.9.2"]


def test_agent_identity_survives_and_the_spool_lock_is_exclusive(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    identity = spool.agent_identity()
    assert len(identity) == 16 and Spool(tmp_path / "spool").agent_identity() == identity
    spool.lock()
    with pytest.raises(SpoolBusy, match="another spine-agent"):
        Spool(tmp_path / "spool").lock()
    spool.unlock()
    Spool(tmp_path / "spool").lock()
