"""Ledger tables (SQLAlchemy 2.0 typed ORM). The ledger is the durable queue of the agent."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, in UTC)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use datetime.now(UTC)")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class JobState(enum.StrEnum):
    """Life cycle of a job; the legal moves are in :data:`storage.ledger.JOB_TRANSITIONS`."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    #: Left out by the routing rules (``[routing]``) when the series version closed; the reason is in
    #: ``failure_reason``. Final: never run, delivered or retried, and not an error.
    SKIPPED = "SKIPPED"


class DeliveryState(enum.StrEnum):
    """Life cycle of sending one job's results to one destination."""

    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Base(DeclarativeBase):
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Series(Base):
    """One version of a received series. Instances arriving after a job was queued start a new version."""

    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("series_instance_uid", "version", name="uq_series_uid_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Study Instance UID of the received instances.
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    #: Series Instance UID of the received instances.
    series_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    #: 1 for the first delivery of the series, +1 for each later batch after a job was queued.
    version: Mapped[int] = mapped_column(Integer, default=1)
    #: Number of instances recorded in this version: new SOP Instance UIDs, or known ones with other bytes
    #: (an identical re-send is not counted).
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    #: Bytes received for this version.
    byte_count: Mapped[int] = mapped_column(Integer, default=0)
    #: When the first instance of this version arrived.
    first_received_at: Mapped[datetime]
    #: When the latest instance arrived; the quiet timer counts from here.
    last_received_at: Mapped[datetime]
    #: Spool folder of this version's instances, relative to the spool root.
    spool_path: Mapped[str] = mapped_column(String(512))
    #: Set when a job was queued for this version; later instances open a new version.
    closed_at: Mapped[datetime | None] = mapped_column(default=None)

    jobs: Mapped[list[Job]] = relationship(back_populates="series")
    instances: Mapped[list[SeriesInstance]] = relationship(back_populates="series")

    #: Not a column: set by :meth:`storage.ledger.Ledger.record_instance` on the row it returns, True when
    #: the instance was an identical re-send (nothing counted, no version opened).
    duplicate = False


class SeriesInstance(Base):
    """One instance as a series version recorded it: a version's job reads exactly these (and earlier ones).

    A re-sent instance with the same bytes (same SHA-256) is not recorded again; one with other bytes is
    recorded in the version open at that time.
    """

    __tablename__ = "series_instance"
    __table_args__ = (UniqueConstraint("series_id", "sop_instance_uid", name="uq_series_instance_sop"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The series version this instance arrived in.
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    #: SOP Instance UID (the file name in the series folder).
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    #: Bytes stored.
    byte_count: Mapped[int] = mapped_column(Integer)
    #: SHA-256 (hex) of the stored bytes: an identical re-send is recognised by it.
    sha256: Mapped[str] = mapped_column(String(64))
    #: When it was stored.
    received_at: Mapped[datetime]

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """Running the engine on one series version and producing its results."""

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_state_created", "state", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The series version this job processes.
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"))
    #: Current state; change it only through :class:`storage.ledger.Ledger`.
    state: Mapped[JobState] = mapped_column(Enum(JobState, native_enum=False, length=16))
    #: How many times a worker has claimed the job.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Worker identity holding the job while RUNNING (``<agent id>@<host>:<pid>``, see storage.spool).
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    #: When the lease lapses; an expired RUNNING job is claimable again.
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    #: Human-readable reason of the last failure, or why routing skipped the series (``skipped: ...``).
    failure_reason: Mapped[str | None] = mapped_column(Text, default=None)
    #: Engine weights version that produced the results.
    model_version: Mapped[str | None] = mapped_column(String(64), default=None)
    #: Seconds per stage, e.g. {"load": 1.2, "stage1": 3.1, "stage2": 5.0, "write": 0.4}.
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Output folder (SEG, SR, JSON) relative to the spool root.
    output_path: Mapped[str | None] = mapped_column(String(512), default=None)
    #: When the job was queued.
    created_at: Mapped[datetime]
    #: When the current/last attempt started.
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    #: When the job reached SUCCEEDED, FAILED, CANCELLED or SKIPPED.
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    #: When the job's files were removed by retention.
    purged_at: Mapped[datetime | None] = mapped_column(default=None)
    #: A QUEUED job is not claimed before this time (set when a transient error deferred it).
    not_before: Mapped[datetime | None] = mapped_column(default=None)
    #: How often a transient error (disk full, out of memory) put the job back without spending an attempt.
    deferrals: Mapped[int] = mapped_column(Integer, default=0)

    series: Mapped[Series] = relationship(back_populates="jobs")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="job")


class Delivery(Base):
    """Sending one job's results to one configured destination."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("job_id", "destination", name="uq_delivery_job_destination"),
        Index("ix_delivery_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The job whose outputs are sent.
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"))
    #: Destination name from the configuration.
    destination: Mapped[str] = mapped_column(String(64))
    #: PENDING until every file is stored, then DELIVERED; FAILED when given up.
    state: Mapped[DeliveryState] = mapped_column(Enum(DeliveryState, native_enum=False, length=16))
    #: Sending attempts so far.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Earliest time of the next attempt (back-off).
    next_attempt_at: Mapped[datetime]
    #: Last DICOM status received (e.g. 0x0000, 0xA700), None if no association was made.
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    #: Last error message.
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    #: SOP Instance UIDs already stored at this destination (never sent again).
    sent_instances: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: SOP Instance UIDs whose C-STORE went out and got neither Success nor a failure status on record (a
    #: crash or a lost association in between): the destination may or may not hold them. Recorded before
    #: each C-STORE; the next attempt asks the destination about them (``query_before_resend``).
    in_doubt_instances: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: When the delivery row was created.
    created_at: Mapped[datetime]
    #: When the delivery completed (DELIVERED/FAILED/CANCELLED).
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    job: Mapped[Job] = relationship(back_populates="deliveries")


class Event(Base):
    """Append-only audit trail: one row per state change or notable occurrence."""

    __tablename__ = "event"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: When it happened.
    at: Mapped[datetime] = mapped_column(index=True)
    #: Short machine-readable kind, e.g. "job.queued", "job.running", "delivery.failed".
    kind: Mapped[str] = mapped_column(String(64))
    #: The job concerned, if any.
    job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"), default=None, index=True)
    #: The series version concerned, if any.
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), default=None)
    #: The delivery concerned, if any.
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("delivery.id"), default=None)
    #: Free text (never patient data).
    detail: Mapped[str | None] = mapped_column(Text, default=None)
