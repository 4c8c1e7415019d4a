"""Prometheus metrics of the agent, in one registry per process.

Counters and histograms are updated where things happen (SCP, worker, sender); gauges that mirror the
ledger or the disk (jobs by state, queue depth, deliveries by state, free disk) are refreshed at scrape
time by :func:`refresh_ledger_gauges`.
"""

from __future__ import annotations

import shutil
import threading
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from storage import JobState, Ledger
from storage.retention import RetentionReport

REGISTRY = CollectorRegistry(auto_describe=True)

# Received
INSTANCES_RECEIVED = Counter(
    "spine_agent_instances_received", "DICOM instances stored by the SCP", registry=REGISTRY
)
BYTES_RECEIVED = Counter("spine_agent_bytes_received", "Bytes of DICOM instances stored", registry=REGISTRY)
INSTANCES_REFUSED = Counter(
    "spine_agent_instances_refused",
    "C-STORE requests answered with a failure status",
    ["status"],
    registry=REGISTRY,
)
ASSOCIATIONS = Counter(
    "spine_agent_associations", "Associations by outcome (accepted, rejected)", ["outcome"], registry=REGISTRY
)

# Jobs
JOBS = Gauge("spine_agent_jobs", "Jobs in the ledger by state", ["state"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("spine_agent_queue_depth", "Jobs waiting for a worker (QUEUED)", registry=REGISTRY)
_DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, float("inf"))
JOB_DURATION = Histogram(
    "spine_agent_job_duration_seconds",
    "Wall time of a job attempt, load to results written",
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
STAGE_DURATION = Histogram(
    "spine_agent_stage_duration_seconds",
    "Wall time per pipeline stage",
    ["stage"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120, 300, float("inf")),
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "spine_agent_jobs_finished",
    "Job attempts finished by this process, by outcome",
    ["state"],
    registry=REGISTRY,
)

# Deliveries
DELIVERIES = Gauge(
    "spine_agent_deliveries", "Deliveries in the ledger by state", ["state"], registry=REGISTRY
)
DELIVERY_ATTEMPTS = Counter(
    "spine_agent_delivery_attempts",
    "Sending attempts by outcome and destination",
    ["outcome", "destination"],
    registry=REGISTRY,
)
DELIVERY_IN_DOUBT = Counter(
    "spine_agent_delivery_in_doubt_instances",
    "Instances in doubt after an interrupted attempt (sent, no answer on record), by what became of them: "
    "held (the destination answered C-FIND that it holds them; not sent again), not_held (sent again), "
    "query_failed (no answer to C-FIND; sent again), not_asked (query_before_resend = false; sent again)",
    ["outcome", "destination"],
    registry=REGISTRY,
)

#: The last sending attempt per destination in this process (``/readyz`` shows it, for information).
_DESTINATION_STATUS: dict[str, dict[str, str | None]] = {}
_DESTINATION_LOCK = threading.Lock()


def note_in_doubt(destination: str, outcome: str, count: int) -> None:
    """Count ``count`` instances in doubt at ``destination`` and what became of them (see the counter)."""
    DELIVERY_IN_DOUBT.labels(outcome=outcome, destination=destination).inc(count)


def note_delivery_attempt(destination: str, outcome: str, error: str | None, at: datetime) -> None:
    """Count one sending attempt (``delivered``, ``pending`` = will retry, ``failed``) and remember it."""
    DELIVERY_ATTEMPTS.labels(outcome=outcome, destination=destination).inc()
    with _DESTINATION_LOCK:
        status = _DESTINATION_STATUS.setdefault(destination, {"last_delivered_at": None})
        status.update(last_attempt_at=at.isoformat(), last_outcome=outcome, last_error=error)
        if outcome == "delivered":
            status["last_delivered_at"] = at.isoformat()


def note_echo(destination: str, result: str, at: datetime) -> None:
    """Remember the last C-ECHO of a destination (``destinations echo``, the dashboard's echo button)."""
    with _DESTINATION_LOCK:
        status = _DESTINATION_STATUS.setdefault(destination, {"last_delivered_at": None})
        status.update(last_echo_at=at.isoformat(), last_echo=result)


def destination_status(names: list[str]) -> dict[str, dict[str, str | None]]:
    """The last attempt (time, outcome, error), last success and last C-ECHO per configured destination."""
    empty = {
        "last_attempt_at": None,
        "last_outcome": None,
        "last_error": None,
        "last_delivered_at": None,
        "last_echo_at": None,
        "last_echo": None,
    }
    with _DESTINATION_LOCK:
        return {name: {**empty, **_DESTINATION_STATUS.get(name, {})} for name in names}


# Host and model
DISK_FREE = Gauge("spine_agent_disk_free_bytes", "Free bytes on the spool's file system", registry=REGISTRY)
MODEL_INFO = Gauge(
    "spine_agent_model_info", "The loaded engine weights (value 1)", ["version"], registry=REGISTRY
)


def loaded_model_version() -> str | None:
    """The weights version the service reported as loaded (``spine_agent_model_info``), or None."""
    for family in MODEL_INFO.collect():
        for sample in family.samples:
            if sample.value == 1:
                return str(sample.labels["version"])
    return None


def refresh_disk_gauge(spool_dir: Path) -> int:
    """Update and return free bytes on the spool's file system."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(spool_dir).free
    DISK_FREE.set(free)
    return free


# Retention
RETENTION_PURGED_JOBS = Counter(
    "spine_agent_retention_purged_jobs",
    "Finished jobs whose files retention removed, by reason (age, watermark)",
    ["reason"],
    registry=REGISTRY,
)
RETENTION_FREED_BYTES = Counter(
    "spine_agent_retention_freed_bytes", "Bytes of spool files removed by retention", registry=REGISTRY
)


def refresh_ledger_gauges(ledger: Ledger) -> None:
    """Set jobs by state, queue depth and deliveries by state from the ledger (two grouped counts)."""
    job_counts = ledger.job_counts()
    for job_state, count in job_counts.items():
        JOBS.labels(state=job_state.value).set(count)
    QUEUE_DEPTH.set(job_counts[JobState.QUEUED])
    for delivery_state, count in ledger.delivery_counts().items():
        DELIVERIES.labels(state=delivery_state.value).set(count)


def count_retention(report: RetentionReport) -> None:
    """Count one retention sweep's purges (the sweeper's ``on_sweep`` callback)."""
    RETENTION_PURGED_JOBS.labels(reason="age").inc(len(report.purged_by_age))
    RETENTION_PURGED_JOBS.labels(reason="watermark").inc(len(report.purged_by_watermark))
    RETENTION_FREED_BYTES.inc(report.freed_bytes)
