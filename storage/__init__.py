"""The job ledger (SQLAlchemy 2.0; SQLite in WAL mode by default, PostgreSQL by URL)."""

from storage.errors import IllegalTransition, LedgerError, NotFound
from storage.ledger import (
    DELIVERY_TRANSITIONS,
    FINISHED_JOB_STATES,
    JOB_TRANSITIONS,
    ClosedVersion,
    Ledger,
    RouteFn,
    check_delivery_transition,
    check_job_transition,
    utcnow,
)
from storage.models import Delivery, DeliveryState, Event, Job, JobState, Series, SeriesInstance

__all__ = [
    "DELIVERY_TRANSITIONS",
    "FINISHED_JOB_STATES",
    "JOB_TRANSITIONS",
    "ClosedVersion",
    "Delivery",
    "DeliveryState",
    "Event",
    "IllegalTransition",
    "Job",
    "JobState",
    "Ledger",
    "LedgerError",
    "NotFound",
    "RouteFn",
    "Series",
    "SeriesInstance",
    "check_delivery_transition",
    "check_job_transition",
    "utcnow",
]
