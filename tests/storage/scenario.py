"""Building ledger + spool states for the retention tests: real files, real SQLite ledger."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from storage import DeliveryState, Job, JobState, Ledger


def write_file(path: Path, at: datetime, size: int = 64) -> None:
    """A file whose modification time is ``at`` (the time the SCP would have stored it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    os.utime(path, (at.timestamp(), at.timestamp()))


def receive(ledger: Ledger, spool: Path, study: str, series: str, sops: list[str], at: datetime) -> str:
    """Store instances under ``incoming/<study>/<series>/`` and record them; returns the spool path."""
    relpath = f"incoming/{study}/{series}"
    for sop in sops:
        write_file(spool / relpath / f"{sop}.dcm", at)
        ledger.record_instance(study, series, 64, relpath, now=at)
    return relpath


def queue(ledger: Ledger, at: datetime) -> int:
    """Close the quiet series versions and return the one new job id."""
    (job_id,) = ledger.queue_quiet_series(30, now=at)
    return job_id


def finish(
    ledger: Ledger,
    spool: Path,
    job_id: int,
    state: JobState,
    at: datetime,
    deliveries: dict[str, DeliveryState] | None = None,
) -> Job:
    """Take a QUEUED job to ``state`` at ``at``; a SUCCEEDED job gets outputs and the given deliveries."""
    if state == JobState.QUEUED:
        return ledger.get_job(job_id)
    if state == JobState.CANCELLED:
        return ledger.cancel_job(job_id, now=at)
    # A lease long enough that a RUNNING job is never reclaimed while the scenario is built.
    claimed = ledger.claim_job("test-worker", lease_s=10**8, now=at - timedelta(seconds=5))
    assert claimed is not None and claimed.id == job_id, "jobs must be finished in queue order"
    if state == JobState.RUNNING:
        return claimed
    if state == JobState.FAILED:
        return ledger.fail_job(job_id, "test failure", owner="test-worker", now=at)
    output = f"outgoing/{job_id}"
    write_file(spool / output / "seg.dcm", at, size=128)
    write_file(spool / output / "sr.dcm", at, size=32)
    deliveries = deliveries or {}
    ledger.succeed_job(
        job_id,
        owner="test-worker",
        timings={},
        model_version="test",
        output_path=output,
        destinations=list(deliveries),
        now=at,
    )
    for delivery in ledger.list_deliveries(job_id):
        outcome = deliveries[delivery.destination]
        if outcome != DeliveryState.PENDING:
            ledger.record_delivery_attempt(
                delivery.id, sent_instances=[], status=0, error=None, outcome=outcome, now=at
            )
    return ledger.get_job(job_id)
