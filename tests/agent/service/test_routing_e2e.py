"""Routing end to end: series sent over DICOM to the real SCP, the quiet timer decides, the worker runs.

A localizer series and a too-short series become SKIPPED jobs with their reasons and produce nothing
(no engine call, no output folder, no delivery, never claimed), while a normal series is processed and
its results are written. Our own SEG/SR placed in the spool are skipped as well.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

from agent.service.routing import SeriesRouter
from agent.service.scheduler import AgentScheduler
from agent.service.worker import JobWorker
from agent.web.dashboard import Dashboard, DashboardRequest
from config import Destination
from dicom_io.seg import build_seg
from dicom_io.sr import build_sr
from inference.phantoms import Phantom
from storage import IllegalTransition, JobState, Ledger, utcnow
from storage.spool import Spool
from tests.agent.cli.test_cli import run_cli
from tests.agent.service.conftest import StartSCP, scp_settings, write_series
from tests.agent.service.test_scheduler import send, wait_for
from tests.agent.service.test_worker import TruthPredictor, phantom_files  # noqa: F401  (fixture)
from tests.dicom_io.ct_series import binary_result, write_ct_series

LOCALIZER = ("ORIGINAL", "PRIMARY", "LOCALIZER")


def test_localizer_and_short_series_are_skipped_and_a_normal_series_is_processed(
    start_scp: StartSCP,
    ledger: Ledger,
    tmp_path: Path,
    phantom_files: tuple[Phantom, list[Path]],  # noqa: F811
) -> None:
    phantom, normal = phantom_files
    scp = start_scp(stable_age_s=0.5)
    settings = scp.settings.model_copy(
        update={"destinations": [Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)]}
    )
    localizer = write_series(tmp_path / "loc", slices=3, image_types=[LOCALIZER] * 3)
    short = write_series(tmp_path / "short", slices=12)
    uid_of = {
        str(dcmread(normal[0], stop_before_pixels=True).SeriesInstanceUID): "normal",
        localizer.series_uid: "localizer",
        short.series_uid: "short",
    }
    send(scp, localizer.files)
    send(scp, short.files)
    send(scp, normal)

    scheduler = AgentScheduler(settings, ledger, spool=scp.spool)
    scheduler.start()
    try:
        assert wait_for(lambda: len(ledger.list_jobs()) == 3, timeout=30)
    finally:
        scheduler.shutdown()
    jobs = {uid_of[j.series.series_instance_uid]: j for j in ledger.list_jobs()}
    assert {name: j.state for name, j in jobs.items()} == {
        "normal": JobState.QUEUED,
        "localizer": JobState.SKIPPED,
        "short": JobState.SKIPPED,
    }
    assert jobs["localizer"].failure_reason == (
        "skipped: all 3 instance(s) have ImageType LOCALIZER (routing.exclude_image_types)"
    )
    assert jobs["short"].failure_reason == "skipped: 12 slices < routing.min_slices 20"

    predictor = TruthPredictor(phantom)
    worker = JobWorker(settings, ledger, scp.spool, predictor)
    assert worker.run_once() == jobs["normal"].id
    assert worker.run_once() is None  # the skipped jobs are never claimed
    assert predictor.calls == 1

    done = ledger.get_job(jobs["normal"].id)
    assert done.state == JobState.SUCCEEDED and len(done.deliveries) == 1
    assert (scp.spool.resolve(str(done.output_path)) / "seg.dcm").is_file()
    for name in ("localizer", "short"):
        job = ledger.get_job(jobs[name].id)
        assert job.state == JobState.SKIPPED and job.attempts == 0 and job.output_path is None
        assert job.deliveries == [] and not scp.spool.output_dir(job.id).exists()
        assert [e.kind for e in ledger.events(job_id=job.id)] == ["job.skipped"]
        with pytest.raises(IllegalTransition):
            ledger.retry_job(job.id)

    # The dashboard shows the state with its count, and the reason.
    response = Dashboard(ledger).handle(DashboardRequest("GET", "/dashboard"))
    assert response is not None
    page = response.body.decode()
    assert "SKIPPED <b>2</b>" in page
    assert "skipped: 12 slices &lt; routing.min_slices 20" in page
    assert 'data-state="SKIPPED"' in page

    # So does the command line: the listing with the reason, the filter, and no retry.
    config = tmp_path / "cli.toml"
    config.write_text(f'[ledger]\nurl = "{ledger.url}"\n[storage]\nspool_dir = "{tmp_path / "spool"}"\n')
    table = run_cli("jobs", "list", config=config)
    assert table.returncode == 0, table.stderr
    assert "SKIPPED" in table.stdout and "skipped: 12 slices < routing.min_slices 20" in table.stdout
    listed = json.loads(run_cli("jobs", "list", "--state", "skipped", "--json", config=config).stdout)
    assert sorted(r["id"] for r in listed) == sorted([jobs["localizer"].id, jobs["short"].id])
    retried = run_cli("jobs", "retry", str(jobs["short"].id), config=config)
    assert retried.returncode == 2 and "cannot go from SKIPPED to QUEUED" in retried.stderr


def test_our_own_seg_and_sr_in_the_spool_are_never_processed(ledger: Ledger, tmp_path: Path) -> None:
    """Were our results ever to come back into the spool (a PACS forwarding everything), routing would
    skip them even with the rules off; the SCP already refuses their SOP classes at negotiation."""
    settings = scp_settings(tmp_path, stable_age_s=0.2)
    settings.routing.enabled = False
    spool = Spool(settings.storage.spool_dir)
    ct = write_ct_series(tmp_path / "ct")
    seg = build_seg(ct.volume, ct.datasets, binary_result(ct.volume), series_number=9, algorithm_version="v")
    sr = build_sr(
        ct.datasets, binary_result(ct.volume), series_number=10, algorithm_version="v", segmentation=seg
    )
    for ds in (seg, sr):
        study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        path = spool.instance_path(study, series, sop)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path)
        ledger.record_instance(
            study,
            series,
            path.stat().st_size,
            spool.incoming_relpath(study, series),
            utcnow(),
            sop_instance_uid=sop,
            sha256="0" * 64,
        )
    scheduler = AgentScheduler(settings, ledger, spool=spool)
    scheduler.start()
    try:
        assert wait_for(lambda: len(ledger.list_jobs()) == 2)
    finally:
        scheduler.shutdown()
    reasons = sorted(str(j.failure_reason) for j in ledger.list_jobs())
    assert [j.state for j in ledger.list_jobs()] == [JobState.SKIPPED, JobState.SKIPPED]
    assert reasons == [
        "skipped: no CT image among 1 instance(s), only [SEG (Segmentation Storage)]; "
        "SEG, SR and other non-image objects are never processed",
        "skipped: no CT image among 1 instance(s), only [SR (Comprehensive 3D SR Storage)]; "
        "SEG, SR and other non-image objects are never processed",
    ]


def test_a_version_recorded_before_instances_were_kept_is_routed_by_its_folder(
    ledger: Ledger, tmp_path: Path
) -> None:
    settings = scp_settings(tmp_path)
    spool = Spool(settings.storage.spool_dir)
    series = write_series(tmp_path / "src", slices=5)
    relpath = spool.incoming_relpath(series.study_uid, series.series_uid)
    folder = spool.resolve(relpath)
    folder.mkdir(parents=True)
    for path in series.files:
        shutil.copy(path, folder / path.name)
        ledger.record_instance(series.study_uid, series.series_uid, path.stat().st_size, relpath, utcnow())
    (version,) = ledger.series_versions(series.series_uid)
    router = SeriesRouter(settings.routing, ledger, spool)
    assert len(router.files(version)) == 5
    assert router(version) == "skipped: 5 slices < routing.min_slices 20"
