"""The ledger's record of instances in doubt (issue 15, exactly-once delivery across a kill): marked before
each C-STORE, cleared by the answer (stored or refused), settled by the destination's answer to C-FIND, and
forgotten by an admin's re-send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from storage import DeliveryState, Ledger
from storage.models import Delivery

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _delivery(ledger: Ledger) -> Delivery:
    ledger.record_instance("1.2.3", "1.2.3.4", 100, "incoming/1.2.3/1.2.3.4", T0)
    [job_id] = ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=31))
    ledger.claim_job("w", 60)
    [delivery] = ledger.succeed_job(
        job_id, owner="w", timings={}, model_version="v", output_path="outgoing/1", destinations=["pacs"]
    ).deliveries
    assert delivery.in_doubt_instances == []
    return delivery


def test_an_instance_is_in_doubt_from_its_c_store_until_its_answer(ledger: Ledger) -> None:
    d = _delivery(ledger)
    ledger.mark_in_doubt(d.id, "1.9.1")
    ledger.mark_in_doubt(d.id, "1.9.2")
    ledger.mark_in_doubt(d.id, "1.9.1")
    assert ledger.list_deliveries()[0].in_doubt_instances == ["1.9.1", "1.9.2"]
    ledger.record_sent_instance(d.id, "1.9.1")  # Success: sent, no longer in doubt
    ledger.record_not_stored(d.id, "1.9.2")  # a failure status: not held, no longer in doubt
    row = ledger.list_deliveries()[0]
    assert (row.sent_instances, row.in_doubt_instances) == (["1.9.1"], [])


def test_settling_records_what_the_destination_holds_and_keeps_the_rest_in_doubt(ledger: Ledger) -> None:
    d = _delivery(ledger)
    for uid in ("1.9.1", "1.9.2"):
        ledger.mark_in_doubt(d.id, uid)
    row = ledger.settle_in_doubt(d.id, held=["1.9.1"], detail="2 in doubt: holds 1", now=T0)
    assert (row.sent_instances, row.in_doubt_instances) == (["1.9.1"], ["1.9.2"])
    assert [(e.kind, e.detail) for e in ledger.events() if e.kind == "delivery.in_doubt"] == [
        ("delivery.in_doubt", "2 in doubt: holds 1")
    ]
    done = ledger.record_delivery_attempt(
        d.id, sent_instances=["1.9.2"], status=0, error=None, outcome=DeliveryState.DELIVERED
    )
    assert (done.sent_instances, done.in_doubt_instances) == (["1.9.1", "1.9.2"], [])


def test_an_admins_resend_forgets_what_was_in_doubt(ledger: Ledger) -> None:
    d = _delivery(ledger)
    ledger.mark_in_doubt(d.id, "1.9.1")
    ledger.record_delivery_attempt(
        d.id, sent_instances=[], status=0xA900, error="refused", outcome=DeliveryState.FAILED
    )
    again = ledger.resend_delivery(d.id)
    assert (again.state, again.sent_instances, again.in_doubt_instances) == (DeliveryState.PENDING, [], [])


def test_settling_takes_the_instances_decided_out_of_doubt(ledger: Ledger) -> None:
    """The sender decides about every instance in doubt at once (held, or to be sent again): none stays in
    doubt, so a later attempt neither asks nor counts it again; one not named stays in doubt."""
    d = _delivery(ledger)
    for uid in ("1.9.1", "1.9.2", "1.9.3"):
        ledger.mark_in_doubt(d.id, uid)
    row = ledger.settle_in_doubt(
        d.id, held=["1.9.1"], settled=["1.9.1", "1.9.2"], detail="2 in doubt: holds 1", now=T0
    )
    assert (row.sent_instances, row.in_doubt_instances) == (["1.9.1"], ["1.9.3"])
    ledger.mark_in_doubt(d.id, "1.9.2")  # its C-STORE goes out again
    assert ledger.list_deliveries()[0].in_doubt_instances == ["1.9.2", "1.9.3"]
