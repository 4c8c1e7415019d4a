"""The job ledger: every state change of series, jobs and deliveries, each in one transaction.

The state machines live here and only here (:data:`JOB_TRANSITIONS`, :data:`DELIVERY_TRANSITIONS`);
an illegal move raises :class:`~storage.errors.IllegalTransition` and changes nothing. Claiming a job is
a compare-and-set ``UPDATE ... WHERE state = <expected>``, so two workers (threads or processes, on
SQLite or PostgreSQL) never both win the same job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from storage.errors import IllegalTransition, NotFound
from storage.models import Delivery, DeliveryState, Event, Job, JobState, Series, SeriesInstance

log = logging.getLogger(__name__)

#: Legal job moves. RUNNING -> QUEUED is a release (graceful stop) or an expired lease being retried;
#: FAILED/CANCELLED -> QUEUED is an admin's retry. SUCCEEDED is final; SKIPPED (routing left the series
#: out, :meth:`Ledger.close_quiet_series`) is born final: no move leads into it or out of it.
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.QUEUED, JobState.CANCELLED}),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.SKIPPED: frozenset(),
}

#: Legal delivery moves; FAILED/CANCELLED -> PENDING is an admin's retry, DELIVERED -> PENDING an admin's
#: re-send (every instance sent again: :meth:`Ledger.resend_delivery`).
DELIVERY_TRANSITIONS: dict[DeliveryState, frozenset[DeliveryState]] = {
    DeliveryState.PENDING: frozenset(
        {DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.CANCELLED}
    ),
    DeliveryState.FAILED: frozenset({DeliveryState.PENDING}),
    DeliveryState.CANCELLED: frozenset({DeliveryState.PENDING}),
    DeliveryState.DELIVERED: frozenset({DeliveryState.PENDING}),
}

FINISHED_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.SKIPPED})
#: Times :meth:`Ledger.record_instance` runs when a concurrent first instance opened the same version.
RECORD_ATTEMPTS = 3

#: Decides about a series version about to be queued: a reason (``skipped: ...``) makes its job SKIPPED,
#: None QUEUED. Called outside any ledger transaction (it may read the spool).
RouteFn = Callable[[Series], str | None]


@dataclass(frozen=True)
class ClosedVersion:
    """A series version the quiet timer closed, and the job it got (QUEUED, or SKIPPED with a reason)."""

    job_id: int
    series_id: int
    series_instance_uid: str
    state: JobState
    reason: str | None


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only kind of datetime the ledger accepts)."""
    return datetime.now(UTC)


def check_job_transition(job_id: int, current: JobState, target: JobState) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> target`` is a legal job move."""
    if target not in JOB_TRANSITIONS[current]:
        raise IllegalTransition(f"job {job_id}: cannot go from {current.value} to {target.value}")


def check_delivery_transition(delivery_id: int, current: DeliveryState, target: DeliveryState) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> target`` is a legal delivery move."""
    if target not in DELIVERY_TRANSITIONS[current]:
        raise IllegalTransition(f"delivery {delivery_id}: cannot go from {current.value} to {target.value}")


def _drop_in_doubt(delivery: Delivery, answered: set[str]) -> None:
    """``answered`` are no longer in doubt (the destination's answer about them is on record)."""
    if answered & set(delivery.in_doubt_instances):
        delivery.in_doubt_instances = [u for u in delivery.in_doubt_instances if u not in answered]


def make_engine(url: str) -> Engine:
    """An SQLAlchemy engine; SQLite gets WAL, a busy timeout and foreign keys, its folder is created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Ledger:
    """All reads and writes of the ledger. Safe to share between threads; one per process."""

    def __init__(self, url: str, *, max_attempts: int = 3) -> None:
        self.url = url
        self.max_attempts = max_attempts
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade(self) -> None:
        """Apply every Alembic migration up to the newest (safe to run at each start)."""
        from storage.migrate import upgrade_to_head

        upgrade_to_head(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One session, one transaction: committed on success, rolled back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.transaction() as session:
            session.execute(select(1))

    # --- events --------------------------------------------------------------------------------------

    @staticmethod
    def _event(
        session: Session, now: datetime, kind: str, detail: str | None = None, **ids: int | None
    ) -> None:
        session.add(Event(at=now, kind=kind, detail=detail, **ids))

    def events(self, job_id: int | None = None, limit: int = 200) -> list[Event]:
        """Newest-last events, optionally of one job."""
        with self.transaction() as session:
            query = select(Event).order_by(Event.id.desc()).limit(limit)
            if job_id is not None:
                query = query.where(Event.job_id == job_id)
            return list(reversed(session.scalars(query).all()))

    # --- series ---------------------------------------------------------------------------------------

    def record_instance(
        self,
        study_uid: str,
        series_uid: str,
        nbytes: int,
        spool_path: str,
        now: datetime | None = None,
        *,
        sop_instance_uid: str | None = None,
        sha256: str | None = None,
    ) -> Series:
        """Count one stored instance on the open version of its series, opening a new version if needed.

        With ``sop_instance_uid`` and ``sha256`` the instance is also recorded in that version
        (:class:`SeriesInstance`), and an **identical re-send** (same SOP Instance UID, same SHA-256 as the
        newest record of it in any version of the series) changes no count and opens no version: it only
        restarts the quiet time of a version that is still open. The returned row's ``duplicate``
        attribute (not a column) says which happened.
        """
        now = now or utcnow()
        # Two associations may deliver the first instances of one new series at the same moment: both
        # see no open version and both insert version N; the UNIQUE (series, version) constraint refuses
        # the second. It then simply runs again and finds the version the first one opened.
        for attempt in range(RECORD_ATTEMPTS):
            try:
                return self._record_instance_once(
                    study_uid, series_uid, nbytes, spool_path, now, sop_instance_uid, sha256
                )
            except IntegrityError:
                if attempt == RECORD_ATTEMPTS - 1:
                    raise
                log.debug("series version opened concurrently; recording the instance again")
        raise AssertionError("unreachable")

    def _record_instance_once(
        self,
        study_uid: str,
        series_uid: str,
        nbytes: int,
        spool_path: str,
        now: datetime,
        sop_instance_uid: str | None,
        sha256: str | None,
    ) -> Series:
        with self.transaction() as session:
            latest = session.scalars(
                select(Series)
                .where(Series.series_instance_uid == series_uid)
                .order_by(Series.version.desc())
                .limit(1)
            ).first()
            if latest is not None and sop_instance_uid is not None and sha256 is not None:
                known = session.scalars(
                    select(SeriesInstance.sha256)
                    .join(Series, SeriesInstance.series_id == Series.id)
                    .where(
                        Series.series_instance_uid == series_uid,
                        SeriesInstance.sop_instance_uid == sop_instance_uid,
                    )
                    .order_by(Series.version.desc())
                    .limit(1)
                ).first()
                if known == sha256:
                    if latest.closed_at is None:
                        latest.last_received_at = max(latest.last_received_at, now)
                    latest.duplicate = True
                    return latest
            if latest is None or latest.closed_at is not None:
                version = 1 if latest is None else latest.version + 1
                latest = Series(
                    study_instance_uid=study_uid,
                    series_instance_uid=series_uid,
                    version=version,
                    instance_count=0,
                    byte_count=0,
                    first_received_at=now,
                    last_received_at=now,
                    spool_path=spool_path,
                )
                session.add(latest)
                session.flush()
                self._event(session, now, "series.opened", f"version {version}", series_id=latest.id)
            counted = True
            replaced_bytes = 0
            if sop_instance_uid is not None and sha256 is not None:
                row = session.scalars(
                    select(SeriesInstance).where(
                        SeriesInstance.series_id == latest.id,
                        SeriesInstance.sop_instance_uid == sop_instance_uid,
                    )
                ).first()
                if row is None:
                    session.add(
                        SeriesInstance(
                            series_id=latest.id,
                            sop_instance_uid=sop_instance_uid,
                            byte_count=nbytes,
                            sha256=sha256,
                            received_at=now,
                        )
                    )
                else:  # the same SOP Instance UID again in this version, with other bytes: last one wins
                    counted = False
                    replaced_bytes = row.byte_count
                    row.byte_count, row.sha256, row.received_at = nbytes, sha256, now
            # Counted in SQL (``SET n = n + 1``), not from the values read above: instances of one version
            # arriving over parallel associations would otherwise overwrite each other's counts.
            latest.instance_count = Series.instance_count + (1 if counted else 0)  # type: ignore[assignment]
            latest.byte_count = Series.byte_count + (nbytes - replaced_bytes)  # type: ignore[assignment]
            latest.last_received_at = now
            session.flush()
            session.refresh(latest, ["instance_count", "byte_count"])
            latest.duplicate = False
            return latest

    def version_instances(self, series_id: int) -> dict[str, SeriesInstance]:
        """What a version's job reads: SOP Instance UID -> its newest record in this or an earlier version.

        Empty for a version recorded before the ledger kept instances (its job reads the whole folder).
        """
        with self.transaction() as session:
            series = session.get(Series, series_id)
            if series is None:
                raise NotFound(f"series {series_id} does not exist")
            rows = session.execute(
                select(SeriesInstance, Series.version)
                .join(Series, SeriesInstance.series_id == Series.id)
                .where(
                    Series.series_instance_uid == series.series_instance_uid,
                    Series.version <= series.version,
                )
                .order_by(Series.version)
            ).all()
        return {row.sop_instance_uid: row for row, _version in rows}

    def newer_instance(self, series_id: int, sop_instance_uid: str) -> bool:
        """True when a later version of the series recorded ``sop_instance_uid`` again (other bytes)."""
        with self.transaction() as session:
            series = session.get(Series, series_id)
            if series is None:
                raise NotFound(f"series {series_id} does not exist")
            found = session.scalars(
                select(SeriesInstance.id)
                .join(Series, SeriesInstance.series_id == Series.id)
                .where(
                    Series.series_instance_uid == series.series_instance_uid,
                    Series.version > series.version,
                    SeriesInstance.sop_instance_uid == sop_instance_uid,
                )
                .limit(1)
            ).first()
            return found is not None

    def open_series_count(self) -> int:
        """Series versions still receiving (not yet queued)."""
        with self.transaction() as session:
            return int(session.scalar(select(func.count()).where(Series.closed_at.is_(None))) or 0)

    def get_series(self, series_id: int) -> Series:
        with self.transaction() as session:
            series = session.get(Series, series_id)
            if series is None:
                raise NotFound(f"series {series_id} does not exist")
            return series

    def queue_quiet_series(
        self, quiet_s: float, now: datetime | None = None, *, up_since: datetime | None = None
    ) -> list[int]:
        """Close every open series version quiet for ``quiet_s`` seconds and queue one job for each.

        Returns the new job ids; see :meth:`close_quiet_series` (this is it without routing).
        """
        closed = self.close_quiet_series(quiet_s, now, up_since=up_since)
        return [c.job_id for c in closed if c.state == JobState.QUEUED]

    def close_quiet_series(
        self,
        quiet_s: float,
        now: datetime | None = None,
        *,
        up_since: datetime | None = None,
        route: RouteFn | None = None,
    ) -> list[ClosedVersion]:
        """Close every open series version quiet for ``quiet_s`` seconds; each gets exactly one job.

        Quiet time counts only while the caller is up: with ``up_since`` (when the agent started) a
        version is quiet once ``now - max(last_received_at, up_since) >= quiet_s``, so nothing is queued in
        the first ``quiet_s`` after a start.

        ``route`` (the routing rules) is asked about each quiet version first, outside any transaction;
        its reason makes the job SKIPPED (final, ``failure_reason`` = the reason, event ``job.skipped``),
        None makes it QUEUED. The close and the job, whichever state, are one transaction, so a crash
        leaves a version either open (decided again later) or closed with its job. The close is a
        compare-and-set that also checks nothing was recorded in the version since ``route`` looked at it
        (then it is decided again at a later tick), so concurrent schedulers close a version once.
        """
        now = now or utcnow()
        cutoff = now - timedelta(seconds=quiet_s)
        if up_since is not None and up_since > cutoff:
            return []
        with self.transaction() as session:
            candidates = list(
                session.scalars(
                    select(Series)
                    .where(Series.closed_at.is_(None), Series.last_received_at <= cutoff)
                    .order_by(Series.id)
                ).all()
            )
        decisions = [(series, route(series) if route is not None else None) for series in candidates]
        created: list[ClosedVersion] = []
        with self.transaction() as session:
            for series, reason in decisions:
                closed = session.execute(
                    update(Series)
                    .where(
                        Series.id == series.id,
                        Series.closed_at.is_(None),
                        Series.last_received_at <= cutoff,
                        Series.instance_count == series.instance_count,
                        Series.byte_count == series.byte_count,
                    )
                    .values(closed_at=now)
                )
                if closed.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                state = JobState.QUEUED if reason is None else JobState.SKIPPED
                job = Job(
                    series_id=series.id,
                    state=state,
                    attempts=0,
                    created_at=now,
                    timings={},
                    failure_reason=reason,
                    finished_at=None if reason is None else now,
                )
                session.add(job)
                session.flush()
                self._event(
                    session, now, f"job.{state.value.lower()}", reason, job_id=job.id, series_id=series.id
                )
                created.append(ClosedVersion(job.id, series.id, series.series_instance_uid, state, reason))
        return created

    # --- jobs -----------------------------------------------------------------------------------------

    def get_job(self, job_id: int) -> Job:
        """A job with its series and deliveries loaded."""
        with self.transaction() as session:
            job = session.scalars(
                select(Job)
                .where(Job.id == job_id)
                .options(selectinload(Job.series), selectinload(Job.deliveries))
            ).first()
            if job is None:
                raise NotFound(f"job {job_id} does not exist")
            return job

    def list_jobs(
        self,
        states: Sequence[JobState] | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Newest first."""
        with self.transaction() as session:
            query = select(Job).options(selectinload(Job.series)).order_by(Job.id.desc()).limit(limit)
            if states:
                query = query.where(Job.state.in_(list(states)))
            if since is not None:
                query = query.where(Job.created_at >= since)
            return list(session.scalars(query).all())

    def job_counts(self) -> dict[JobState, int]:
        """Number of jobs in each state (every state present, zero included)."""
        with self.transaction() as session:
            rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        counts = dict.fromkeys(JobState, 0)
        counts.update({state: n for state, n in rows})
        return counts

    def _move_job(
        self, session: Session, job: Job, target: JobState, now: datetime, detail: str | None = None
    ) -> None:
        """The one place a job changes state."""
        check_job_transition(job.id, job.state, target)
        job.state = target
        if target in FINISHED_JOB_STATES:
            job.finished_at = now
            job.lease_owner = None
            job.lease_expires_at = None
        self._event(
            session, now, f"job.{target.value.lower()}", detail, job_id=job.id, series_id=job.series_id
        )

    def _load_job(self, session: Session, job_id: int) -> Job:
        job = session.get(Job, job_id, with_for_update=session.bind.dialect.name != "sqlite")  # type: ignore[union-attr]
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        return job

    def claim_job(self, owner: str, lease_s: float, now: datetime | None = None) -> Job | None:
        """Claim the oldest QUEUED job (or a RUNNING one whose lease expired) for ``owner``.

        Exactly one of several concurrent claimers wins a job. A job whose lease expired after its last
        allowed attempt is FAILED here instead of being claimed again.
        """
        now = now or utcnow()
        expires = now + timedelta(seconds=lease_s)
        while True:
            with self.transaction() as session:
                row = session.execute(
                    select(Job.id, Job.state, Job.attempts)
                    .where(
                        or_(
                            (Job.state == JobState.QUEUED)
                            & or_(Job.not_before.is_(None), Job.not_before <= now),
                            (Job.state == JobState.RUNNING) & (Job.lease_expires_at < now),
                        )
                    )
                    .order_by(Job.created_at, Job.id)
                    .limit(1)
                ).first()
                if row is None:
                    return None
                job_id, state, attempts = row
                if state == JobState.RUNNING and attempts >= self.max_attempts:
                    job = self._load_job(session, job_id)
                    if job.state == JobState.RUNNING and job.lease_expires_at and job.lease_expires_at < now:
                        job.failure_reason = (
                            f"worker stopped responding during {attempts} attempt(s); giving up"
                        )
                        self._move_job(session, job, JobState.FAILED, now, job.failure_reason)
                    continue
                won = session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == state, Job.attempts == attempts)
                    .values(
                        state=JobState.RUNNING,
                        attempts=attempts + 1,
                        lease_owner=owner,
                        lease_expires_at=expires,
                        started_at=now,
                    )
                )
                if won.rowcount != 1:  # type: ignore[attr-defined]
                    continue  # another worker was faster; look again
                detail = f"attempt {attempts + 1} by {owner}"
                if state == JobState.RUNNING:
                    detail += " (previous lease expired)"
                self._event(session, now, "job.running", detail, job_id=job_id)
            return self.get_job(job_id)

    def renew_lease(self, job_id: int, owner: str, lease_s: float, now: datetime | None = None) -> bool:
        """Extend ``owner``'s lease; False if the job is no longer RUNNING under that owner."""
        now = now or utcnow()
        with self.transaction() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.lease_owner == owner)
                .values(lease_expires_at=now + timedelta(seconds=lease_s))
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def _owned_running_job(self, session: Session, job_id: int, owner: str | None) -> Job:
        job = self._load_job(session, job_id)
        if owner is not None and job.state == JobState.RUNNING and job.lease_owner != owner:
            raise IllegalTransition(f"job {job_id}: lease is held by {job.lease_owner}, not {owner}")
        return job

    def succeed_job(
        self,
        job_id: int,
        *,
        owner: str | None,
        timings: dict[str, float],
        model_version: str,
        output_path: str,
        destinations: Sequence[str],
        now: datetime | None = None,
    ) -> Job:
        """RUNNING -> SUCCEEDED, creating one PENDING delivery per destination in the same transaction."""
        now = now or utcnow()
        with self.transaction() as session:
            job = self._owned_running_job(session, job_id, owner)
            self._move_job(session, job, JobState.SUCCEEDED, now)
            job.timings = dict(timings)
            job.model_version = model_version
            job.output_path = output_path
            job.failure_reason = None
            for name in destinations:
                self._add_delivery(session, job.id, name, now, detail=name)
        return self.get_job(job_id)

    def _add_delivery(
        self, session: Session, job_id: int, destination: str, now: datetime, detail: str
    ) -> Delivery:
        """A new PENDING delivery of ``job_id`` to ``destination``, due now, with its event."""
        delivery = Delivery(
            job_id=job_id,
            destination=destination,
            state=DeliveryState.PENDING,
            attempts=0,
            next_attempt_at=now,
            sent_instances=[],
            in_doubt_instances=[],
            created_at=now,
        )
        session.add(delivery)
        session.flush()
        self._event(session, now, "delivery.pending", detail, job_id=job_id, delivery_id=delivery.id)
        return delivery

    def fail_job(
        self, job_id: int, reason: str, *, owner: str | None = None, now: datetime | None = None
    ) -> Job:
        """RUNNING -> FAILED with a human-readable reason."""
        now = now or utcnow()
        with self.transaction() as session:
            job = self._owned_running_job(session, job_id, owner)
            job.failure_reason = reason
            self._move_job(session, job, JobState.FAILED, now, reason)
        return self.get_job(job_id)

    def release_job(self, job_id: int, *, owner: str, now: datetime | None = None) -> Job:
        """RUNNING -> QUEUED without spending an attempt (graceful stop)."""
        now = now or utcnow()
        with self.transaction() as session:
            job = self._owned_running_job(session, job_id, owner)
            self._move_job(session, job, JobState.QUEUED, now, f"released by {owner}")
            job.attempts = max(0, job.attempts - 1)
            job.lease_owner = None
            job.lease_expires_at = None
        return self.get_job(job_id)

    def requeue_job(self, job_id: int, *, owner: str, reason: str, now: datetime | None = None) -> Job:
        """RUNNING -> QUEUED after a failed attempt that may succeed on retry (the attempt is spent)."""
        now = now or utcnow()
        with self.transaction() as session:
            job = self._owned_running_job(session, job_id, owner)
            self._move_job(session, job, JobState.QUEUED, now, f"attempt {job.attempts} failed: {reason}")
            job.failure_reason = reason
            job.lease_owner = None
            job.lease_expires_at = None
        return self.get_job(job_id)

    def defer_job(
        self, job_id: int, *, owner: str, reason: str, delay_s: float, now: datetime | None = None
    ) -> Job:
        """RUNNING -> QUEUED after a transient error (disk full, out of memory): the attempt is not spent.

        The job is not claimed again before ``now + delay_s``; ``deferrals`` counts these.
        """
        now = now or utcnow()
        with self.transaction() as session:
            job = self._owned_running_job(session, job_id, owner)
            self._move_job(
                session, job, JobState.QUEUED, now, f"deferred {delay_s:.0f} s (attempt not spent): {reason}"
            )
            job.attempts = max(0, job.attempts - 1)
            job.deferrals += 1
            job.not_before = now + timedelta(seconds=delay_s)
            job.failure_reason = reason
            job.lease_owner = None
            job.lease_expires_at = None
        return self.get_job(job_id)

    def release_owned_jobs(self, agent_id: str, now: datetime | None = None) -> list[int]:
        """At start: put back every job still RUNNING under a lease of ``agent_id`` (any host or pid).

        Lease owners are ``<agent id>@<host>:<pid>``, so this never touches another agent's jobs on a shared
        ledger. The interrupted attempt stays spent (a series that kills the agent must not loop forever);
        a job whose attempts are used up is FAILED. Returns the ids of the jobs released or failed.
        """
        now = now or utcnow()
        touched: list[int] = []
        prefix = f"{agent_id}@"
        with self.transaction() as session:
            ids = session.scalars(
                select(Job.id).where(Job.state == JobState.RUNNING, Job.lease_owner.startswith(prefix))
            ).all()
            for job_id in ids:
                job = self._load_job(session, job_id)
                if job.state != JobState.RUNNING or not (job.lease_owner or "").startswith(prefix):
                    continue
                if job.attempts >= self.max_attempts:
                    job.failure_reason = f"the agent stopped during {job.attempts} attempt(s); giving up"
                    self._move_job(session, job, JobState.FAILED, now, job.failure_reason)
                else:
                    self._move_job(
                        session, job, JobState.QUEUED, now, f"released at start ({job.lease_owner} stopped)"
                    )
                    job.lease_owner = None
                    job.lease_expires_at = None
                touched.append(job_id)
        return touched

    def cancel_job(self, job_id: int, now: datetime | None = None) -> Job:
        """QUEUED/RUNNING -> CANCELLED (a running worker notices when it renews its lease)."""
        now = now or utcnow()
        with self.transaction() as session:
            job = self._load_job(session, job_id)
            self._move_job(session, job, JobState.CANCELLED, now, "cancelled by an admin")
        return self.get_job(job_id)

    def retry_job(self, job_id: int, now: datetime | None = None) -> Job:
        """FAILED/CANCELLED -> QUEUED with a fresh attempt budget."""
        now = now or utcnow()
        with self.transaction() as session:
            job = self._load_job(session, job_id)
            if job.purged_at is not None:
                raise IllegalTransition(f"job {job_id}: its files were removed by retention; cannot retry")
            self._move_job(session, job, JobState.QUEUED, now, "retried by an admin")
            job.attempts = 0
            job.deferrals = 0
            job.not_before = None
            job.failure_reason = None
            job.finished_at = None
            job.created_at = now
        return self.get_job(job_id)

    # --- deliveries -----------------------------------------------------------------------------------

    def due_deliveries(self, now: datetime | None = None, limit: int = 50) -> list[Delivery]:
        """PENDING deliveries whose next attempt time has come, oldest first."""
        now = now or utcnow()
        with self.transaction() as session:
            return list(
                session.scalars(
                    select(Delivery)
                    .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
                    .order_by(Delivery.next_attempt_at, Delivery.id)
                    .limit(limit)
                ).all()
            )

    def claim_delivery(self, delivery: Delivery, lease_s: float, now: datetime | None = None) -> bool:
        """Take the due ``delivery`` for one sending attempt (compare-and-set on attempts and due time).

        Pushes its due time ``lease_s`` ahead, so another agent sharing the ledger skips it, and so a
        crash mid-send makes it due again after the lease. False when someone else took it first.
        """
        now = now or utcnow()
        with self.transaction() as session:
            result = session.execute(
                update(Delivery)
                .where(
                    Delivery.id == delivery.id,
                    Delivery.state == DeliveryState.PENDING,
                    Delivery.attempts == delivery.attempts,
                    Delivery.next_attempt_at == delivery.next_attempt_at,
                )
                .values(next_attempt_at=now + timedelta(seconds=lease_s))
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def _locked_delivery(self, session: Session, delivery_id: int) -> Delivery:
        delivery = session.get(
            Delivery,
            delivery_id,
            with_for_update=session.bind.dialect.name != "sqlite",  # type: ignore[union-attr]
        )
        if delivery is None:
            raise NotFound(f"delivery {delivery_id} does not exist")
        return delivery

    def mark_in_doubt(self, delivery_id: int, sop_instance_uid: str) -> None:
        """Note, before its C-STORE goes out, that ``sop_instance_uid`` is being sent: until its answer is
        on record (:meth:`record_sent_instance`, :meth:`record_not_stored`), a crash leaves it *in doubt*,
        and the next attempt asks the destination about it before sending it again."""
        with self.transaction() as session:
            delivery = self._locked_delivery(session, delivery_id)
            if sop_instance_uid not in delivery.in_doubt_instances:
                delivery.in_doubt_instances = sorted({*delivery.in_doubt_instances, sop_instance_uid})

    def record_sent_instance(self, delivery_id: int, sop_instance_uid: str) -> None:
        """Note at once that the destination stored ``sop_instance_uid`` (its C-STORE Success arrived).

        Called per instance while an association is still open, so a crash mid-delivery never sends an
        instance again that the destination already acknowledged. The instance is no longer in doubt.
        """
        with self.transaction() as session:
            delivery = self._locked_delivery(session, delivery_id)
            if sop_instance_uid not in delivery.sent_instances:
                delivery.sent_instances = sorted({*delivery.sent_instances, sop_instance_uid})
            _drop_in_doubt(delivery, {sop_instance_uid})

    def record_not_stored(self, delivery_id: int, sop_instance_uid: str) -> None:
        """The destination answered the C-STORE of ``sop_instance_uid`` with a failure status: it does not
        hold it, so it is no longer in doubt (the next attempt sends it without asking)."""
        with self.transaction() as session:
            delivery = self._locked_delivery(session, delivery_id)
            _drop_in_doubt(delivery, {sop_instance_uid})

    def settle_in_doubt(
        self,
        delivery_id: int,
        *,
        held: Sequence[str],
        detail: str,
        now: datetime | None = None,
        settled: Sequence[str] = (),
    ) -> Delivery:
        """Record what became of the instances in doubt before an attempt sends anything: ``held`` (the
        destination answered that it holds them) are sent and never sent again; the others of ``settled``
        (the sender decided to send them again) are no longer in doubt either: their C-STORE marks them
        again (:meth:`mark_in_doubt`), so only a new interruption puts them back in doubt. Instances in
        neither stay in doubt. ``detail`` (no UIDs) goes to a ``delivery.in_doubt`` event."""
        now = now or utcnow()
        with self.transaction() as session:
            delivery = self._locked_delivery(session, delivery_id)
            found = set(held)
            delivery.sent_instances = sorted(set(delivery.sent_instances) | found)
            _drop_in_doubt(delivery, found | set(settled))
            self._event(
                session, now, "delivery.in_doubt", detail, job_id=delivery.job_id, delivery_id=delivery.id
            )
            return delivery

    def list_deliveries(self, job_id: int | None = None) -> list[Delivery]:
        with self.transaction() as session:
            query = select(Delivery).order_by(Delivery.id)
            if job_id is not None:
                query = query.where(Delivery.job_id == job_id)
            return list(session.scalars(query).all())

    def delivery_counts(self) -> dict[DeliveryState, int]:
        with self.transaction() as session:
            rows = session.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
        counts = dict.fromkeys(DeliveryState, 0)
        counts.update({state: n for state, n in rows})
        return counts

    def record_delivery_attempt(
        self,
        delivery_id: int,
        *,
        sent_instances: Sequence[str],
        status: int | None,
        error: str | None,
        outcome: DeliveryState,
        next_attempt_at: datetime | None = None,
        now: datetime | None = None,
    ) -> Delivery:
        """Record one sending attempt: instances newly stored, the last status, and the outcome.

        ``outcome`` PENDING needs ``next_attempt_at`` (the back-off); DELIVERED and FAILED finish it.
        """
        now = now or utcnow()
        with self.transaction() as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                raise NotFound(f"delivery {delivery_id} does not exist")
            if delivery.state != DeliveryState.PENDING:
                raise IllegalTransition(f"delivery {delivery_id} is {delivery.state.value}, not PENDING")
            delivery.attempts += 1
            delivery.sent_instances = sorted(set(delivery.sent_instances) | set(sent_instances))
            _drop_in_doubt(delivery, set(delivery.sent_instances))
            delivery.last_status = status
            delivery.last_error = error
            if outcome == DeliveryState.PENDING:
                if next_attempt_at is None:
                    raise ValueError("a PENDING outcome needs next_attempt_at")
                delivery.next_attempt_at = next_attempt_at
                self._event(
                    session, now, "delivery.retry", error, job_id=delivery.job_id, delivery_id=delivery.id
                )
            else:
                check_delivery_transition(delivery.id, delivery.state, outcome)
                delivery.state = outcome
                delivery.finished_at = now
                self._event(
                    session,
                    now,
                    f"delivery.{outcome.value.lower()}",
                    error,
                    job_id=delivery.job_id,
                    delivery_id=delivery.id,
                )
            return delivery

    def resend_delivery(self, delivery_id: int, now: datetime | None = None) -> Delivery:
        """DELIVERED/FAILED/CANCELLED -> PENDING with every instance to be sent again (an admin's re-send,
        e.g. after the destination lost them); raises :class:`IllegalTransition` for a PENDING one or a
        job whose files retention removed."""
        now = now or utcnow()
        with self.transaction() as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                raise NotFound(f"delivery {delivery_id} does not exist")
            check_delivery_transition(delivery.id, delivery.state, DeliveryState.PENDING)
            self._pend_again(session, delivery, now, "re-send of every instance requested by an admin")
            return delivery

    def send_job_to(self, job_id: int, destination: str, now: datetime | None = None) -> Delivery:
        """Send a SUCCEEDED job's results to ``destination``: a new PENDING delivery, or the existing one
        to that destination re-sent in full (see :meth:`resend_delivery`). One event either way."""
        now = now or utcnow()
        with self.transaction() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFound(f"job {job_id} does not exist")
            if job.state != JobState.SUCCEEDED:
                raise IllegalTransition(f"job {job_id} is {job.state.value}; it has no results to send")
            delivery = session.scalars(
                select(Delivery).where(Delivery.job_id == job_id, Delivery.destination == destination)
            ).first()
            if delivery is not None:
                check_delivery_transition(delivery.id, delivery.state, DeliveryState.PENDING)
                self._pend_again(session, delivery, now, f"sent again to {destination} by an admin")
                return delivery
            if job.purged_at is not None:
                raise IllegalTransition(f"job {job_id}: its files were removed by retention")
            return self._add_delivery(session, job.id, destination, now, f"sent to {destination} by an admin")

    def _pend_again(self, session: Session, delivery: Delivery, now: datetime, detail: str) -> None:
        if delivery.job.purged_at is not None:
            raise IllegalTransition(
                f"delivery {delivery.id}: job {delivery.job_id}'s files were removed by retention"
            )
        delivery.state = DeliveryState.PENDING
        delivery.attempts = 0
        delivery.sent_instances = []
        delivery.in_doubt_instances = []
        delivery.next_attempt_at = now
        delivery.finished_at = None
        self._event(session, now, "delivery.pending", detail, job_id=delivery.job_id, delivery_id=delivery.id)

    def retry_delivery(self, delivery_id: int, now: datetime | None = None) -> Delivery:
        """FAILED/CANCELLED -> PENDING, due now, with a fresh attempt budget."""
        now = now or utcnow()
        with self.transaction() as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                raise NotFound(f"delivery {delivery_id} does not exist")
            if delivery.state == DeliveryState.DELIVERED:  # a retry resumes; a delivered one needs a re-send
                raise IllegalTransition(
                    f"delivery {delivery_id}: cannot go from DELIVERED to PENDING by a retry "
                    "(a re-send sends every instance again: deliveries resend)"
                )
            check_delivery_transition(delivery.id, delivery.state, DeliveryState.PENDING)
            if delivery.job.purged_at is not None:
                raise IllegalTransition(
                    f"delivery {delivery_id}: job {delivery.job_id}'s files were removed by retention"
                )
            delivery.state = DeliveryState.PENDING
            delivery.attempts = 0
            delivery.next_attempt_at = now
            delivery.finished_at = None
            self._event(
                session,
                now,
                "delivery.pending",
                "retried by an admin",
                job_id=delivery.job_id,
                delivery_id=delivery.id,
            )
            return delivery

    # --- retention ------------------------------------------------------------------------------------

    def purge_candidates(self, finished_before: datetime | None = None) -> list[Job]:
        """Finished, not yet purged jobs without a PENDING delivery, oldest finished first.

        Series and deliveries are loaded. ``finished_before`` keeps only jobs finished before then.
        """
        pending = select(Delivery.id).where(
            Delivery.job_id == Job.id, Delivery.state == DeliveryState.PENDING
        )
        with self.transaction() as session:
            query = (
                select(Job)
                .where(Job.state.in_(list(FINISHED_JOB_STATES)), Job.purged_at.is_(None), ~pending.exists())
                .options(selectinload(Job.series), selectinload(Job.deliveries))
                .order_by(Job.finished_at, Job.id)
            )
            if finished_before is not None:
                query = query.where(Job.finished_at < finished_before)
            return list(session.scalars(query).all())

    def series_versions(self, series_instance_uid: str) -> list[Series]:
        """Every version of a series (they share one spool folder), with their jobs loaded."""
        with self.transaction() as session:
            return list(
                session.scalars(
                    select(Series)
                    .where(Series.series_instance_uid == series_instance_uid)
                    .options(selectinload(Series.jobs))
                    .order_by(Series.version)
                ).all()
            )

    def mark_purged(self, job_id: int, now: datetime | None = None) -> bool:
        """Record that retention removes a finished job's files; False if the job is no longer eligible.

        A compare-and-set: the job must still be finished, unpurged and without a PENDING delivery, so an
        admin's retry in the same instant wins over retention.
        """
        now = now or utcnow()
        pending = select(Delivery.id).where(
            Delivery.job_id == job_id, Delivery.state == DeliveryState.PENDING
        )
        with self.transaction() as session:
            result = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.state.in_(list(FINISHED_JOB_STATES)),
                    Job.purged_at.is_(None),
                    ~pending.exists(),
                )
                .values(purged_at=now)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            self._event(session, now, "job.purged", "files removed by retention", job_id=job_id)
            return True
