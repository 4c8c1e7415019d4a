"""The delivery loop's own bookkeeping, judged by what the destination holds and what the ledger says.

A pynetdicom Storage SCP on loopback plays the destination; it keeps every instance it stored and can be
told to answer a given status for given instances. The assertions never look inside the sender: only at
the destination's store (nothing sent twice, nothing missing) and at the delivery row (state, attempts,
the instances recorded as stored, the reason).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from sqlalchemy import text

from agent.service.manifest import write_manifest
from agent.service.sender import run_due_deliveries
from config import Destination, Settings
from config.settings import DeliverySettings, StorageSettings
from dicom_io.seg import build_seg
from storage import DeliveryState, Ledger
from storage.models import Delivery
from storage.spool import Spool
from tests.dicom_io.ct_series import CTSeries, binary_result
from tests.support import free_port
from tests.support_ledger import succeeded_job

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Destination_SCP:  # noqa: N801 - reads as what it is
    """A CT Storage SCP that stores (in memory) what it accepts and answers ``answer[uid]`` otherwise."""

    def __init__(self) -> None:
        self.port = free_port()
        self.stored: list[str] = []  # every instance stored, in order, duplicates kept
        self.answer: dict[str, int] = {}  # SOP Instance UID -> status to answer instead of storing
        ae = AE(ae_title="DEST")
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        assert server is not None  # a non-blocking start returns the server
        self.server = server

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid in self.answer:
            return self.answer[uid]
        self.stored.append(uid)
        return 0x0000


@pytest.fixture
def dest() -> Iterator[Destination_SCP]:
    scp = Destination_SCP()
    yield scp
    scp.server.shutdown()


def _job_with_outputs(ledger: Ledger, spool: Spool, files: list[Path]) -> int:
    """A SUCCEEDED job whose manifest lists copies of ``files``, with one PENDING delivery to "pacs"."""

    return succeeded_job(ledger, spool, lambda out: _copy_with_manifest(files, out), T0)


def _copy_with_manifest(files: list[Path], out: Path) -> None:
    copies = [out / f"{n:02d}.dcm" for n in range(len(files))]
    for source, target in zip(files, copies, strict=True):
        shutil.copyfile(source, target)
    write_manifest(out, copies)


def _settings(spool: Spool, port: int, max_attempts: int = 5) -> Settings:
    return Settings(
        storage=StorageSettings(spool_dir=spool.root),
        destinations=[Destination(name="pacs", ae_title="DEST", host="127.0.0.1", port=port)],
        delivery=DeliverySettings(calling_ae_title="SPINEAGENT", max_attempts=max_attempts, retry_base_s=10),
    )


def _attempt(ledger: Ledger, settings: Settings, spool: Spool, now: datetime) -> Delivery:
    (delivery,) = run_due_deliveries(ledger, settings, spool, now=now)
    assert [d.id for d in ledger.list_deliveries()] == [delivery.id]
    return ledger.list_deliveries()[0]  # as the ledger holds it, not as the sender returned it


def test_a_retry_sends_only_what_the_destination_has_not_stored(
    dest: Destination_SCP, ct_series: CTSeries, ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    uids = [str(ds.SOPInstanceUID) for ds in ct_series.datasets[:4]]
    _job_with_outputs(ledger, spool, ct_series.files[:4])
    settings = _settings(spool, dest.port)
    dest.answer = {uids[1]: 0xA700, uids[3]: 0xA700}  # out of resources: transient

    first = _attempt(ledger, settings, spool, T0)

    assert dest.stored == [uids[0], uids[2]]
    assert first.state == DeliveryState.PENDING and first.attempts == 1
    assert sorted(first.sent_instances) == sorted([uids[0], uids[2]])  # what was stored is recorded
    assert first.last_status == 0xA700 and "2/4 stored" in str(first.last_error)
    assert first.next_attempt_at == T0 + timedelta(seconds=10)

    dest.answer = {}  # the destination recovered
    assert run_due_deliveries(ledger, settings, spool, now=T0 + timedelta(seconds=9)) == []  # not due yet
    second = _attempt(ledger, settings, spool, T0 + timedelta(seconds=10))

    assert dest.stored == [uids[0], uids[2], uids[1], uids[3]]  # each instance exactly once
    assert second.state == DeliveryState.DELIVERED and second.attempts == 2
    assert sorted(second.sent_instances) == sorted(uids)
    assert second.last_status == 0x0000 and second.last_error is None
    assert second.finished_at == T0 + timedelta(seconds=10)  # the attempt's time, not the wall clock

    assert run_due_deliveries(ledger, settings, spool, now=T0 + timedelta(days=1)) == []  # done: never again
    assert len(dest.stored) == 4


def test_a_restart_resumes_from_the_ledger_not_from_memory(
    dest: Destination_SCP, ct_series: CTSeries, ledger: Ledger, ledger_url: str, tmp_path: Path
) -> None:
    """A second agent process (a fresh Ledger on the same database) sends only the rest."""
    spool = Spool(tmp_path / "spool")
    uids = [str(ds.SOPInstanceUID) for ds in ct_series.datasets[:3]]
    _job_with_outputs(ledger, spool, ct_series.files[:3])
    dest.answer = {uids[2]: 0xA700}
    _attempt(ledger, _settings(spool, dest.port), spool, T0)
    dest.answer = {}

    restarted = Ledger(ledger_url, max_attempts=3)
    try:
        again = _attempt(restarted, _settings(spool, dest.port), spool, T0 + timedelta(minutes=5))
    finally:
        restarted.close()
    assert dest.stored == uids
    assert again.state == DeliveryState.DELIVERED and sorted(again.sent_instances) == sorted(uids)


def test_a_permanent_refusal_fails_the_delivery_at_once_and_keeps_what_was_stored(
    dest: Destination_SCP, ct_series: CTSeries, ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    uids = [str(ds.SOPInstanceUID) for ds in ct_series.datasets[:3]]
    _job_with_outputs(ledger, spool, ct_series.files[:3])
    settings = _settings(spool, dest.port, max_attempts=5)
    dest.answer = {uids[1]: 0xA900}  # data set does not match SOP Class: waiting will not cure it

    failed = _attempt(ledger, settings, spool, T0)

    assert failed.state == DeliveryState.FAILED and failed.attempts == 1  # not after 5 attempts
    assert failed.last_status == 0xA900 and "0xA900" in str(failed.last_error)
    assert sorted(failed.sent_instances) == sorted([uids[0], uids[2]])
    assert failed.finished_at is not None
    assert run_due_deliveries(ledger, settings, spool, now=T0 + timedelta(days=1)) == []  # no retry
    assert dest.stored == [uids[0], uids[2]]


def test_a_sop_class_the_destination_does_not_take_fails_the_delivery(
    dest: Destination_SCP, ct_series: CTSeries, ledger: Ledger, tmp_path: Path
) -> None:
    """The SCP accepts CT only: the SEG's context is refused (0x0122), a permanent failure."""
    seg = tmp_path / "seg.dcm"
    result = binary_result(ct_series.volume)
    dataset = build_seg(ct_series.volume, ct_series.datasets, result, series_number=9, algorithm_version="v")
    dataset.save_as(seg)
    spool = Spool(tmp_path / "spool")
    _job_with_outputs(ledger, spool, [ct_series.files[0], seg])

    failed = _attempt(ledger, _settings(spool, dest.port), spool, T0)

    assert failed.state == DeliveryState.FAILED and failed.attempts == 1
    assert failed.last_status == 0x0122
    assert failed.sent_instances == [str(ct_series.datasets[0].SOPInstanceUID)]
    assert dest.stored == [str(ct_series.datasets[0].SOPInstanceUID)]


def test_transient_failures_back_off_then_give_up_after_max_attempts(
    dest: Destination_SCP, ct_series: CTSeries, ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    uid = str(ct_series.datasets[0].SOPInstanceUID)
    _job_with_outputs(ledger, spool, ct_series.files[:1])
    settings = _settings(spool, dest.port, max_attempts=3)
    dest.answer = {uid: 0xA700}

    now, seen = T0, []
    for _ in range(3):
        row = _attempt(ledger, settings, spool, now)
        seen.append((row.state, row.attempts))
        if row.next_attempt_at is not None and row.state == DeliveryState.PENDING:
            now = row.next_attempt_at
    assert seen == [
        (DeliveryState.PENDING, 1),
        (DeliveryState.PENDING, 2),
        (DeliveryState.FAILED, 3),
    ]
    assert now == T0 + timedelta(seconds=10 + 20)  # 10 s, then 20 s
    assert row.sent_instances == [] and "gave up after 3 attempts" in str(row.last_error)
    assert dest.stored == []


def test_an_unreachable_destination_keeps_the_delivery_pending(
    ct_series: CTSeries, ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    _job_with_outputs(ledger, spool, ct_series.files[:1])
    row = _attempt(ledger, _settings(spool, free_port()), spool, T0)  # held port: nothing listens there
    assert row.state == DeliveryState.PENDING and row.attempts == 1 and row.sent_instances == []
    assert "no association" in str(row.last_error)


# --- one delivery's trouble never stops the others ---------------------------------------------------------


def test_a_delivery_taken_by_another_agent_is_skipped_and_the_next_one_is_sent(
    dest: Destination_SCP, ct_series: CTSeries, ledger: Ledger, ledger_url: str, tmp_path: Path
) -> None:
    """Between this agent's read of the due list and its claim, a second agent claims the first delivery."""
    spool = Spool(tmp_path / "spool")
    job_id = succeeded_job(
        ledger, spool, lambda out: _copy_with_manifest(ct_series.files[:1], out), T0, destinations=["a", "b"]
    )
    other = Ledger(ledger_url)

    class RacedLedger(Ledger):
        def due_deliveries(self, now: datetime | None = None, limit: int = 50) -> list[Delivery]:
            rows = super().due_deliveries(now, limit)
            assert other.claim_delivery(rows[0], 300, now)  # the other agent wins the first one
            return rows

    raced = RacedLedger(ledger_url)
    settings = _settings(spool, dest.port)
    settings.destinations = [
        Destination(name=name, ae_title="DEST", host="127.0.0.1", port=dest.port) for name in ("a", "b")
    ]
    try:
        done = run_due_deliveries(raced, settings, spool, now=T0)
    finally:
        raced.close()
        other.close()
    first, second = sorted(ledger.list_deliveries(job_id), key=lambda d: d.id)
    assert [d.id for d in done] == [second.id] and second.state == DeliveryState.DELIVERED
    assert first.state == DeliveryState.PENDING and first.attempts == 0  # left to the agent that took it
    assert dest.stored == [str(ct_series.datasets[0].SOPInstanceUID)]


def test_a_crashing_attempt_is_logged_with_its_delivery_and_the_loop_goes_on(
    dest: Destination_SCP,
    ct_series: CTSeries,
    ledger: Ledger,
    ledger_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = Spool(tmp_path / "spool")
    job_id = succeeded_job(
        ledger, spool, lambda out: _copy_with_manifest(ct_series.files[:1], out), T0, destinations=["a", "b"]
    )
    first_id = min(d.id for d in ledger.list_deliveries(job_id))

    class FaultyLedger(Ledger):  # the first attempt hits an unexpected error (e.g. a database hiccup)
        calls = 0

        def get_job(self, job_id: int) -> Any:
            FaultyLedger.calls += 1
            if FaultyLedger.calls == 1:
                raise RuntimeError("injected fault")
            return super().get_job(job_id)

    faulty = FaultyLedger(ledger_url)
    settings = _settings(spool, dest.port)
    settings.destinations = [
        Destination(name=name, ae_title="DEST", host="127.0.0.1", port=dest.port) for name in ("a", "b")
    ]
    try:
        with caplog.at_level(logging.INFO, logger="agent.service.sender"):
            done = run_due_deliveries(faulty, settings, spool, now=T0)
    finally:
        faulty.close()
    assert [d.state for d in done] == [DeliveryState.DELIVERED] and done[0].id != first_id
    (crash,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert crash.getMessage() == f"delivery {first_id}: attempt crashed" and crash.exc_info is not None
    assert (crash.delivery_id, crash.destination) == (first_id, "a")  # type: ignore[attr-defined]
    (delivered,) = [r for r in caplog.records if "delivered" in r.getMessage()]
    assert delivered.getMessage() == f"delivery {done[0].id}: delivered to b"
    assert (delivered.delivery_id, delivered.destination) == (done[0].id, "b")  # type: ignore[attr-defined]


# --- a crash mid-delivery, deliveries that cannot be sent, what the log says -------------------------------


def test_a_crash_after_the_stores_keeps_what_was_stored_and_the_lease_then_lets_the_rest_go(
    dest: Destination_SCP, ct_series: CTSeries, ledger: Ledger, ledger_url: str, tmp_path: Path
) -> None:
    """Every instance is stored, then recording the attempt crashes: each Success was already recorded as it
    arrived, and the delivery is due again exactly when the claim's lease ends, sending nothing twice."""
    spool = Spool(tmp_path / "spool")
    uids = [str(ds.SOPInstanceUID) for ds in ct_series.datasets[:3]]
    _job_with_outputs(ledger, spool, ct_series.files[:3])
    settings = _settings(spool, dest.port)

    class CrashingLedger(Ledger):  # the agent dies between the last C-STORE and the attempt's record
        def record_delivery_attempt(self, *args: Any, **kwargs: Any) -> Delivery:
            raise RuntimeError("injected crash")

    crashing = CrashingLedger(ledger_url)
    try:
        assert run_due_deliveries(crashing, settings, spool, now=T0) == []
    finally:
        crashing.close()
    (row,) = ledger.list_deliveries()
    assert row.state == DeliveryState.PENDING and row.attempts == 0
    assert sorted(row.sent_instances) == sorted(uids)  # recorded per instance, before the crash
    lease = timedelta(seconds=settings.delivery.lease_s)
    assert row.next_attempt_at == T0 + lease
    assert run_due_deliveries(ledger, settings, spool, now=T0 + lease - timedelta(seconds=1)) == []

    again = _attempt(ledger, settings, spool, T0 + lease)
    assert again.state == DeliveryState.DELIVERED and again.attempts == 1
    assert dest.stored == uids  # nothing sent twice


def _fails_at_once(
    ledger: Ledger, settings: Settings, spool: Spool, dest: Destination_SCP, error: str
) -> None:
    row = _attempt(ledger, settings, spool, T0)
    assert (row.state, row.attempts, row.last_error) == (DeliveryState.FAILED, 1, error)  # max_attempts is 5
    assert row.finished_at == T0 and dest.stored == []


def test_a_destination_no_longer_configured_fails_the_delivery(
    dest: Destination_SCP, ct_series: CTSeries, ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    _job_with_outputs(ledger, spool, ct_series.files[:1])
    settings = _settings(spool, dest.port)
    settings.destinations = [Destination(name="other", ae_title="DEST", host="127.0.0.1", port=dest.port)]
    _fails_at_once(ledger, settings, spool, dest, "destination 'pacs' is not configured")


def test_a_purged_job_fails_its_delivery(
    dest: Destination_SCP, ct_series: CTSeries, ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    job_id = _job_with_outputs(ledger, spool, ct_series.files[:1])
    with ledger.engine.begin() as conn:  # retention never purges a job with a PENDING delivery: forced here
        conn.execute(text("UPDATE job SET purged_at = :at WHERE id = :id"), {"at": T0, "id": job_id})
    _fails_at_once(
        ledger, _settings(spool, dest.port), spool, dest, f"job {job_id} has no output files to send"
    )


def test_an_output_path_outside_the_spool_fails_the_delivery(
    dest: Destination_SCP, ct_series: CTSeries, ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    job_id = _job_with_outputs(ledger, spool, ct_series.files[:1])
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE job SET output_path = '../elsewhere' WHERE id = :id"), {"id": job_id})
    _fails_at_once(
        ledger,
        _settings(spool, dest.port),
        spool,
        dest,
        f"job {job_id}: bad output path: "
        "spool path '../elsewhere' must be relative and stay inside the spool",
    )


def test_an_empty_manifest_fails_the_delivery(dest: Destination_SCP, ledger: Ledger, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    job_id = succeeded_job(ledger, spool, lambda out: write_manifest(out, []), T0)
    _fails_at_once(
        ledger, _settings(spool, dest.port), spool, dest, f"job {job_id}: no DICOM files in its output folder"
    )


def test_each_outcome_is_logged_with_its_delivery(
    dest: Destination_SCP,
    ct_series: CTSeries,
    ledger: Ledger,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = Spool(tmp_path / "spool")
    uids = [str(ds.SOPInstanceUID) for ds in ct_series.datasets[:2]]
    _job_with_outputs(ledger, spool, ct_series.files[:2])
    settings = _settings(spool, dest.port)
    destination = f"DEST@127.0.0.1:{dest.port}"

    def records() -> list[tuple[int, str, Any, Any]]:
        found = [
            (r.levelno, r.getMessage(), getattr(r, "delivery_id", None), getattr(r, "destination", None))
            for r in caplog.records
            if r.name == "agent.service.sender"
        ]
        caplog.clear()
        return found

    with caplog.at_level(logging.INFO, logger="agent.service.sender"):
        dest.answer = {uids[1]: 0xA700}
        first = _attempt(ledger, settings, spool, T0)
        stored = f"1/2 stored at {destination}; 01.dcm: status 0xA700 (Refused: Out of Resources)"
        assert records() == [
            (logging.INFO, f"C-STORE to {destination}: {stored}", None, None),
            (
                logging.INFO,
                f"delivery {first.id}: will retry at {T0 + timedelta(seconds=10)}: {stored}",
                first.id,
                "pacs",
            ),
        ]
        dest.answer = {uids[1]: 0xA900}
        _attempt(ledger, settings, spool, T0 + timedelta(seconds=10))
        refused = f"0/1 stored at {destination}; 01.dcm: status 0xA900 (Data Set Does Not Match SOP Class)"
        assert records() == [
            (logging.INFO, f"C-STORE to {destination}: {refused}", None, None),
            (logging.WARNING, f"delivery {first.id}: failed: {refused}", first.id, "pacs"),
        ]
