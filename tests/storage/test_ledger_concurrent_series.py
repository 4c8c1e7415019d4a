"""One new series arriving over several associations at once (a PACS sending with parallel threads):
every first instance lands in the same version 1, none is refused and none is left out of the counts
(found by the benchmark suite: the second association's insert of version 1 hit the UNIQUE constraint and
the C-STORE got 0xC211; then counts read in Python and written back overwrote each other)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import select, text

from storage import Ledger
from storage.models import Series

ASSOCIATIONS = 4
SERIES = 25


def _send_first_instances_together(ledger: Ledger) -> list[BaseException]:
    errors: list[BaseException] = []
    for n in range(SERIES):
        start = threading.Barrier(ASSOCIATIONS)

        def store(thread: int, series: str = f"1.2.3.{n}", start: threading.Barrier = start) -> None:
            start.wait()
            try:
                ledger.record_instance("1.2.3", series, 100, f"spool/{series}",
                                       sop_instance_uid=f"{series}.{thread}", sha256=f"{thread:064x}")
            except BaseException as exc:  # noqa: BLE001 - collected and reported by the test
                errors.append(exc)

        threads = [threading.Thread(target=store, args=(t,)) for t in range(ASSOCIATIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return errors


def _check(ledger: Ledger) -> None:
    errors = _send_first_instances_together(ledger)
    assert errors == []
    with ledger.transaction() as session:
        rows = session.scalars(select(Series)).all()
        assert len(rows) == SERIES  # one version per series, not one per association
        counts = {(r.version, r.instance_count, r.byte_count) for r in rows}
        assert counts == {(1, ASSOCIATIONS, 100 * ASSOCIATIONS)}  # no count overwritten by another


def test_first_instances_of_a_new_series_over_parallel_associations_sqlite(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    ledger.upgrade()
    try:
        _check(ledger)
    finally:
        ledger.close()


@pytest.mark.postgres
def test_first_instances_of_a_new_series_over_parallel_associations_postgresql() -> None:
    ledger = Ledger(os.environ["SPINE_AGENT_TEST_PG_URL"])
    with ledger.engine.begin() as conn:  # a fresh schema
        conn.execute(
            text("DROP TABLE IF EXISTS event, delivery, job, series_instance, series, alembic_version"
                 " CASCADE")
        )
    ledger.upgrade()
    try:
        _check(ledger)
    finally:
        ledger.close()
