"""The whole product on loopback: storescu -> agent (serve) -> engine -> SEG + SR -> Orthanc."""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io.readback import landmarks_from_sr
from storage import DeliveryState, JobState
from tests.e2e.conftest import (
    AgentProcess,
    PhantomSeries,
    make_agent,
    read_json,
    run_one_series,
    storescu,
    wait_for,
)
from tests.integration.orthanc import OrthancServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _instances_of_modality(orthanc: OrthancServer, study_uid: str, modality: str) -> list[str]:
    ids: list[str] = []
    for series in orthanc.series_of_study(study_uid):
        if series["MainDicomTags"].get("Modality") == modality:
            ids.extend(series["Instances"])
    return ids


def _download(orthanc: OrthancServer, instance_id: str) -> pydicom.Dataset:
    with urllib.request.urlopen(f"{orthanc.base_url}/instances/{instance_id}/file", timeout=30) as r:  # noqa: S310
        return pydicom.dcmread(io.BytesIO(r.read()))


def test_series_in_seg_and_sr_out_to_orthanc(
    orthanc: OrthancServer, phantom_series: PhantomSeries, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    agent = make_agent(tmp_path / "agent", orthanc.dicom_port)
    agent_factory.append(agent)
    job = run_one_series(agent, phantom_series.files)
    ledger = agent.ledger()
    assert job.attempts == 1
    wait_for(
        lambda: all(d.state == DeliveryState.DELIVERED for d in ledger.list_deliveries(job.id)),
        60,
        what="delivery",
    )

    study_uid = phantom_series.info.study_uid
    modalities = sorted(s["MainDicomTags"]["Modality"] for s in orthanc.series_of_study(study_uid))
    assert modalities == ["SEG", "SR"]  # results arrive in the source study (the CT was never sent there)
    (sr_id,) = _instances_of_modality(orthanc, study_uid, "SR")
    (seg_id,) = _instances_of_modality(orthanc, study_uid, "SEG")
    sr = _download(orthanc, sr_id)
    seg = _download(orthanc, seg_id)
    assert seg.FrameOfReferenceUID == phantom_series.info.frame_of_reference_uid
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == study_uid

    # the SR's points are the engine's landmarks (as the worker wrote them), written to 0.1 mm
    out = agent.directory / "spool" / str(job.output_path)
    engine_landmarks = {
        lm["label"]: lm["position_lps_mm"] for lm in read_json(out / "landmarks.json")["landmarks"]
    }
    received = {lm.label: lm.position_lps for lm in landmarks_from_sr(sr)}
    assert received.keys() == engine_landmarks.keys() and len(received) >= 3
    for label, position in received.items():
        np.testing.assert_allclose(position, engine_landmarks[label], atol=0.051)

    # a clean stop on SIGTERM, and nothing about the patient in the logs
    assert agent.terminate() == 0
    logs = agent.log_text()
    info = phantom_series.info
    for secret in (info.patient_name, info.patient_name.replace("^", " "), info.patient_id, info.birth_date):
        assert secret not in logs
    assert '"job_id"' in logs  # structured JSON lines carry the job id


def test_sigterm_during_a_job_then_restart_completes_it_exactly_once(
    orthanc: OrthancServer, phantom_series: PhantomSeries, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    agent = make_agent(tmp_path / "agent", orthanc.dicom_port)
    gate = tmp_path / "engine-gate"
    agent.engine_gate = gate  # the job waits inside the engine: SIGTERM certainly arrives mid-job
    agent_factory.append(agent)
    agent.start()
    storescu(agent.dicom_port, phantom_series.files)
    ledger = agent.ledger()
    wait_for(lambda: gate.with_name("engine-gate.entered").exists(), 120, poll_s=0.1, what="the engine call")
    (job,) = ledger.list_jobs()
    assert job.state == JobState.RUNNING
    assert agent.terminate(timeout_s=30) == 0  # within the bound, with --grace 0 the job is released
    assert ledger.get_job(job.id).state == JobState.QUEUED

    gate.touch()  # after the restart the engine runs at once
    agent.start()
    wait_for(lambda: ledger.get_job(job.id).state == JobState.SUCCEEDED, 300, what="the job after restart")
    wait_for(
        lambda: all(d.state == DeliveryState.DELIVERED for d in ledger.list_deliveries(job.id)),
        60,
        what="delivery",
    )
    assert len(ledger.list_jobs()) == 1
    study_uid = phantom_series.info.study_uid
    assert len(_instances_of_modality(orthanc, study_uid, "SR")) == 1
    assert len(_instances_of_modality(orthanc, study_uid, "SEG")) == 1
    kinds = [e.kind for e in ledger.events(job_id=job.id)]
    assert kinds.count("job.succeeded") == 1
    assert agent.terminate() == 0
