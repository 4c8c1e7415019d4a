"""Load: 8 associations at once with 4 series each, and peers past ``dicom.max_associations``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from storage import DeliveryState, JobState
from tests.reliability.suite_support import (
    LedgerView,
    SuiteAgent,
    make_agent,
    make_series,
    start_storescp,
    storescu,
    wait_for,
    write_report,
)

pytestmark = pytest.mark.integration


def test_eight_associations_with_four_series_each(tmp_path: Path) -> None:
    """Everything acknowledged is kept; every series gets one job and one delivered result (SCP threads,
    quiet timer, worker and sender share the SQLite ledger: no deadlock, no 'database is locked')."""
    dest = start_storescp(tmp_path / "dest")
    agent = make_agent(
        tmp_path / "agent",
        destinations=[("dest", "DEST", dest.port)],
        dicom={"max_associations": 10, "stable_age_s": 2.0},
        engine_delay_s=0.0,
    )
    series = make_series(tmp_path / "series", 32, slices=10, size=24, seed=500)
    agent.start()
    t0 = time.monotonic()
    try:
        runs = [
            storescu(agent.dicom_port, [f for s in series[4 * n : 4 * n + 4] for f in s.files])
            for n in range(8)
        ]
        codes = [run.wait(timeout_s=180) for run in runs]
        assert codes == [0] * 8, [run.output[-500:] for run in runs if run.process.returncode]
        assert sum(len(run.acknowledged()) for run in runs) == 32 * 10
        ledger = agent.ledger()
        uids = [s.series_uid for s in series]
        wait_for(
            lambda: LedgerView.read(ledger, uids).all_versions_finished(), 180, 1.0, what="32 finished jobs"
        )
        view = LedgerView.read(ledger, uids)
        assert all(len(v) == 1 and v[0][2] == 10 for v in view.versions.values()), view.versions
        states = [jobs[0].state for jobs in view.jobs_by_series.values()]
        assert states == [JobState.SUCCEEDED] * 32
        wait_for(
            lambda: [d.state for d in ledger.list_deliveries()] == [DeliveryState.DELIVERED] * 32,
            120,
            1.0,
            what="32 deliveries",
        )
        held = dest.held()
        assert len(held) == 64 and set(held.values()) == {1}
        log = agent.log_text()
        assert "database is locked" not in log and "Traceback" not in log
        seconds = round(time.monotonic() - t0, 1)
        row = {"associations": 8, "series": 32, "instances": 320, "lost": 0, "results_held_twice": 0}
        write_report("load", [{**row, "seconds": seconds}])
        ledger.close()
    finally:
        agent.kill()
        dest.stop()


def test_peers_past_the_association_limit_are_refused_cleanly(
    tmp_path: Path, limit_agent: SuiteAgent
) -> None:
    """Six peers at once against ``max_associations = 3`` (the shared agent of conftest.py): each is served
    or refused, none hangs, the agent keeps serving afterwards. (How many are admitted is issue 16 item 3;
    counted, not asserted.)"""
    agent = limit_agent
    series = make_series(tmp_path / "series", 6, slices=24, size=64, seed=600)
    t0 = time.monotonic()
    runs = [storescu(agent.dicom_port, s.files) for s in series]
    codes = [run.wait(timeout_s=60) for run in runs]  # raises TimeoutExpired on a hung peer
    elapsed = time.monotonic() - t0
    admitted = [run for run in runs if "Association Accepted" in run.output]
    refused = [run for run in runs if "Association Rejected" in run.output]
    assert len(admitted) + len(refused) == 6, [run.output[-300:] for run in runs]
    for run in admitted:
        assert run.process.returncode == 0 and len(run.acknowledged()) == 24
    for run in refused:
        assert run.process.returncode != 0
    assert codes.count(0) == len(admitted)
    # still serving after the burst
    again = storescu(agent.dicom_port, series[0].files)
    assert again.wait(timeout_s=60) == 0
    row = {"peers": 6, "max_associations": 3, "admitted": len(admitted), "refused": len(refused)}
    write_report("load", [{**row, "hung": 0, "seconds": round(elapsed, 1)}])
