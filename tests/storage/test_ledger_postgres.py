"""The same ledger code on PostgreSQL (several agents sharing one queue). Needs SPINE_AGENT_TEST_PG_URL,
e.g. postgresql+psycopg://spine:spine@127.0.0.1/spine_test (.ci/run starts such a server)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import text

from storage import DeliveryState, IllegalTransition, JobState, Ledger
from tests.storage.test_ledger import T0, claim_in_processes, queued_job

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url() -> str:
    return os.environ["SPINE_AGENT_TEST_PG_URL"]


@pytest.fixture
def pg_ledger(pg_url: str) -> Iterator[Ledger]:
    ledger = Ledger(pg_url)
    with ledger.engine.begin() as conn:  # a fresh schema per test
        conn.execute(
            text(
                "DROP TABLE IF EXISTS event, delivery, job, series_instance, series, alembic_version CASCADE"
            )
        )
    ledger.upgrade()
    yield ledger
    ledger.close()


def test_migrations_and_life_cycle_on_postgresql(pg_ledger: Ledger) -> None:
    job_id = queued_job(pg_ledger)
    job = pg_ledger.claim_job("w1", 60, now=T0 + timedelta(minutes=1))
    assert job is not None and job.state == JobState.RUNNING
    done = pg_ledger.succeed_job(
        job_id,
        owner="w1",
        timings={"stage1": 1.0},
        model_version="v",
        output_path="o",
        destinations=["pacs"],
        now=T0 + timedelta(minutes=2),
    )
    assert done.state == JobState.SUCCEEDED and done.created_at.tzinfo is not None
    with pytest.raises(IllegalTransition):
        pg_ledger.retry_job(job_id)
    (delivery,) = pg_ledger.due_deliveries(now=T0 + timedelta(minutes=2))
    assert pg_ledger.claim_delivery(delivery, 300, now=T0 + timedelta(minutes=2))
    assert not pg_ledger.claim_delivery(delivery, 300, now=T0 + timedelta(minutes=2))
    recorded = pg_ledger.record_delivery_attempt(
        delivery.id, sent_instances=["1.2.3"], status=0, error=None, outcome=DeliveryState.DELIVERED
    )
    assert recorded.state == DeliveryState.DELIVERED


def test_two_processes_claiming_on_postgresql_never_share_a_job(pg_ledger: Ledger, pg_url: str) -> None:
    for i in range(40):
        pg_ledger.record_instance("1.2", f"1.2.{i}", 1, "p", now=T0)
    job_ids = pg_ledger.queue_quiet_series(1, now=T0 + timedelta(seconds=5))
    wins = claim_in_processes(pg_url)
    claimed = [job_id for won in wins for job_id in won]
    assert sorted(claimed) == sorted(job_ids)
    assert all(len(won) >= 1 for won in wins), f"one process won every job: {[len(w) for w in wins]}"
