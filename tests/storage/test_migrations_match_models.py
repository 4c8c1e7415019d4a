"""The migrations build exactly the schema the models describe (alembic's autogenerate comparison).

A column, index, constraint or type added to ``storage/models.py`` without a migration (or the other way
round) leaves a difference here, on SQLite and, where SPINE_AGENT_TEST_PG_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from storage import Ledger
from storage.models import Base


def _differences(ledger: Ledger) -> list[Any]:
    with ledger.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_sqlite_schema_from_migrations_matches_the_models(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        ledger.upgrade()
        assert _differences(ledger) == []
    finally:
        ledger.close()


def test_the_comparison_sees_a_missing_migration(tmp_path: Path) -> None:
    """The check itself works: drop a column the models have and it is reported."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        ledger.upgrade()
        with ledger.engine.begin() as connection:
            connection.execute(text("ALTER TABLE delivery DROP COLUMN last_error"))
        diffs = _differences(ledger)
        assert [(d[0], d[3].name) for d in diffs] == [("add_column", "last_error")]
    finally:
        ledger.close()


def empty_pg_ledger() -> Ledger:
    """The PostgreSQL test ledger (SPINE_AGENT_TEST_PG_URL) with every table dropped, not migrated."""
    ledger = Ledger(os.environ["SPINE_AGENT_TEST_PG_URL"])
    with ledger.engine.begin() as conn:
        tables = "event, delivery, job, series_instance, series, alembic_version"
        conn.execute(text(f"DROP TABLE IF EXISTS {tables} CASCADE"))
    return ledger


@pytest.mark.postgres
def test_postgresql_schema_from_migrations_matches_the_models() -> None:
    ledger = empty_pg_ledger()
    try:
        ledger.upgrade()
        assert _differences(ledger) == []
    finally:
        ledger.close()
