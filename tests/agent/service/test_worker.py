"""The worker against a real ledger and spool, with fault-injecting predictors where a fault is the point."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest

from agent.service.manifest import read_manifest
from agent.service.worker import JobWorker
from config import Destination, Settings
from dicom_io.result import Landmark, Result
from dicom_io.volume import Volume
from inference.phantoms import Phantom, generate_phantom, write_dicom_series
from storage import DeliveryState, JobState, Ledger, utcnow
from storage.spool import Spool


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Phantom, list[Path]]:
    phantom = generate_phantom(seed=920_001, fov="lumbar", spacing=(2.0, 2.0, 4.0))
    return phantom, write_dicom_series(phantom, tmp_path_factory.mktemp("series"))


class TruthPredictor:
    """Returns the phantom's own centroids: exercises everything around the engine."""

    def __init__(self, phantom: Phantom) -> None:
        self.phantom = phantom
        self.calls = 0

    def predict(self, volume: Volume) -> Result:
        self.calls += 1
        landmarks = [Landmark(label, pos, 0.9) for label, pos in sorted(self.phantom.centroids.items())]
        mask = (volume.array > 400).astype(np.uint8)
        return Result(mask=mask, landmarks=landmarks, timings={"stage1": 0.1}, model_version="truth")


class FailingPredictor:
    def __init__(self) -> None:
        self.calls = 0

    def predict(self, volume: Volume) -> Result:
        self.calls += 1
        raise RuntimeError("CUDA out of memory (injected)")


class BlindPredictor:
    def predict(self, volume: Volume) -> Result:
        return Result(mask=np.zeros(volume.shape, np.uint8), landmarks=[], model_version="blind")


def _settings(tmp_path: Path) -> Settings:
    settings = Settings()
    settings.storage.spool_dir = tmp_path / "spool"
    settings.ledger.url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    settings.destinations = [Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)]
    return settings


def _spool_series(settings: Settings, ledger: Ledger, files: list[Path]) -> int:
    spool = Spool(settings.storage.spool_dir)
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    folder = spool.incoming_dir(study, series)
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, folder / path.name)
        ledger.record_instance(
            study,
            series,
            path.stat().st_size,
            spool.incoming_relpath(study, series),
            now=utcnow() - timedelta(minutes=1),
        )
    (job_id,) = ledger.queue_quiet_series(30)
    return job_id


def test_success_writes_results_and_queues_deliveries(
    tmp_path: Path, ledger: Ledger, phantom_files: tuple[Phantom, list[Path]]
) -> None:
    phantom, files = phantom_files
    settings = _settings(tmp_path)
    job_id = _spool_series(settings, ledger, files)
    predictor = TruthPredictor(phantom)
    worker = JobWorker(settings, ledger, Spool(settings.storage.spool_dir), predictor)
    assert worker.run_once() == job_id
    job = ledger.get_job(job_id)
    assert job.state == JobState.SUCCEEDED and job.model_version == "truth"
    assert {"load", "stage1", "write", "total"} <= set(job.timings)
    out = Spool(settings.storage.spool_dir).resolve(str(job.output_path))
    assert sorted(p.name for p in out.iterdir()) == ["landmarks.json", "manifest.json", "seg.dcm", "sr.dcm"]
    assert read_manifest(out) == [out / "seg.dcm", out / "sr.dcm"]
    assert [d.state for d in job.deliveries] == [DeliveryState.PENDING]
    assert worker.run_once() is None  # queue empty


def test_refused_series_fails_at_once_with_its_reason(
    tmp_path: Path, ledger: Ledger, phantom_files: tuple[Phantom, list[Path]]
) -> None:
    phantom, files = phantom_files
    settings = _settings(tmp_path)
    job_id = _spool_series(settings, ledger, files[:3])
    predictor = TruthPredictor(phantom)
    JobWorker(settings, ledger, Spool(settings.storage.spool_dir), predictor).run_once()
    job = ledger.get_job(job_id)
    assert job.state == JobState.FAILED and job.attempts == 1
    assert job.failure_reason is not None and job.failure_reason.startswith("series refused: ")
    assert "slice" in job.failure_reason
    assert predictor.calls == 0


def test_engine_errors_are_retried_then_failed(
    tmp_path: Path, ledger: Ledger, phantom_files: tuple[Phantom, list[Path]]
) -> None:
    _, files = phantom_files
    settings = _settings(tmp_path)
    job_id = _spool_series(settings, ledger, files)
    predictor = FailingPredictor()
    worker = JobWorker(settings, ledger, Spool(settings.storage.spool_dir), predictor)
    for _ in range(3):
        assert worker.run_once() == job_id
    assert worker.run_once() is None
    job = ledger.get_job(job_id)
    assert predictor.calls == 3
    assert job.state == JobState.FAILED
    assert job.failure_reason == "failed after 3 attempt(s): RuntimeError: CUDA out of memory (injected)"
    assert not Spool(settings.storage.spool_dir).output_dir(job_id).exists()


def test_no_vertebra_found_is_a_readable_failure(
    tmp_path: Path, ledger: Ledger, phantom_files: tuple[Phantom, list[Path]]
) -> None:
    _, files = phantom_files
    settings = _settings(tmp_path)
    job_id = _spool_series(settings, ledger, files)
    JobWorker(settings, ledger, Spool(settings.storage.spool_dir), BlindPredictor()).run_once()
    job = ledger.get_job(job_id)
    assert job.state == JobState.FAILED
    assert "found no vertebra" in str(job.failure_reason)


def test_stop_releases_a_job_the_worker_cannot_finish_in_time(
    tmp_path: Path, ledger: Ledger, phantom_files: tuple[Phantom, list[Path]]
) -> None:
    import threading

    phantom, files = phantom_files
    settings = _settings(tmp_path)
    job_id = _spool_series(settings, ledger, files)
    entered, proceed = threading.Event(), threading.Event()

    class SlowPredictor(TruthPredictor):
        def predict(self, volume: Volume) -> Result:
            entered.set()
            proceed.wait(30)
            return super().predict(volume)

    worker = JobWorker(
        settings, ledger, Spool(settings.storage.spool_dir), SlowPredictor(phantom), poll_s=0.05
    )
    worker.start()
    assert entered.wait(60)
    assert worker.stop(grace_s=0.2) == job_id
    assert ledger.get_job(job_id).state == JobState.QUEUED
    proceed.set()  # the abandoned attempt finishes later and must not touch the ledger
    worker._thread.join(30)  # type: ignore[union-attr]
    job = ledger.get_job(job_id)
    assert job.state == JobState.QUEUED and job.attempts == 0
