"""JSON-friendly views of ledger rows and human ages, shared by the CLI and the dashboard.

No patient data: the ledger holds UIDs, states, times and reasons only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from storage import Delivery, Job


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def delivery_as_dict(delivery: Delivery) -> dict[str, Any]:
    """A JSON-friendly view of a delivery (destination names and DICOM statuses; no patient data)."""
    return {
        "id": delivery.id,
        "job_id": delivery.job_id,
        "destination": delivery.destination,
        "state": delivery.state.value,
        "attempts": delivery.attempts,
        "next_attempt_at": iso(delivery.next_attempt_at),
        "last_status": None if delivery.last_status is None else f"0x{delivery.last_status:04X}",
        "last_error": delivery.last_error,
        "sent_instances": len(delivery.sent_instances),
        "created_at": iso(delivery.created_at),
        "finished_at": iso(delivery.finished_at),
    }


def age(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "-"
    seconds = int((now - then).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def job_as_dict(job: Job) -> dict[str, Any]:
    """A JSON-friendly view of a job (no patient data; UIDs are not patient identifiers)."""

    data: dict[str, Any] = {
        "id": job.id,
        "state": job.state.value,
        "attempts": job.attempts,
        "series_instance_uid": job.series.series_instance_uid,
        "study_instance_uid": job.series.study_instance_uid,
        "series_version": job.series.version,
        "instances": job.series.instance_count,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "failure_reason": job.failure_reason,
        "model_version": job.model_version,
        "timings": job.timings,
        "lease_owner": job.lease_owner,
        "output_path": job.output_path,
    }
    if "deliveries" in job.__dict__:
        data["deliveries"] = [delivery_as_dict(d) for d in job.deliveries]
    return data
