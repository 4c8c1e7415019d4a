"""What the ledger records besides the state: the audit events, the admin's delivery retry, the lease, the
due list's order. Written to kill the mutants of storage/ledger.py that tests/storage/test_ledger.py lets
survive (docs/testing.md): each expectation is literal, from the documented behaviour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storage import DeliveryState, IllegalTransition, JobState, Ledger, NotFound

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _succeeded(ledger: Ledger, destinations: list[str], uid: str = "1.2.3.4") -> int:
    ledger.record_instance("1.2.3", uid, 1000, f"incoming/1.2.3/{uid}", now=T0)
    (job_id,) = ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=31))
    job = ledger.claim_job("w1", lease_s=60, now=T0 + timedelta(minutes=1))
    assert job is not None and job.id == job_id
    ledger.succeed_job(
        job_id,
        owner="w1",
        timings={"stage1": 1.0},
        model_version="v1",
        output_path="o",
        destinations=destinations,
        now=T0 + timedelta(minutes=2),
    )
    return job_id


def _events(ledger: Ledger, job_id: int) -> list[tuple[str, str | None, int | None, int | None, int | None]]:
    return [(e.kind, e.detail, e.job_id, e.series_id, e.delivery_id) for e in ledger.events(job_id=job_id)]


def test_a_delivery_life_is_recorded_event_by_event(ledger: Ledger) -> None:
    job_id = _succeeded(ledger, ["pacs"])
    series_id = ledger.get_job(job_id).series_id
    (d,) = ledger.list_deliveries(job_id)
    t1 = T0 + timedelta(minutes=3)
    ledger.record_delivery_attempt(
        d.id, sent_instances=["1.9"], status=0xA700, error="1/2 stored", outcome=DeliveryState.PENDING,
        next_attempt_at=t1 + timedelta(seconds=10), now=t1,
    )  # fmt: skip
    ledger.record_delivery_attempt(
        d.id, sent_instances=[], status=0xA900, error="refused", outcome=DeliveryState.FAILED, now=t1
    )
    retried = ledger.retry_delivery(d.id, now=t1 + timedelta(minutes=1))
    done = ledger.record_delivery_attempt(
        d.id, sent_instances=["1.8"], status=0, error=None, outcome=DeliveryState.DELIVERED, now=t1
    )

    assert (retried.state, retried.attempts, retried.finished_at) == (DeliveryState.PENDING, 0, None)
    assert retried.next_attempt_at == t1 + timedelta(minutes=1)
    assert done.state == DeliveryState.DELIVERED and done.attempts == 1 and done.finished_at == t1
    assert done.sent_instances == ["1.8", "1.9"] and (done.last_status, done.last_error) == (0, None)
    assert _events(ledger, job_id) == [
        ("job.queued", None, job_id, series_id, None),
        ("job.running", "attempt 1 by w1", job_id, None, None),
        ("job.succeeded", None, job_id, series_id, None),
        ("delivery.pending", "pacs", job_id, None, d.id),  # created by the job's success
        ("delivery.retry", "1/2 stored", job_id, None, d.id),
        ("delivery.failed", "refused", job_id, None, d.id),
        ("delivery.pending", "retried by an admin", job_id, None, d.id),
        ("delivery.delivered", None, job_id, None, d.id),
    ]


def test_job_moves_record_their_reason_and_clear_the_lease(ledger: Ledger) -> None:
    ledger.record_instance("1.2.3", "1.2.3.4", 1000, "incoming/1.2.3/1.2.3.4", now=T0)
    (job_id,) = ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=31))
    ledger.claim_job("w1", lease_s=60, now=T0 + timedelta(minutes=1))
    ledger.requeue_job(job_id, owner="w1", reason="OSError: disk", now=T0 + timedelta(minutes=2))
    ledger.claim_job("w1", lease_s=60, now=T0 + timedelta(minutes=3))
    failed = ledger.fail_job(job_id, "series refused: tilt", owner="w1", now=T0 + timedelta(minutes=4))
    assert (failed.lease_owner, failed.lease_expires_at) == (None, None)
    assert failed.finished_at == T0 + timedelta(minutes=4) and failed.failure_reason == "series refused: tilt"
    kinds = [(kind, detail) for kind, detail, *_ in _events(ledger, job_id)]
    assert kinds[-3:] == [
        ("job.queued", "attempt 1 failed: OSError: disk"),
        ("job.running", "attempt 2 by w1"),
        ("job.failed", "series refused: tilt"),
    ]


def test_retry_delivery_refuses_what_it_cannot_resume(ledger: Ledger) -> None:
    job_id = _succeeded(ledger, ["pacs"])
    (d,) = ledger.list_deliveries(job_id)
    with pytest.raises(NotFound, match="^delivery 999 does not exist$"):
        ledger.retry_delivery(999)
    with pytest.raises(IllegalTransition, match=f"delivery {d.id}: cannot go from PENDING to PENDING"):
        ledger.retry_delivery(d.id)
    ledger.record_delivery_attempt(
        d.id, sent_instances=[], status=0, error=None, outcome=DeliveryState.DELIVERED
    )
    with pytest.raises(IllegalTransition, match="cannot go from DELIVERED to PENDING by a retry"):
        ledger.retry_delivery(d.id)

    other = _succeeded(ledger, ["pacs"], uid="1.2.3.5")
    (d2,) = ledger.list_deliveries(other)
    ledger.record_delivery_attempt(
        d2.id, sent_instances=[], status=None, error="x", outcome=DeliveryState.FAILED
    )
    assert ledger.mark_purged(other, now=T0 + timedelta(days=5))
    with pytest.raises(IllegalTransition, match=f"job {other}'s files were removed by retention"):
        ledger.retry_delivery(d2.id)
    assert ledger.list_deliveries(other)[0].state == DeliveryState.FAILED


def test_record_delivery_attempt_refuses_bad_calls(ledger: Ledger) -> None:
    job_id = _succeeded(ledger, ["pacs"])
    (d,) = ledger.list_deliveries(job_id)
    with pytest.raises(NotFound, match="^delivery 999 does not exist$"):
        ledger.record_delivery_attempt(
            999, sent_instances=[], status=0, error=None, outcome=DeliveryState.FAILED
        )
    with pytest.raises(ValueError, match="^a PENDING outcome needs next_attempt_at$"):
        ledger.record_delivery_attempt(
            d.id, sent_instances=[], status=None, error="e", outcome=DeliveryState.PENDING
        )
    ledger.record_delivery_attempt(
        d.id, sent_instances=[], status=0, error=None, outcome=DeliveryState.CANCELLED
    )
    with pytest.raises(IllegalTransition, match=f"^delivery {d.id} is CANCELLED, not PENDING$"):
        ledger.record_delivery_attempt(
            d.id, sent_instances=[], status=0, error=None, outcome=DeliveryState.FAILED
        )


def test_due_deliveries_come_oldest_first_then_by_id_and_in_pages(ledger: Ledger) -> None:
    job_id = _succeeded(ledger, [f"d{n:02d}" for n in range(53)])
    rows = sorted(ledger.list_deliveries(job_id), key=lambda d: d.id)
    now = T0 + timedelta(minutes=2)
    later = now + timedelta(seconds=5)
    # the first delivery is pushed back: it must come after every delivery due earlier
    ledger.record_delivery_attempt(
        rows[0].id,
        sent_instances=[],
        status=None,
        error="e",
        outcome=DeliveryState.PENDING,
        next_attempt_at=later,
    )
    assert [d.id for d in ledger.due_deliveries(now=now, limit=3)] == [r.id for r in rows[1:4]]
    due = ledger.due_deliveries(now=later)
    assert len(due) == 50  # the default page
    assert [d.id for d in due] == [r.id for r in rows[1:51]]
    assert [d.id for d in ledger.due_deliveries(now=later, limit=60)][-1] == rows[0].id
    assert ledger.due_deliveries(now=now - timedelta(seconds=1)) == []


def test_renewing_a_lease_sets_its_expiry_from_now(ledger: Ledger) -> None:
    ledger.record_instance("1.2.3", "1.2.3.4", 1000, "incoming/1.2.3/1.2.3.4", now=T0)
    (job_id,) = ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=31))
    ledger.claim_job("w1", lease_s=60, now=T0 + timedelta(minutes=1))
    t = T0 + timedelta(minutes=1, seconds=40)
    assert ledger.renew_lease(job_id, "w1", 60, now=t)
    assert ledger.get_job(job_id).lease_expires_at == t + timedelta(seconds=60)
    assert not ledger.renew_lease(job_id, "w2", 60, now=t)  # another owner's lease is not extended
    ledger.fail_job(job_id, "x", owner="w1", now=t)
    assert not ledger.renew_lease(job_id, "w1", 60, now=t)  # nor a finished job's
    assert ledger.get_job(job_id).state == JobState.FAILED
