"""The C-STORE SCU against an in-process pynetdicom SCP on a free port (no external binaries)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from agent.service.manifest import write_manifest
from agent.service.sender import StoreResult, backoff_delay, run_due_deliveries, send_files
from config import Destination, Settings
from config.settings import DeliverySettings, StorageSettings
from storage import DeliveryState, Ledger
from storage.spool import Spool
from tests.conftest import free_port
from tests.dicom_io.ct_series import CTSeries, write_seg
from tests.support_ledger import succeeded_job


class RecordingSCP:
    """Accepts CT only (uncompressed); answers ``refuse_status`` for the instances in ``refuse``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[str] = []
        self.transfer_syntaxes: list[str] = []
        self.refuse: set[str] = set()
        self.refuse_status = 0xA700
        ae = AE(ae_title="TESTSCP")
        ae.add_supported_context(CTImageStorage, [ImplicitVRLittleEndian])
        server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        assert server is not None  # non-blocking start returns the server
        self.server = server

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid in self.refuse:
            return self.refuse_status
        self.received.append(uid)
        self.transfer_syntaxes.append(str(event.context.transfer_syntax))
        return 0x0000


@pytest.fixture
def scp() -> Iterator[RecordingSCP]:
    server = RecordingSCP()
    yield server
    server.server.shutdown()


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_delay(n, 10, 100) for n in (0, 1, 2, 3, 4, 5)] == [0, 10, 20, 40, 80, 100]
    assert backoff_delay(10_000, 10, 600) == 600


def test_uncompressed_files_are_reencoded_to_the_accepted_syntax(
    scp: RecordingSCP, ct_series: CTSeries
) -> None:
    outcome = send_files("TESTSCP", "127.0.0.1", scp.port, ct_series.files[:3], calling_ae="SPINEAGENT")
    assert outcome.all_succeeded, outcome.summary()
    assert scp.received == [str(ds.SOPInstanceUID) for ds in ct_series.datasets[:3]]
    assert set(scp.transfer_syntaxes) == {ImplicitVRLittleEndian}  # files are Explicit VR LE


def test_per_file_statuses_and_refused_sop_class(
    scp: RecordingSCP, ct_series: CTSeries, tmp_path: Path
) -> None:
    seg_path = write_seg(ct_series, tmp_path / "seg.dcm")
    refused = str(ct_series.datasets[1].SOPInstanceUID)
    scp.refuse = {refused}
    files = [*ct_series.files[:3], seg_path, tmp_path / "missing.dcm"]

    outcome = send_files("TESTSCP", "127.0.0.1", scp.port, files, calling_ae="SPINEAGENT")

    by_path = {r.path: r for r in outcome.results}
    assert by_path[ct_series.files[0]].status == 0x0000 and by_path[ct_series.files[0]].stored
    assert by_path[ct_series.files[1]].status == 0xA700 and not by_path[ct_series.files[1]].permanent_failure
    assert by_path[seg_path].status == 0x0122 and by_path[seg_path].permanent_failure  # SEG not accepted
    assert by_path[tmp_path / "missing.dcm"].status is None
    assert refused not in outcome.stored_instances and len(outcome.stored_instances) == 2
    assert not outcome.all_succeeded
    assert "0xA700" in outcome.summary() and "2/5 stored" in outcome.summary()


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(0xA700, False), (0xA900, True), (0xC211, True), (0x0122, True), (0xB000, False)],
)
def test_permanent_failures_are_those_waiting_cannot_cure(status: int, permanent: bool) -> None:
    assert StoreResult(Path("x.dcm"), "1.2", status).permanent_failure is permanent


@pytest.mark.parametrize(
    ("status", "stored"),
    [
        (0x0000, True),
        (0xB000, True),
        (0xB006, True),
        (0xB007, True),
        (0x0001, True),
        (0x0107, True),
        (0x0116, True),
        (0xA700, False),
        (0xC000, False),
        (0x0122, False),
        (None, False),
    ],
)
def test_every_warning_status_means_stored(status: int | None, stored: bool) -> None:
    # A warning (PS3.4 B.2.3 and PS3.7 Annex C) means the peer stored the instance: it is recorded as sent,
    # not re-sent on every attempt nor taken out of doubt as "not held".
    assert StoreResult(Path("x.dcm"), "1.2", status).stored is stored


def test_nothing_to_send_needs_no_association(ct_series: CTSeries) -> None:
    skip = {str(ds.SOPInstanceUID) for ds in ct_series.datasets[:2]}
    # Port 9 (discard) is never contacted: every file is skipped.
    outcome = send_files("X", "127.0.0.1", 9, ct_series.files[:2], calling_ae="A", skip_instances=skip)
    assert outcome.results == () and outcome.all_succeeded


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _finished_job(ledger: Ledger, spool: Spool, ct_series: CTSeries) -> Path:
    """A SUCCEEDED job with one PENDING delivery to "pacs"; returns its (empty) output folder."""
    study, series = str(ct_series.datasets[0].StudyInstanceUID), str(ct_series.datasets[0].SeriesInstanceUID)
    job_id = succeeded_job(ledger, spool, lambda out: None, T0, study=study, series=series)
    return spool.output_dir(job_id)


def _delivery_settings(spool: Spool, port: int) -> Settings:
    return Settings(
        storage=StorageSettings(spool_dir=spool.root),
        destinations=[Destination(name="pacs", ae_title="TESTSCP", host="127.0.0.1", port=port)],
        delivery=DeliverySettings(calling_ae_title="SPINEAGENT"),
    )


def test_a_delivery_sends_exactly_what_the_manifest_lists_in_its_order(
    scp: RecordingSCP, ct_series: CTSeries, ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    out = _finished_job(ledger, spool, ct_series)
    first, second, stray = out / "b.dcm", out / "a.dcm", out / "stray.dcm"
    for source, target in zip(ct_series.files[:3], (first, second, stray), strict=True):
        shutil.copyfile(source, target)
    write_manifest(out, [first, second])  # b before a: not the alphabetical order

    (delivery,) = run_due_deliveries(ledger, _delivery_settings(spool, scp.port), spool, now=T0)

    assert delivery.state == DeliveryState.DELIVERED
    assert scp.received == [str(ds.SOPInstanceUID) for ds in ct_series.datasets[:2]]  # not the stray file
    assert stray.exists()


def test_a_delivery_without_a_manifest_fails_with_the_reason(
    scp: RecordingSCP, ct_series: CTSeries, ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    out = _finished_job(ledger, spool, ct_series)
    shutil.copy(ct_series.files[0], out / "seg.dcm")

    (delivery,) = run_due_deliveries(ledger, _delivery_settings(spool, scp.port), spool, now=T0)

    assert delivery.state == DeliveryState.FAILED
    assert "no manifest.json" in str(delivery.last_error)
    assert scp.received == []


def test_a_manifest_naming_a_missing_file_fails_the_delivery(
    scp: RecordingSCP, ct_series: CTSeries, ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    out = _finished_job(ledger, spool, ct_series)
    shutil.copy(ct_series.files[0], out / "seg.dcm")
    write_manifest(out, [out / "seg.dcm", out / "sr.dcm"])

    (delivery,) = run_due_deliveries(ledger, _delivery_settings(spool, scp.port), spool, now=T0)

    assert delivery.state == DeliveryState.FAILED
    assert "sr.dcm" in str(delivery.last_error) and scp.received == []
