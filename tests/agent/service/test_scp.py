"""The Storage SCP against a real pynetdicom SCU on a free port."""

from __future__ import annotations

import errno
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

import storage.spool
from agent.service.scp import StorageSCP
from agent.web import metrics
from storage import Ledger
from tests.agent.service.conftest import TEST_SCU_AE, StartSCP, write_enhanced_ct, write_series


def associate(
    scp: StorageSCP,
    *,
    calling: str = TEST_SCU_AE,
    called: str = "SPINEAGENT",
    contexts: tuple[str, ...] = (CTImageStorage, Verification),
) -> Association:
    ae = AE(ae_title=calling)
    for uid in contexts:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", scp.port, ae_title=called)


def store(scp: StorageSCP, datasets: list[Dataset]) -> list[Dataset]:
    assoc = associate(scp)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


def counter(metric: Any, **labels: str) -> float:
    target = metric.labels(**labels) if labels else metric
    return float(target._value.get())


def incoming_files(scp: StorageSCP) -> list[Path]:
    return sorted(p for p in scp.spool.incoming_root.rglob("*") if p.is_file())


def test_c_echo(scp: StorageSCP) -> None:
    assoc = associate(scp, contexts=(Verification,))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_store_is_durable_and_counted_in_the_ledger(scp: StorageSCP, ledger: Ledger, tmp_path: Path) -> None:
    series = write_series(tmp_path / "src", slices=3)
    received_before = counter(metrics.INSTANCES_RECEIVED)
    bytes_before = counter(metrics.BYTES_RECEIVED)
    accepted_before = counter(metrics.ASSOCIATIONS, outcome="accepted")

    statuses = store(scp, [dcmread(f) for f in series.files])

    assert [int(s.Status) for s in statuses] == [0x0000] * 3
    folder = scp.spool.incoming_dir(series.study_uid, series.series_uid)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{uid}.dcm" for uid in series.sop_uids)
    for source in series.files:
        stored = dcmread(folder / source.name)
        assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert stored.SOPInstanceUID == source.stem
        np.testing.assert_array_equal(stored.pixel_array, dcmread(source).pixel_array)
    row = ledger.get_series(1)
    assert row.series_instance_uid == series.series_uid and row.version == 1
    assert row.instance_count == 3
    assert row.spool_path == f"incoming/{series.study_uid}/{series.series_uid}"
    assert row.byte_count == sum(p.stat().st_size for p in folder.iterdir())
    assert counter(metrics.INSTANCES_RECEIVED) == received_before + 3
    assert counter(metrics.BYTES_RECEIVED) == bytes_before + row.byte_count
    assert counter(metrics.ASSOCIATIONS, outcome="accepted") == accepted_before + 1


def test_enhanced_ct_is_accepted(scp: StorageSCP, tmp_path: Path) -> None:
    series = write_enhanced_ct(tmp_path / "src" / "mf.dcm", frames=4)
    assoc = associate(scp, contexts=(EnhancedCTImageStorage,))
    assert assoc.is_established
    assert assoc.send_c_store(dcmread(series.files[0])).Status == 0x0000
    assoc.release()
    folder = scp.spool.incoming_dir(series.study_uid, series.series_uid)
    assert (folder / f"{series.sop_uids[0]}.dcm").is_file()


def test_resent_instance_replaces_the_file(scp: StorageSCP, ledger: Ledger, tmp_path: Path) -> None:
    series = write_series(tmp_path / "src", slices=1)
    first = dcmread(series.files[0])
    second = dcmread(series.files[0])
    second.PixelData = (np.ones((16, 16), dtype="<i2") * 7).tobytes()
    assert [int(s.Status) for s in store(scp, [first, second])] == [0, 0]
    [path] = incoming_files(scp)
    np.testing.assert_array_equal(dcmread(path).pixel_array, 7)
    # One instance in the version (its newest bytes recorded); an identical third send changes nothing.
    assert ledger.get_series(1).instance_count == 1
    assert [int(s.Status) for s in store(scp, [second])] == [0]
    assert ledger.get_series(1).instance_count == 1
    assert len(ledger.version_instances(1)) == 1


def test_unsupported_sop_class_is_refused_at_negotiation(scp: StorageSCP) -> None:
    assoc = associate(scp, contexts=(MRImageStorage, CTImageStorage))
    assert assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CTImageStorage]
    assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [MRImageStorage]
    mr = Dataset()
    mr.file_meta = FileMetaDataset()
    mr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    mr.SOPClassUID = MRImageStorage
    mr.SOPInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="No presentation context"):
        assoc.send_c_store(mr)
    assoc.release()

    only_mr = associate(scp, contexts=(MRImageStorage,))
    assert not only_mr.is_established  # nothing acceptable: the requestor aborts


@pytest.mark.parametrize(
    ("overrides", "calling", "called", "reason"),
    [
        ({}, "STRANGER", "SPINEAGENT", "calling AE 'STRANGER' is not in dicom.allowed_calling_aes"),
        ({}, TEST_SCU_AE, "SOMEONEELSE", "called AE 'SOMEONEELSE' is not ours"),
        ({"allowed_hosts": ["10.9.9.9"]}, TEST_SCU_AE, "SPINEAGENT", "host 127.0.0.1 is not in"),
    ],
    ids=["calling-ae", "called-ae", "host"],
)
def test_unknown_peers_are_rejected_with_a_logged_reason(
    start_scp: StartSCP,
    caplog: pytest.LogCaptureFixture,
    overrides: dict[str, object],
    calling: str,
    called: str,
    reason: str,
) -> None:
    scp = start_scp(**overrides)
    rejected_before = counter(metrics.ASSOCIATIONS, outcome="rejected")
    with caplog.at_level(logging.INFO):
        assoc = associate(scp, calling=calling, called=called)
    assert assoc.is_rejected and not assoc.is_established
    assert any(reason in r.getMessage() for r in caplog.records if r.name == "agent.service.scp"), caplog.text
    assert counter(metrics.ASSOCIATIONS, outcome="rejected") == rejected_before + 1
    # the SCP keeps serving allowed peers
    if not overrides:
        ok = associate(scp, contexts=(Verification,))
        assert ok.is_established
        ok.release()


def test_access_checks_can_be_relaxed(start_scp: StartSCP) -> None:
    scp = start_scp(allowed_calling_aes=[], require_called_ae=False, allowed_hosts=["127.0.0.1"])
    assoc = associate(scp, calling="ANYONE", called="WHATEVER", contexts=(Verification,))
    assert assoc.is_established
    assoc.release()


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("StudyInstanceUID", "1.2.03.4"),  # leading zero in a component
        ("SeriesInstanceUID", "1.2.840/../../etc"),  # a path in disguise
        ("SeriesInstanceUID", "1." + "2" * 70),  # longer than 64 characters
        ("StudyInstanceUID", ""),
    ],
)
def test_invalid_uids_are_refused_and_nothing_is_written(
    scp: StorageSCP, tmp_path: Path, attribute: str, value: str
) -> None:
    series = write_series(tmp_path / "src", slices=1)
    ds = dcmread(series.files[0])
    refused_before = counter(metrics.INSTANCES_REFUSED, status="0xC210")
    with pydicom_config.disable_value_validation():
        setattr(ds, attribute, value)
        [status] = store(scp, [ds])
    assert int(status.Status) == 0xC210
    assert "UID" in str(status.get("ErrorComment", ""))
    assert incoming_files(scp) == []
    assert counter(metrics.INSTANCES_REFUSED, status="0xC210") == refused_before + 1


def test_below_the_disk_reserve_the_answer_is_out_of_resources(
    start_scp: StartSCP, tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    scp = start_scp()
    scp._reserve_bytes = 100 * 1024 * 1024  # as from storage.disk_reserve_mb = 100
    monkeypatch.setattr(scp.spool, "free_bytes", lambda: 50 * 1024 * 1024)
    series = write_series(tmp_path / "src", slices=1)
    [status] = store(scp, [dcmread(series.files[0])])
    assert int(status.Status) == 0xA700
    assert incoming_files(scp) == []

    monkeypatch.setattr(scp.spool, "free_bytes", lambda: 500 * 1024 * 1024)
    [status] = store(scp, [dcmread(series.files[0])])
    assert int(status.Status) == 0x0000


def test_disk_full_while_writing_leaves_no_file(
    scp: StorageSCP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = storage.spool.atomic_write

    def full_disk(path: Path, data: object) -> int:
        def chunks() -> object:
            yield b"half a file"
            raise OSError(errno.ENOSPC, "No space left on device")

        return real_write(path, chunks())  # type: ignore[arg-type]

    monkeypatch.setattr(storage.spool, "atomic_write", full_disk)
    series = write_series(tmp_path / "src", slices=1)
    [status] = store(scp, [dcmread(series.files[0])])
    assert int(status.Status) == 0xA700
    assert incoming_files(scp) == []  # no temporary file either


def test_a_ledger_failure_is_a_processing_failure(
    scp: StorageSCP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(scp.ledger, "record_instance", broken)
    series = write_series(tmp_path / "src", slices=1)
    with caplog.at_level(logging.INFO):
        [status] = store(scp, [dcmread(series.files[0])])
    assert int(status.Status) == 0xC211
    assert "C-STORE from TESTSCU@127.0.0.1" in caplog.text


def test_no_patient_data_or_uid_in_info_logs(
    scp: StorageSCP, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    series = write_series(tmp_path / "src", slices=2)
    bad = dcmread(series.files[1])
    with caplog.at_level(logging.INFO), pydicom_config.disable_value_validation():
        bad.StudyInstanceUID = "1.2.03"
        store(scp, [dcmread(series.files[0]), bad])
    text = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "1 instance(s) stored" in text and "1 refused" in text
    for secret in ("Phantom", "RCV-001", "19700101", series.study_uid, series.series_uid, *series.sop_uids):
        assert secret not in text


def test_stop_aborts_associations_left_open_after_the_grace_period(start_scp: StartSCP) -> None:
    scp = start_scp()
    assoc = associate(scp, contexts=(Verification,))
    assert assoc.is_established
    # The peer never releases: stop() must return anyway (no wall-clock bound, which a loaded machine can
    # exceed; a stop that waited for the peer would never return) and abort the association.
    stopper = threading.Thread(target=scp.stop, kwargs={"grace_s": 0.2}, daemon=True)
    stopper.start()
    stopper.join(timeout=120)
    assert not stopper.is_alive(), "stop() is waiting for an association the peer never releases"
    deadline = time.monotonic() + 60
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    assert not scp.running
    scp.stop()  # idempotent
