"""Every migration can be undone: ``downgrade`` step by step to the empty database and back to head, on
SQLite and (where SPINE_AGENT_TEST_PG_URL is set) PostgreSQL, with the ledger's rows kept across the
steps that do not remove their table. An admin rolling back a release (``alembic downgrade``) gets the
schema the older agent expects, and upgrading again loses nothing the older schema held."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text

from storage import Ledger
from storage.migrate import alembic_config, current_revision
from tests.storage.test_migrations_match_models import _differences, empty_pg_ledger

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

#: What each revision's schema has that the one below it lacks (table -> columns; "*": the whole table).
ADDED = {
    "0003": {"delivery": {"in_doubt_instances"}},
    "0002": {"series_instance": {"*"}, "job": {"not_before", "deferrals"}},
}
TABLES_0001 = {"series", "job", "delivery", "event"}


def _schema(ledger: Ledger) -> dict[str, set[str]]:
    found = inspect(ledger.engine)
    tables = [t for t in found.get_table_names() if t != "alembic_version"]
    return {t: {c["name"] for c in found.get_columns(t)} for t in tables}


def _fill(ledger: Ledger) -> None:
    """One received series, its succeeded job and its delivery, as the agent leaves them."""
    ledger.record_instance("1.2.3", "1.2.3.4", 100, "incoming/1.2.3/1.2.3.4", T0)
    [job_id] = ledger.queue_quiet_series(30, now=T0 + timedelta(seconds=31))
    ledger.claim_job("w", 60)
    ledger.succeed_job(
        job_id, owner="w", timings={}, model_version="v", output_path="outgoing/1", destinations=["pacs"]
    )


def _count(ledger: Ledger, table: str) -> int:
    with ledger.engine.connect() as connection:
        return int(connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def _round_trip(ledger: Ledger) -> None:
    cfg = alembic_config(ledger.engine)
    ledger.upgrade()
    _fill(ledger)
    head = _schema(ledger)
    assert TABLES_0001 | {"series_instance"} <= set(head)
    for revision, below in (("0003", "0002"), ("0002", "0001")):
        assert current_revision(ledger.engine) == revision
        command.downgrade(cfg, "-1")
        assert current_revision(ledger.engine) == below
        schema = _schema(ledger)
        for table, columns in ADDED[revision].items():
            if columns == {"*"}:
                assert table not in schema
            else:
                assert not columns & schema[table], (table, columns & schema[table])
        # the rows of the tables that stay are kept
        assert (_count(ledger, "series"), _count(ledger, "job"), _count(ledger, "delivery")) == (1, 1, 1)
    command.downgrade(cfg, "base")
    assert current_revision(ledger.engine) is None and _schema(ledger) == {}
    ledger.upgrade()
    assert _schema(ledger) == head and _differences(ledger) == []
    if ledger.engine.dialect.name == "sqlite":  # the migration turned foreign keys off; they are on again
        with ledger.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1


def test_every_migration_downgrades_and_upgrades_again_on_sqlite(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        _round_trip(ledger)
    finally:
        ledger.close()


def test_upgrading_after_a_downgrade_keeps_the_rows(tmp_path: Path) -> None:
    """Down to 0001 and up again: the series, job and delivery rows are still there, with the new
    columns at their defaults (nothing in doubt, no deferrals)."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        ledger.upgrade()
        _fill(ledger)
        command.downgrade(alembic_config(ledger.engine), "0001")
        ledger.upgrade()
        [delivery] = ledger.list_deliveries()
        assert (delivery.destination, delivery.in_doubt_instances) == ("pacs", [])
        assert [j.deferrals for j in ledger.list_jobs()] == [0]
    finally:
        ledger.close()


@pytest.mark.postgres
def test_every_migration_downgrades_and_upgrades_again_on_postgresql() -> None:
    ledger = empty_pg_ledger()
    try:
        _round_trip(ledger)
    finally:
        ledger.close()
