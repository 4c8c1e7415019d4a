"""End to end: from the last instance's C-STORE response to the SR arriving at a DCMTK ``storescp``.

One ``spine-agent serve`` (SQLite ledger, CPU engine, quiet time ``QUIET_S``) with one destination, a
DCMTK ``storescp`` (``TCP_NODELAY=1``) writing into a folder. The series are one lumbar phantom
(``inference.phantoms``) written ``series`` times with different UIDs (``uid_salt``), sent one after the
other by pynetdicom from this process, one association each; the clock starts when the last C-STORE
response of a series arrives here and stops at the modification time of the SR file storescp wrote (its
last byte on disk). The figure is that time **minus the configured quiet time**, the median over the
series; each series waits for its SR before the next is sent, so no two jobs overlap.

There is no external peer: the peer column is the agent's own pipeline time for the same job (the sum
of the job's ``timings`` in the ledger: ``total``, load, engine stages, writing SEG + SR), so the ratio is the
whole latency over the work itself; what lies between is the quiet timer's tick, the worker's claim,
the delivery scheduling and the association to the destination.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.common import Figure, free_port, values_of
from benchmarks.receive import _stop, _wait_port, start_agent_with

QUIET_S = 2.0
CALLING_AE = "BENCHSCU"


def write_series(folder: Path, count: int, slices: int, size: int, seed: int = 600_001) -> list[list[Path]]:
    """``count`` copies of one lumbar phantom series (``slices`` x ``size`` x ``size``), each with its own
    study, series and instance UIDs."""
    from inference.phantoms import generate_phantom, write_dicom_series

    phantom = generate_phantom(seed=seed, fov="lumbar", shape=(slices, size, size))
    return [
        write_dicom_series(phantom, folder / f"series-{i}", uid_salt=f"bench-e2e-{i}") for i in range(count)
    ]


def store(port: int, files: list[Path]) -> float:
    """Send ``files`` over one association; ``time.time()`` when the last C-STORE response arrived."""
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = [dcmread(p) for p in files]
    ae = AE(ae_title=CALLING_AE)
    for ds in datasets[:1]:
        ae.add_requested_context(ds.SOPClassUID, str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="SPINEAGENT")
    if not assoc.is_established:
        raise RuntimeError("the agent refused the association")
    try:
        last = 0.0
        for ds in datasets:
            status = assoc.send_c_store(ds)
            last = time.time()
            if getattr(status, "Status", None) != 0x0000:
                raise RuntimeError(f"C-STORE of {ds.SOPInstanceUID} failed: {status}")
    finally:
        assoc.release()
    return last


def wait_for_sr(folder: Path, seen: set[Path], timeout_s: float) -> Path:
    """The first new file storescp wrote for an SR (DCMTK names it ``SR*.<SOP Instance UID>``), once its
    size has stopped changing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = [p for p in folder.iterdir() if p.name.startswith("SR") and p not in seen]
        if new:
            path = new[0]
            size = -1
            while size != path.stat().st_size:
                size = path.stat().st_size
                time.sleep(0.2)
            return path
        time.sleep(0.05)
    raise RuntimeError(f"no SR arrived in {folder} within {timeout_s:.0f} s")


def job_seconds(ledger_url: str, series_uid: str) -> float:
    """The agent's own time for the job of ``series_uid``: its ``timings["total"]`` (the worker's whole
    time for the job: load, engine, writing SEG + SR), else the sum of its stages."""
    from sqlalchemy import create_engine, text

    engine = create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT job.timings FROM job JOIN series ON job.series_id = series.id "
                    "WHERE series.series_instance_uid = :uid"
                ),
                {"uid": series_uid},
            ).all()
    finally:
        engine.dispose()
    if not rows:
        raise RuntimeError(f"no job for series {series_uid}")
    import json

    timings = rows[-1][0]
    if isinstance(timings, str):
        timings = json.loads(timings)
    if "total" in timings:  # the worker's whole time for the job; the stages are parts of it
        return float(timings["total"])
    return float(sum(v for v in timings.values() if isinstance(v, int | float)))


def bench(workdir: Path, series: int, slices: int, size: int) -> list[Figure]:
    from pydicom import dcmread

    workdir.mkdir(parents=True, exist_ok=True)
    all_files = write_series(workdir / "input", series, slices, size)
    received = workdir / "destination"
    received.mkdir()
    dest_port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}
    storescp = subprocess.Popen(
        ["storescp", "--output-directory", str(received), "-aet", "DEST", str(dest_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    agent = None
    try:
        _wait_port(dest_port, storescp, 30.0, "storescp")
        directory = workdir / "agent"
        agent, port, _ready = start_agent_with(
            directory, stable_age_s=QUIET_S, calling_ae=CALLING_AE, destination=("DEST", dest_port)
        )
        ledger_url = f"sqlite:///{directory / 'ledger.sqlite3'}"
        latencies: list[dict[str, float]] = []
        pipeline: list[dict[str, float]] = []
        seen: set[Path] = set()
        for files in all_files:
            last_response = store(port, files)
            sr = wait_for_sr(received, seen, timeout_s=900.0)
            seen.add(sr)
            latencies.append({"s": sr.stat().st_mtime - last_response - QUIET_S})
            uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
            pipeline.append({"s": job_seconds(ledger_url, uid)})
    finally:
        if agent is not None:
            _stop(agent)
        _stop(storescp)
        shutil.rmtree(workdir / "input", ignore_errors=True)
    ours = statistics.median(x["s"] for x in latencies)
    peer = statistics.median(x["s"] for x in pipeline)
    return [
        Figure(
            section="e2e",
            name=f"last C-STORE response -> SR at storescp, minus {QUIET_S:g} s quiet "
            f"({slices} x {size}x{size} lumbar phantom, {series} series)",
            unit="s",
            ours=ours,
            peer=peer,
            peer_name="the job's own time (load + engine + write)",
            better="lower",
            runs=series,
            note="one agent for all series, CPU engine, SQLite ledger; each series waits for its SR "
            "before the next is sent; ratio = whole latency / pipeline work",
            ours_runs=values_of(latencies, "s"),
            peer_runs=values_of(pipeline, "s"),
        )
    ]
