"""``spine-agent demo``: the whole loop on the embedded default, on one machine.

A local PACS (a Storage SCP keeping what it receives) and the agent (SQLite ledger, local spool) start
on free loopback ports; a synthetic CT phantom with exact ground truth is written as a DICOM series and
sent to the agent with a real C-STORE SCU; the agent's quiet timer queues it, the two-stage engine runs,
SEG + SR go back to the PACS; the summary compares the landmarks read back from the received SR with the
ground truth using the VerSe metric, and a PNG shows the result.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from agent.cli.demo_pacs import DemoPacs
from agent.cli.overlay import render_overlay
from agent.errors import UserError
from agent.service.pipeline import Predictor
from agent.service.sender import send_files
from agent.service.service import AgentService
from config import Destination, Settings
from dicom_io.labels import ANATOMICAL_ORDER, ENGINE_LABELS, vertebra_name
from dicom_io.readback import landmarks_from_sr, mask_from_seg
from dicom_io.result import Landmark
from dicom_io.series import load_series
from dicom_io.volume import Volume
from inference.training.metrics import match_subject
from storage import DeliveryState, JobState

#: Phantom fields of view the demo offers.
#: Voxel size of the demo series: 1 mm in-plane, 2.5 mm slices, a typical clinical reconstruction.
DEMO_SPACING = (1.0, 1.0, 2.5)

DEMO_FOVS = ("whole", "thoracolumbar", "lumbar", "thoracic", "cervical", "abdomen_pelvis", "chest")


@dataclass
class DemoReport:
    """What the demo measured and where it put things."""

    workdir: Path
    job_id: int
    job_state: str
    failure_reason: str | None
    landmarks: list[Landmark]
    ground_truth: dict[int, tuple[float, float, float]]
    scores: list[VertebraScore]
    identification_rate: float
    mean_error_mm: float
    timings: dict[str, float]
    received_files: list[Path]
    png: Path | None
    series_dir: Path
    verse_dir: Path
    predictions_json: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VertebraScore:
    """One ground-truth vertebra of the demo phantom, scored with the VerSe rule."""

    label: int
    predicted: bool
    identified: bool
    error_mm: float | None

    @property
    def name(self) -> str:
        return vertebra_name(self.label)


def score_landmarks(
    landmarks: list[Landmark], ground_truth: dict[int, tuple[float, float, float]]
) -> list[VertebraScore]:
    """Per ground-truth vertebra, in anatomical order: found, identified (VerSe, 20 mm), error."""
    match = match_subject(ground_truth, {lm.label: lm.position_lps for lm in landmarks})
    order = [label for label in ANATOMICAL_ORDER if label in ground_truth]
    return [
        VertebraScore(
            label=label,
            predicted=label in match.distances,
            identified=match.identified.get(label, False),
            error_mm=match.distances.get(label),
        )
        for label in order
    ]


def _wait(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


def demo_settings(workdir: Path, pacs_port: int, agent_port: int) -> Settings:
    """The embedded default: SQLite ledger and spool under ``workdir``, one local destination."""
    settings = Settings()
    settings.dicom.port = agent_port
    settings.dicom.bind_address = "127.0.0.1"
    settings.dicom.allowed_calling_aes = ["DEMOSENDER"]
    settings.dicom.stable_age_s = 2.0
    settings.storage.spool_dir = workdir / "spool"
    settings.storage.disk_reserve_mb = 256
    settings.ledger.url = f"sqlite:///{workdir / 'ledger.sqlite3'}"
    settings.http.port = 0
    settings.delivery.retry_base_s = 1.0
    settings.destinations = [
        Destination(name="demo-pacs", ae_title="DEMOPACS", host="127.0.0.1", port=pacs_port)
    ]
    return settings


def free_local_port() -> int:
    """A TCP port free on loopback now (the demo's services bind to it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_demo(
    workdir: Path,
    *,
    seed: int = 7,
    fov: str = "thoracolumbar",
    engine: Predictor | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
    timeout_s: float = 600.0,
) -> DemoReport:
    """Run the loop once; raise :class:`UserError` when a step cannot complete."""
    from inference.phantoms import PhantomSpec, generate_phantom, write_dicom_series
    from inference.training.verse import write_verse

    workdir.mkdir(parents=True, exist_ok=True)
    stage_seconds: dict[str, float] = {}

    progress("generating a synthetic CT phantom")
    t0 = time.perf_counter()
    spec = PhantomSpec.random(seed, fov=fov, spacing=DEMO_SPACING)
    phantom = generate_phantom(spec)
    series_dir = workdir / "input-series"
    files = write_dicom_series(phantom, series_dir)
    verse_dir = workdir / "verse"
    write_verse(phantom, verse_dir, "demo")
    stage_seconds["phantom"] = time.perf_counter() - t0

    pacs = DemoPacs(workdir / "pacs")
    pacs.start()
    service: AgentService | None = None
    try:
        settings = demo_settings(workdir, pacs.port, free_local_port())
        progress("starting the agent (SQLite ledger, engine, SCP)")
        t0 = time.perf_counter()
        service = AgentService(settings, engine=engine, shutdown_grace_s=5.0, worker_poll_s=0.25)
        service.start()
        stage_seconds["agent start"] = time.perf_counter() - t0

        progress(f"sending {len(files)} CT images to the agent over DICOM")
        t0 = time.perf_counter()
        outcome = send_files(
            settings.dicom.ae_title, "127.0.0.1", settings.dicom.port, files, calling_ae="DEMOSENDER"
        )
        if not outcome.all_succeeded:
            raise UserError(f"demo: sending the series failed: {outcome.summary()}")
        stage_seconds["send"] = time.perf_counter() - t0

        ledger = service.ledger
        progress(f"waiting {settings.dicom.stable_age_s:.0f} s of quiet, then the two-stage engine runs")
        t0 = time.perf_counter()
        finished = _wait(
            lambda: any(j.state in (JobState.SUCCEEDED, JobState.FAILED) for j in ledger.list_jobs()),
            timeout_s,
        )
        jobs = ledger.list_jobs()
        if not finished or not jobs:
            raise UserError(
                f"demo: no job finished within {timeout_s:.0f} s (see {workdir / 'ledger.sqlite3'})"
            )
        job = ledger.get_job(jobs[0].id)
        stage_seconds["queue + engine"] = time.perf_counter() - t0
        if job.state != JobState.SUCCEEDED:
            raise UserError(f"demo: job {job.id} {job.state.value}: {job.failure_reason}")

        progress("sending SEG + SR back to the local PACS")
        t0 = time.perf_counter()
        delivered = _wait(
            lambda: all(d.state == DeliveryState.DELIVERED for d in ledger.list_deliveries(job.id)), 120
        )
        if not delivered:
            states = [(d.destination, d.state.value, d.last_error) for d in ledger.list_deliveries(job.id)]
            raise UserError(f"demo: results not delivered: {states}")
        stage_seconds["deliver"] = time.perf_counter() - t0
    finally:
        if service is not None:
            service.stop()
        pacs.stop()

    received = sorted(pacs.received)
    sr_files = [p for p in received if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR"]
    if not sr_files:
        raise UserError("demo: the PACS received no SR")
    landmarks = landmarks_from_sr(pydicom.dcmread(sr_files[0]))
    # Scored like `spine-agent evaluate`: the vertebrae the engine labels (the sacrum is not one of them).
    truth = {label: pos for label, pos in phantom.centroids.items() if label in ENGINE_LABELS}
    scores = score_landmarks(landmarks, truth)
    hits = [s for s in scores if s.identified]
    errors = [s.error_mm for s in scores if s.error_mm is not None]

    predictions_json = write_prediction_centroids(verse_dir, workdir / "predictions", landmarks)

    progress("drawing the overlay")
    seen = load_series(series_dir)  # the volume as the agent saw it, with the source UIDs the SEG references
    result_mask = _received_seg_mask(received, seen)
    png = render_overlay(
        seen,
        result_mask,
        landmarks,
        workdir / "demo.png",
        ground_truth=phantom.centroids,
        title=f"spine-agent demo: phantom seed {seed} ({fov})",
    )
    return DemoReport(
        workdir=workdir,
        job_id=job.id,
        job_state=job.state.value,
        failure_reason=job.failure_reason,
        landmarks=landmarks,
        ground_truth=truth,
        scores=scores,
        identification_rate=len(hits) / max(1, len(truth)),
        mean_error_mm=float(np.mean(errors)) if errors else float("nan"),
        timings=dict(job.timings),
        received_files=received,
        png=png,
        series_dir=series_dir,
        verse_dir=verse_dir,
        predictions_json=predictions_json,
        stage_seconds=stage_seconds,
    )


def write_prediction_centroids(verse_dir: Path, out_dir: Path, landmarks: list[Landmark]) -> Path:
    """The landmarks as a VerSe centroid file in the voxel frame of the VerSe CT written for the demo,
    named like the ground truth, so ``spine-agent evaluate --predictions`` scores exactly these points."""
    import json

    from inference.training.verse import read_verse, verse_centroids

    (subject,) = list(read_verse(verse_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{subject.subject}_seg-subreg_ctd.json"
    path.write_text(json.dumps(verse_centroids(landmarks, subject.volume.affine), indent=1) + "\n")
    return path


def _received_seg_mask(received: list[Path], volume: Volume) -> np.ndarray | None:
    """The union of the received SEG's segments on the volume's grid (None when no SEG came back)."""
    for path in received:
        ds = pydicom.dcmread(path)
        if ds.Modality == "SEG":
            return mask_from_seg(ds, volume)
    return None
