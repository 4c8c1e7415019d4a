"""The delivery rows the sender works from: claiming one leaves the others alone, finished ones are never
due again, and each attempt counts and keeps its reason. Literal expectations from the documented
behaviour (storage/ledger.py); written for the mutants of the ledger that the other tests let survive
(docs/testing.md, mutation testing)."""

from __future__ import annotations

from datetime import timedelta

from storage import DeliveryState, Ledger
from tests.storage.test_ledger_audit import T0, _succeeded

DONE = T0 + timedelta(minutes=2)  # when _succeeded's job succeeded: its deliveries are due from then


def test_claiming_one_delivery_leaves_the_others_due(ledger: Ledger) -> None:
    job_id = _succeeded(ledger, ["a", "b", "c"])
    a, b, c = sorted(ledger.list_deliveries(job_id), key=lambda d: d.id)
    assert [d.id for d in ledger.due_deliveries(DONE)] == [a.id, b.id, c.id]

    assert ledger.claim_delivery(a, 300, now=DONE)
    assert [d.id for d in ledger.due_deliveries(DONE)] == [b.id, c.id]  # same due time, not taken with it
    assert ledger.claim_delivery(b, 300, now=DONE)
    rows = {d.id: d for d in ledger.list_deliveries(job_id)}
    assert rows[a.id].next_attempt_at == rows[b.id].next_attempt_at == DONE + timedelta(seconds=300)
    assert rows[c.id].next_attempt_at == DONE
    assert not ledger.claim_delivery(a, 300, now=DONE)  # the row read before the claim is stale now


def test_finished_deliveries_are_never_due_again(ledger: Ledger) -> None:
    job_id = _succeeded(ledger, ["a", "b", "c"])
    a, b, c = sorted(ledger.list_deliveries(job_id), key=lambda d: d.id)
    ledger.record_delivery_attempt(
        a.id, sent_instances=["1.9"], status=0, error=None, outcome=DeliveryState.DELIVERED, now=DONE
    )
    ledger.record_delivery_attempt(
        b.id, sent_instances=[], status=0xA900, error="refused", outcome=DeliveryState.FAILED, now=DONE
    )
    assert [d.id for d in ledger.due_deliveries(DONE + timedelta(days=365))] == [c.id]


def test_each_attempt_counts_and_keeps_its_own_reason(ledger: Ledger) -> None:
    job_id = _succeeded(ledger, ["a"])
    (d,) = ledger.list_deliveries(job_id)
    for n, error in enumerate(("1/2 stored", "0/2 stored", "no association"), start=1):
        row = ledger.record_delivery_attempt(
            d.id,
            sent_instances=[],
            status=0xA700,
            error=error,
            outcome=DeliveryState.PENDING,
            next_attempt_at=DONE + timedelta(seconds=10 * n),
            now=DONE,
        )
        assert (row.attempts, row.last_error, row.state) == (n, error, DeliveryState.PENDING)
    (stored,) = ledger.list_deliveries(job_id)
    assert (stored.attempts, stored.last_error) == (3, "no association")
