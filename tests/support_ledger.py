"""Ledger states the delivery tests start from (real SQLite or PostgreSQL ledger, real spool)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from storage import Ledger
from storage.spool import Spool


def succeeded_job(
    ledger: Ledger,
    spool: Spool,
    write_outputs: Callable[[Path], object],
    at: datetime,
    *,
    destinations: Sequence[str] = ("pacs",),
    study: str = "1.2.826.0.1.1",
    series: str = "1.2.826.0.1.2",
) -> int:
    """A job SUCCEEDED at ``at`` with one PENDING delivery per destination; ``write_outputs(out_dir)``
    fills its output folder (created beforehand) before the job is recorded as finished."""
    ledger.record_instance(study, series, 1, f"incoming/{study}/{series}", now=at - timedelta(minutes=5))
    (job_id,) = ledger.queue_quiet_series(30, now=at - timedelta(minutes=1))
    claimed = ledger.claim_job("test-worker", lease_s=600, now=at - timedelta(seconds=30))
    assert claimed is not None and claimed.id == job_id
    out = spool.output_dir(job_id)
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(out)
    ledger.succeed_job(
        job_id,
        owner="test-worker",
        timings={},
        model_version="test-1",
        output_path=spool.output_relpath(job_id),
        destinations=list(destinations),
        now=at,
    )
    return job_id
