"""Results reach a real PACS: CT series + SEG + SR sent with the agent's C-STORE SCU land in Orthanc,
in one study; refusals and unreachable peers give clear errors; ledger deliveries back off and resume.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.service.manifest import write_manifest
from agent.service.sender import AssociationFailed, run_due_deliveries, send_files
from config.settings import DeliverySettings, Destination, Settings, StorageSettings
from dicom_io.seg import build_seg
from dicom_io.sr import build_sr
from storage import DeliveryState, Ledger
from storage.spool import Spool
from tests.conftest import free_port
from tests.dicom_io.ct_series import CTSeries, labelled_result, write_ct_series
from tests.integration.orthanc import OrthancServer, orthanc, require_orthanc, start_orthanc
from tests.support_ledger import succeeded_job

__all__ = ["orthanc"]  # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.integration


def _write_results(ct: CTSeries, out_dir: Path) -> list[Path]:
    result = labelled_result(ct.volume, (22, 23, 24))
    seg = build_seg(ct.volume, ct.datasets, result, series_number=9901, algorithm_version="test-1")
    sr = build_sr(ct.datasets, result, series_number=9902, algorithm_version="test-1", segmentation=seg)
    out_dir.mkdir(parents=True, exist_ok=True)
    seg.save_as(out_dir / "seg.dcm", enforce_file_format=True)
    sr.save_as(out_dir / "sr.dcm", enforce_file_format=True)
    write_manifest(out_dir, [out_dir / "seg.dcm", out_dir / "sr.dcm"])
    return [out_dir / "seg.dcm", out_dir / "sr.dcm"]


def test_series_seg_and_sr_arrive_in_one_study(orthanc: OrthancServer, tmp_path: Path) -> None:
    ct = write_ct_series(tmp_path / "ct")
    results = _write_results(ct, tmp_path / "out")

    outcome = send_files(
        orthanc.aet, orthanc.host, orthanc.dicom_port, [*ct.files, *results], calling_ae="SPINEAGENT"
    )

    assert outcome.all_succeeded, outcome.summary()
    assert [r.status for r in outcome.results] == [0x0000] * (len(ct.files) + 2)
    study_uid = ct.datasets[0].StudyInstanceUID
    assert orthanc.study_uids() == [study_uid]
    series = {s["MainDicomTags"]["Modality"]: s for s in orthanc.series_of_study(study_uid)}
    assert set(series) == {"CT", "SEG", "SR"}
    assert len(series["CT"]["Instances"]) == len(ct.files)
    assert len(series["SEG"]["Instances"]) == 1 and len(series["SR"]["Instances"]) == 1
    assert series["SEG"]["MainDicomTags"]["SeriesNumber"] == "9901"
    seg_tags = orthanc.get(f"/instances/{series['SEG']['Instances'][0]}/simplified-tags")
    assert seg_tags["PatientID"] == ct.datasets[0].PatientID
    assert seg_tags["FrameOfReferenceUID"] == ct.datasets[0].FrameOfReferenceUID


def test_already_stored_instances_are_skipped(orthanc: OrthancServer, tmp_path: Path) -> None:
    ct = write_ct_series(tmp_path / "ct", slices=3)
    skip = {str(ct.datasets[0].SOPInstanceUID)}
    outcome = send_files(
        orthanc.aet, orthanc.host, orthanc.dicom_port, ct.files, calling_ae="SPINEAGENT", skip_instances=skip
    )
    assert len(outcome.results) == 2 and outcome.all_succeeded
    assert len(orthanc.get("/instances")) == 2


def test_rejected_association_says_why(tmp_path: Path) -> None:
    require_orthanc()
    server = start_orthanc(tmp_path / "orthanc", check_called_aet=True)
    try:
        ct = write_ct_series(tmp_path / "ct", slices=2)
        with pytest.raises(AssociationFailed, match=r"rejected the association \(.*[Cc]alled AE"):
            send_files("NOTORTHANC", server.host, server.dicom_port, ct.files, calling_ae="SPINEAGENT")
    finally:
        server.stop()


def test_unreachable_destination_is_a_clear_error(tmp_path: Path) -> None:
    ct = write_ct_series(tmp_path / "ct", slices=1)
    port = free_port()  # nothing listens there
    with pytest.raises(AssociationFailed, match=f"no association with PACS@127.0.0.1:{port}"):
        send_files("PACS", "127.0.0.1", port, ct.files, calling_ae="SPINEAGENT", timeout_s=5)


def _job_with_outputs(ledger: Ledger, spool: Spool, ct: CTSeries, at: datetime) -> int:
    study, series = str(ct.datasets[0].StudyInstanceUID), str(ct.datasets[0].SeriesInstanceUID)
    return succeeded_job(ledger, spool, lambda out: _write_results(ct, out), at, study=study, series=series)


def _settings(spool_dir: Path, port: int, *, max_attempts: int = 5) -> Settings:
    return Settings(
        storage=StorageSettings(spool_dir=spool_dir),
        destinations=[Destination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=port)],
        delivery=DeliverySettings(
            calling_ae_title="SPINEAGENT", retry_base_s=10, retry_cap_s=25, max_attempts=max_attempts
        ),
    )


def test_delivery_backs_off_while_down_and_completes_when_up(ledger: Ledger, tmp_path: Path) -> None:
    require_orthanc()
    spool = Spool(tmp_path / "spool")
    ct = write_ct_series(tmp_path / "ct")
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    job_id = _job_with_outputs(ledger, spool, ct, t0)
    port = free_port()
    settings = _settings(spool.root, port)

    (first,) = run_due_deliveries(ledger, settings, spool, now=t0)
    assert first.state == DeliveryState.PENDING and first.attempts == 1 and first.last_status is None
    assert "no association" in (first.last_error or "")
    assert first.next_attempt_at == t0 + timedelta(seconds=10)
    assert run_due_deliveries(ledger, settings, spool, now=t0 + timedelta(seconds=9)) == []  # not due yet
    (second,) = run_due_deliveries(ledger, settings, spool, now=t0 + timedelta(seconds=10))
    assert second.next_attempt_at == t0 + timedelta(seconds=30)  # 20 s back-off
    (third,) = run_due_deliveries(ledger, settings, spool, now=t0 + timedelta(seconds=30))
    assert third.next_attempt_at == t0 + timedelta(seconds=55)  # 40 s capped at 25 s

    server = start_orthanc(tmp_path / "orthanc", dicom_port=port)
    try:
        (done,) = run_due_deliveries(ledger, settings, spool, now=t0 + timedelta(seconds=55))
        assert done.state == DeliveryState.DELIVERED and done.attempts == 4 and done.last_status == 0
        assert len(done.sent_instances) == 2
        assert len(server.get("/instances")) == 2
        assert run_due_deliveries(ledger, settings, spool, now=t0 + timedelta(hours=1)) == []
    finally:
        server.stop()
    assert ledger.get_job(job_id).deliveries[0].state == DeliveryState.DELIVERED


def test_delivery_gives_up_after_max_attempts(ledger: Ledger, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    ct = write_ct_series(tmp_path / "ct")
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    _job_with_outputs(ledger, spool, ct, t0)
    settings = _settings(spool.root, free_port(), max_attempts=2)

    (first,) = run_due_deliveries(ledger, settings, spool, now=t0)
    assert first.state == DeliveryState.PENDING
    (last,) = run_due_deliveries(ledger, settings, spool, now=t0 + timedelta(minutes=5))
    assert last.state == DeliveryState.FAILED and last.attempts == 2
    assert "gave up after 2 attempts" in (last.last_error or "")
    assert run_due_deliveries(ledger, settings, spool, now=t0 + timedelta(days=1)) == []


def test_delivery_of_removed_outputs_or_unknown_destination_fails_at_once(
    ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    job_id = _job_with_outputs(ledger, spool, write_ct_series(tmp_path / "ct"), t0)
    shutil.rmtree(spool.output_dir(job_id))
    (failed,) = run_due_deliveries(ledger, _settings(spool.root, free_port()), spool, now=t0)
    assert failed.state == DeliveryState.FAILED and "no DICOM files" in (failed.last_error or "")

    ledger.retry_delivery(failed.id, now=t0)
    renamed = Settings(storage=StorageSettings(spool_dir=spool.root), destinations=[])
    (unknown,) = run_due_deliveries(ledger, renamed, spool, now=t0 + timedelta(seconds=1))
    assert unknown.state == DeliveryState.FAILED and "not configured" in (unknown.last_error or "")
