"""Exact effects of the worker's and the admin's job moves and of retention's two ledger calls: who may move
a job, how many attempts and deferrals are left, what the audit trail says, and which jobs retention may
take. Literal expectations from the documented behaviour (storage/ledger.py docstrings); written for the
mutants of the ledger that the other tests let survive (docs/testing.md, mutation testing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storage import DeliveryState, IllegalTransition, JobState, Ledger

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _queued(ledger: Ledger, series: str, at: datetime) -> int:
    """One QUEUED job for a new one-instance series received at ``at``."""
    ledger.record_instance("9.8.7", series, 64, f"incoming/9.8.7/{series}", now=at)
    (job_id,) = ledger.queue_quiet_series(30, now=at + timedelta(seconds=31))
    return job_id


def _claim(ledger: Ledger, owner: str, job_id: int, at: datetime) -> None:
    job = ledger.claim_job(owner, lease_s=600, now=at)
    assert job is not None and job.id == job_id and job.lease_owner == owner


def _succeeded(ledger: Ledger, series: str, at: datetime, destinations: list[str]) -> int:
    """A job that succeeded at ``at`` with PENDING deliveries to ``destinations``."""
    job_id = _queued(ledger, series, at - timedelta(minutes=1))
    _claim(ledger, "w1", job_id, at - timedelta(seconds=10))
    ledger.succeed_job(
        job_id, owner="w1", timings={}, model_version="v1", output_path=f"out/{series}",
        destinations=destinations, now=at,
    )  # fmt: skip
    return job_id


def _details(ledger: Ledger, job_id: int) -> list[tuple[str, str | None]]:
    return [(e.kind, e.detail) for e in ledger.events(job_id=job_id)][-1:]


def test_only_the_lease_owner_may_release_defer_or_requeue_a_running_job(ledger: Ledger) -> None:
    job_id = _queued(ledger, "s1", T0)
    _claim(ledger, "w1@h:1", job_id, T0 + timedelta(minutes=1))
    with pytest.raises(IllegalTransition, match="held by w1@h:1, not w2@h:2"):
        ledger.release_job(job_id, owner="w2@h:2")
    with pytest.raises(IllegalTransition, match="held by w1@h:1, not w2@h:2"):
        ledger.defer_job(job_id, owner="w2@h:2", reason="disk full", delay_s=60)
    with pytest.raises(IllegalTransition, match="held by w1@h:1, not w2@h:2"):
        ledger.requeue_job(job_id, owner="w2@h:2", reason="crash")
    job = ledger.get_job(job_id)
    assert (job.state, job.lease_owner, job.attempts) == (JobState.RUNNING, "w1@h:1", 1)


def test_release_gives_back_exactly_the_attempt_it_took(ledger: Ledger) -> None:
    job_id = _queued(ledger, "s1", T0)
    _claim(ledger, "w1", job_id, T0 + timedelta(minutes=1))
    ledger.requeue_job(job_id, owner="w1", reason="crash", now=T0 + timedelta(minutes=2))
    requeued = ledger.get_job(job_id)
    assert (requeued.attempts, requeued.lease_owner, requeued.lease_expires_at) == (1, None, None)
    _claim(ledger, "w1", job_id, T0 + timedelta(minutes=3))  # attempt 2
    job = ledger.release_job(job_id, owner="w1", now=T0 + timedelta(minutes=4))
    assert (job.state, job.attempts, job.lease_owner, job.lease_expires_at) == (
        JobState.QUEUED, 1, None, None,
    )  # fmt: skip
    assert _details(ledger, job_id) == [("job.queued", "released by w1")]


def test_defer_keeps_the_attempt_counts_each_deferral_and_keeps_the_reason(ledger: Ledger) -> None:
    job_id = _queued(ledger, "s1", T0)
    t = T0 + timedelta(minutes=1)
    _claim(ledger, "w1", job_id, t)
    ledger.requeue_job(job_id, owner="w1", reason="crash", now=t)
    for n, reason in enumerate(("disk full", "out of memory"), start=1):
        t += timedelta(minutes=10)
        _claim(ledger, "w1", job_id, t)  # attempt 2 each time: the deferral gives it back
        job = ledger.defer_job(job_id, owner="w1", reason=reason, delay_s=90, now=t)
        assert (job.state, job.attempts, job.deferrals) == (JobState.QUEUED, 1, n)
        assert (job.failure_reason, job.lease_owner, job.lease_expires_at) == (reason, None, None)
        assert job.not_before is not None and job.not_before.replace(tzinfo=UTC) == t + timedelta(seconds=90)
        assert _details(ledger, job_id) == [("job.queued", f"deferred 90 s (attempt not spent): {reason}")]


def test_admin_cancel_and_retry_are_recorded_and_retry_starts_afresh(ledger: Ledger) -> None:
    job_id = _queued(ledger, "s1", T0)
    _claim(ledger, "w1", job_id, T0 + timedelta(minutes=1))
    ledger.defer_job(job_id, owner="w1", reason="disk full", delay_s=5, now=T0 + timedelta(minutes=1))
    ledger.cancel_job(job_id, now=T0 + timedelta(minutes=2))
    assert _details(ledger, job_id) == [("job.cancelled", "cancelled by an admin")]
    job = ledger.retry_job(job_id, now=T0 + timedelta(minutes=3))
    assert (job.state, job.attempts, job.deferrals, job.not_before, job.failure_reason) == (
        JobState.QUEUED, 0, 0, None, None,
    )  # fmt: skip
    assert _details(ledger, job_id) == [("job.queued", "retried by an admin")]


def test_release_owned_jobs_at_start_says_why_and_clears_the_lease(ledger: Ledger) -> None:
    spent = _queued(ledger, "s1", T0)
    t = T0 + timedelta(minutes=1)
    for _ in range(2):  # attempts 1 and 2 fail; attempt 3 is interrupted by the agent stopping
        _claim(ledger, "a@h:1", spent, t)
        ledger.requeue_job(spent, owner="a@h:1", reason="crash", now=t)
        t += timedelta(minutes=1)
    _claim(ledger, "a@h:1", spent, t)
    fresh = _queued(ledger, "s2", t)
    _claim(ledger, "a@h:1", fresh, t + timedelta(minutes=1))

    assert sorted(ledger.release_owned_jobs("a", now=t + timedelta(minutes=2))) == [spent, fresh]
    failed, queued = ledger.get_job(spent), ledger.get_job(fresh)
    assert (failed.state, failed.lease_owner) == (JobState.FAILED, None)
    assert _details(ledger, spent) == [("job.failed", "the agent stopped during 3 attempt(s); giving up")]
    assert (queued.state, queued.attempts, queued.lease_owner, queued.lease_expires_at) == (
        JobState.QUEUED, 1, None, None,
    )  # fmt: skip
    assert _details(ledger, fresh) == [("job.queued", "released at start (a@h:1 stopped)")]


def test_purge_candidates_are_finished_jobs_without_pending_deliveries_oldest_finished_first(
    ledger: Ledger,
) -> None:
    late = _succeeded(ledger, "s1", T0 + timedelta(hours=2), ["pacs"])  # lower id, finished later
    early = _succeeded(ledger, "s2", T0 + timedelta(hours=1), ["pacs", "archive"])
    waiting = _succeeded(ledger, "s3", T0 + timedelta(hours=3), ["pacs"])  # its delivery is still PENDING
    running = _queued(ledger, "s4", T0 + timedelta(hours=4))
    _claim(ledger, "w1", running, T0 + timedelta(hours=4, minutes=1))
    queued = _queued(ledger, "s5", T0 + timedelta(hours=4))
    for job_id in (late, early):
        for d in ledger.list_deliveries(job_id):
            ledger.record_delivery_attempt(
                d.id, sent_instances=[], status=0, error=None, outcome=DeliveryState.DELIVERED,
                now=T0 + timedelta(hours=5),
            )  # fmt: skip
    candidates = ledger.purge_candidates()
    assert [j.id for j in candidates] == [early, late]
    assert {waiting, running, queued}.isdisjoint(j.id for j in candidates)
    # series and deliveries come loaded: retention reads them after the session is closed
    assert sorted(d.destination for d in candidates[0].deliveries) == ["archive", "pacs"]
    assert candidates[0].series.series_instance_uid == "s2"
    # strictly before: `late` finished at exactly T0 + 2 h
    assert [j.id for j in ledger.purge_candidates(finished_before=T0 + timedelta(hours=2))] == [early]
    assert ledger.mark_purged(early, now=T0 + timedelta(days=1)) is True
    assert [j.id for j in ledger.purge_candidates()] == [late]  # a purged job is no candidate again


def test_mark_purged_refuses_jobs_retention_may_not_take_and_records_the_purge(ledger: Ledger) -> None:
    done = _succeeded(ledger, "s1", T0 + timedelta(hours=1), [])
    waiting = _succeeded(ledger, "s2", T0 + timedelta(hours=2), ["pacs"])  # PENDING delivery
    assert ledger.mark_purged(waiting, now=T0 + timedelta(days=30)) is False
    queued = _queued(ledger, "s3", T0 + timedelta(hours=3))
    assert ledger.mark_purged(queued, now=T0 + timedelta(days=30)) is False
    assert ledger.get_job(waiting).purged_at is None and ledger.get_job(queued).purged_at is None

    first = T0 + timedelta(days=30)
    assert ledger.mark_purged(done, now=first) is True
    assert ledger.mark_purged(done, now=first + timedelta(days=1)) is False  # already purged
    purged_at = ledger.get_job(done).purged_at
    assert purged_at is not None and purged_at.replace(tzinfo=UTC) == first
    assert _details(ledger, done) == [("job.purged", "files removed by retention")]


def test_version_instances_and_newer_instance_never_look_at_another_series(ledger: Ledger) -> None:
    def receive(series: str, sop: str, at: datetime) -> int:
        row = ledger.record_instance(
            "9.8.7", series, 64, f"incoming/9.8.7/{series}", at, sop_instance_uid=sop, sha256="a" * 64
        )
        return row.id

    a1 = receive("A", "1.9.1", T0)
    b1 = receive("B", "1.8.1", T0)
    assert sorted(ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=40))) == [1, 2]
    b2 = receive("B", "1.9.1", T0 + timedelta(minutes=1))  # a reused SOP Instance UID, in series B
    assert (a1, b1, b2) == (1, 2, 3)
    assert sorted(ledger.version_instances(a1)) == ["1.9.1"]
    assert sorted(ledger.version_instances(b2)) == ["1.8.1", "1.9.1"]
    assert ledger.newer_instance(a1, "1.9.1") is False  # B's version 2 is not a later version of A


def test_list_jobs_newest_first_and_since_includes_its_own_instant(ledger: Ledger) -> None:
    first = _queued(ledger, "s1", T0)
    second = _queued(ledger, "s2", T0 + timedelta(hours=1))
    third = _queued(ledger, "s3", T0 + timedelta(hours=2))
    assert [j.id for j in ledger.list_jobs()] == [third, second, first]
    since = T0 + timedelta(hours=1, seconds=31)  # when the second job was queued
    assert [j.id for j in ledger.list_jobs(since=since)] == [third, second]
    assert [j.id for j in ledger.list_jobs(limit=2)] == [third, second]


def test_job_counts_per_state_with_zeros(ledger: Ledger) -> None:
    _queued(ledger, "s1", T0)
    _queued(ledger, "s2", T0 + timedelta(hours=1))
    assert ledger.job_counts() == {
        JobState.QUEUED: 2,
        JobState.RUNNING: 0,
        JobState.SUCCEEDED: 0,
        JobState.FAILED: 0,
        JobState.CANCELLED: 0,
        JobState.SKIPPED: 0,
    }


def test_renewing_a_lease_extends_only_that_job(ledger: Ledger) -> None:
    first = _queued(ledger, "s1", T0)
    second = _queued(ledger, "s2", T0 + timedelta(minutes=1))
    _claim(ledger, "w1", first, T0 + timedelta(minutes=2))  # lease until T0 + 12 min
    _claim(ledger, "w1", second, T0 + timedelta(minutes=3))  # same owner, lease until T0 + 13 min
    assert ledger.renew_lease(first, "w1", 600, now=T0 + timedelta(minutes=5)) is True
    leases = [ledger.get_job(j).lease_expires_at for j in (first, second)]
    assert [t.replace(tzinfo=UTC) for t in leases if t is not None] == [
        T0 + timedelta(minutes=15),
        T0 + timedelta(minutes=13),
    ]


def test_delivery_counts_per_state_with_zeros(ledger: Ledger) -> None:
    job_id = _succeeded(ledger, "s1", T0, ["a", "b", "c"])
    a, b, _c = sorted(ledger.list_deliveries(job_id), key=lambda d: d.id)
    for d, outcome in ((a, DeliveryState.DELIVERED), (b, DeliveryState.FAILED)):
        ledger.record_delivery_attempt(d.id, sent_instances=[], status=0, error=None, outcome=outcome, now=T0)
    assert ledger.delivery_counts() == {
        DeliveryState.PENDING: 1,
        DeliveryState.DELIVERED: 1,
        DeliveryState.FAILED: 1,
        DeliveryState.CANCELLED: 0,
    }
