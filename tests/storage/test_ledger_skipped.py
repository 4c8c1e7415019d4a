"""SKIPPED: a job routing left out, recorded with its reason in the transaction that closes the version.
On SQLite always, on PostgreSQL where SPINE_AGENT_TEST_PG_URL is set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from storage import (
    FINISHED_JOB_STATES,
    JOB_TRANSITIONS,
    IllegalTransition,
    JobState,
    Ledger,
    Series,
)

T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
QUIET = T0 + timedelta(minutes=1)
REASON = "skipped: 12 slices < routing.min_slices 20"
TABLES = "event, delivery, job, series_instance, series, alembic_version"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "sqlite":
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    else:
        ledger = Ledger(os.environ["SPINE_AGENT_TEST_PG_URL"])
        with ledger.engine.begin() as conn:  # a fresh schema per test
            conn.execute(text(f"DROP TABLE IF EXISTS {TABLES} CASCADE"))
            conn.execute(text("DROP FUNCTION IF EXISTS refuse_skipped() CASCADE"))
    ledger.upgrade()
    yield ledger
    if ledger.engine.dialect.name == "postgresql":
        with ledger.engine.begin() as conn:
            conn.execute(text("DROP FUNCTION IF EXISTS refuse_skipped() CASCADE"))
    ledger.close()


def receive(ledger: Ledger, series_uid: str, count: int = 1, at: datetime = T0, first: int = 0) -> None:
    for n in range(first, first + count):
        ledger.record_instance(
            "1.2.9",
            series_uid,
            100,
            f"incoming/1.2.9/{series_uid}",
            at,
            sop_instance_uid=f"{series_uid}.{n}",
            sha256=f"{n:064x}",
        )


def by_uid(reasons: dict[str, str | None]):  # type: ignore[no-untyped-def]
    def route(series: Series) -> str | None:
        return reasons[series.series_instance_uid]

    return route


def test_skipped_is_terminal_in_the_state_machine() -> None:
    assert JOB_TRANSITIONS[JobState.SKIPPED] == frozenset()
    assert all(JobState.SKIPPED not in targets for targets in JOB_TRANSITIONS.values())
    assert JobState.SKIPPED in FINISHED_JOB_STATES


def test_a_skipped_version_gets_a_final_job_with_its_reason(any_ledger: Ledger) -> None:
    ledger = any_ledger
    receive(ledger, "1.2.9.1", 12)
    receive(ledger, "1.2.9.2", 30)
    closed = ledger.close_quiet_series(30, QUIET, route=by_uid({"1.2.9.1": REASON, "1.2.9.2": None}))

    assert [(c.series_instance_uid, c.state, c.reason) for c in closed] == [
        ("1.2.9.1", JobState.SKIPPED, REASON),
        ("1.2.9.2", JobState.QUEUED, None),
    ]
    skipped, queued = (ledger.get_job(c.job_id) for c in closed)
    assert skipped.state == JobState.SKIPPED and skipped.failure_reason == REASON
    assert skipped.finished_at == QUIET and skipped.attempts == 0 and skipped.started_at is None
    assert skipped.series.closed_at == QUIET and skipped.deliveries == []
    assert queued.state == JobState.QUEUED and queued.failure_reason is None and queued.finished_at is None
    assert [(e.kind, e.detail) for e in ledger.events(job_id=skipped.id)] == [("job.skipped", REASON)]
    assert [e.kind for e in ledger.events(job_id=queued.id)] == ["job.queued"]
    assert ledger.job_counts()[JobState.SKIPPED] == 1 and ledger.job_counts()[JobState.QUEUED] == 1
    assert [j.id for j in ledger.list_jobs([JobState.SKIPPED])] == [skipped.id]

    # Never run: the worker's claim takes the queued job only, then finds nothing.
    claimed = ledger.claim_job("w1", 60, now=QUIET + timedelta(seconds=1))
    assert claimed is not None and claimed.id == queued.id
    assert ledger.claim_job("w2", 60, now=QUIET + timedelta(seconds=2)) is None
    # Never retried or cancelled, and trying changes nothing.
    with pytest.raises(IllegalTransition, match=f"job {skipped.id}: cannot go from SKIPPED to QUEUED"):
        ledger.retry_job(skipped.id)
    with pytest.raises(IllegalTransition, match="cannot go from SKIPPED to CANCELLED"):
        ledger.cancel_job(skipped.id)
    again = ledger.get_job(skipped.id)
    assert (again.state, again.failure_reason, again.attempts) == (JobState.SKIPPED, REASON, 0)
    assert len(ledger.events(job_id=skipped.id)) == 1
    # Each version is decided once.
    assert ledger.close_quiet_series(30, QUIET + timedelta(hours=1), route=by_uid({})) == []


def test_the_queue_wrapper_returns_queued_jobs_only_and_routes_nothing(any_ledger: Ledger) -> None:
    receive(any_ledger, "1.2.9.3", 2)
    (job_id,) = any_ledger.queue_quiet_series(30, QUIET)
    assert any_ledger.get_job(job_id).state == JobState.QUEUED


def test_a_later_version_is_decided_on_its_own(any_ledger: Ledger) -> None:
    ledger = any_ledger
    receive(ledger, "1.2.9.4", 12)
    (first,) = ledger.close_quiet_series(30, QUIET, route=lambda s: REASON)
    receive(ledger, "1.2.9.4", 1, at=QUIET + timedelta(seconds=5), first=12)  # opens version 2
    (second,) = ledger.close_quiet_series(30, QUIET + timedelta(minutes=2), route=lambda s: None)
    assert (first.state, second.state) == (JobState.SKIPPED, JobState.QUEUED)
    assert ledger.get_job(second.job_id).series.version == 2


def test_an_instance_arriving_while_the_rules_look_defers_the_decision(any_ledger: Ledger) -> None:
    """The close is a compare-and-set on what the rules saw: a version that grew meanwhile stays open."""
    ledger = any_ledger
    receive(ledger, "1.2.9.5", 12)
    seen: list[int] = []

    def route_while_an_instance_arrives(series: Series) -> str | None:
        seen.append(series.instance_count)
        if len(seen) == 1:  # the SCP records one more instance (with an old clock) while routing reads
            ledger.record_instance(
                "1.2.9",
                "1.2.9.5",
                100,
                "incoming/1.2.9/1.2.9.5",
                T0 + timedelta(seconds=1),
                sop_instance_uid="1.2.9.5.99",
                sha256="f" * 64,
            )
            return REASON
        return None

    assert ledger.close_quiet_series(30, QUIET, route=route_while_an_instance_arrives) == []
    assert ledger.open_series_count() == 1 and ledger.list_jobs() == []
    (closed,) = ledger.close_quiet_series(30, QUIET, route=route_while_an_instance_arrives)
    assert seen == [12, 13] and closed.state == JobState.QUEUED


def test_rules_that_raise_leave_the_version_open(any_ledger: Ledger) -> None:
    receive(any_ledger, "1.2.9.6", 3)

    def broken(series: Series) -> str | None:
        raise RuntimeError("rules broke")

    with pytest.raises(RuntimeError, match="rules broke"):
        any_ledger.close_quiet_series(30, QUIET, route=broken)
    assert any_ledger.open_series_count() == 1 and any_ledger.list_jobs() == []


def _refuse_skipped_jobs(ledger: Ledger) -> None:
    """A trigger that makes the database refuse a SKIPPED job row: a crash between close and job."""
    with ledger.engine.begin() as conn:
        if ledger.engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_skipped BEFORE INSERT ON job WHEN NEW.state = 'SKIPPED' "
                    "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_skipped() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.state = 'SKIPPED' THEN RAISE EXCEPTION 'injected failure'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_skipped BEFORE INSERT ON job "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_skipped()"
                )
            )


def test_the_close_and_the_skipped_job_are_one_transaction(any_ledger: Ledger) -> None:
    """If the job row cannot be written, its version is not closed either: no version is ever left closed
    without a job (neither queued nor skipped), and the next tick decides it again."""
    ledger = any_ledger
    receive(ledger, "1.2.9.7", 30)
    receive(ledger, "1.2.9.8", 12)
    _refuse_skipped_jobs(ledger)
    route = by_uid({"1.2.9.7": None, "1.2.9.8": REASON})

    with pytest.raises(DBAPIError, match="injected failure"):
        ledger.close_quiet_series(30, QUIET, route=route)
    for uid in ("1.2.9.7", "1.2.9.8"):
        for version in ledger.series_versions(uid):
            assert (version.closed_at is None) == (version.jobs == []), uid
    (skipped_version,) = ledger.series_versions("1.2.9.8")
    assert skipped_version.closed_at is None and skipped_version.jobs == []
    assert not [e for e in ledger.events() if e.kind == "job.skipped"]

    with ledger.engine.begin() as conn:
        conn.execute(
            text("DROP TRIGGER refuse_skipped" + (" ON job" if conn.dialect.name != "sqlite" else ""))
        )
    ledger.close_quiet_series(30, QUIET + timedelta(seconds=1), route=route)
    assert ledger.open_series_count() == 0
    assert sorted(j.state.value for j in ledger.list_jobs()) == ["QUEUED", "SKIPPED"]


def test_skipped_jobs_are_left_to_retention_like_other_finished_jobs(any_ledger: Ledger) -> None:
    receive(any_ledger, "1.2.9.9", 2)
    (closed,) = any_ledger.close_quiet_series(30, QUIET, route=lambda s: REASON)
    assert [j.id for j in any_ledger.purge_candidates(finished_before=QUIET + timedelta(seconds=1))] == [
        closed.job_id
    ]
    assert any_ledger.mark_purged(closed.job_id)
