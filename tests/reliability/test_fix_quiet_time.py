"""Issue 16 (2): an interrupted receive must not deliver results on part of a series, or extra results.

* Quiet time counts only while the agent is up: after a restart an open series waits ``stable_age_s``
  again, so the PACS's re-send lands in the same version.
* Identical re-sent instances (same SOP Instance UID, same bytes) neither count twice nor open a version.
* A job reads exactly the instances of its version (and of earlier ones), not what arrived later.

``spine-agent serve`` runs as a process (stand-in engine that records what it was given), DCMTK storescu
sends, SIGKILL kills.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from storage import JobState, Ledger
from tests.agent.service.conftest import write_series
from tests.reliability.suite_support import make_agent, store, wait_for

pytestmark = pytest.mark.integration

FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def _finished(ledger: Ledger, count: int) -> bool:
    jobs = ledger.list_jobs()
    return len(jobs) == count and all(j.state in FINISHED for j in jobs)


def test_restart_restarts_the_quiet_clock_and_identical_resends_add_nothing(tmp_path: Path) -> None:
    stable_age_s = 4.0
    agent = make_agent(tmp_path / "agent", dicom={"stable_age_s": stable_age_s})
    series = write_series(tmp_path / "series", slices=60)
    ledger = Ledger(agent.ledger_url)
    try:
        agent.start()
        store(agent.dicom_port, series.files[:30])  # the first half, then the agent dies
        agent.kill()
        time.sleep(stable_age_s + 1.5)  # longer than the quiet time, but the agent was down

        agent.start()
        time.sleep(2.0)
        assert ledger.list_jobs() == [], "a series cut off by the crash was queued at once after the restart"
        assert "quiet time (4 s) restarts now" in agent.log_text()

        store(agent.dicom_port, series.files)  # the PACS sends the whole series again
        wait_for(lambda: _finished(ledger, 1), 60, what="the job\n" + agent.log_tail())
        [version] = ledger.series_versions(series.series_uid)
        assert version.instance_count == 60
        assert [call["slices"] for call in agent.engine_calls()] == [60]

        store(agent.dicom_port, series.files)  # and once more, after the job ran
        time.sleep(stable_age_s + 2.5)
        assert len(ledger.series_versions(series.series_uid)) == 1, "an identical re-send opened a version"
        assert len(ledger.list_jobs()) == 1
        assert len(agent.engine_calls()) == 1
    finally:
        agent.kill()
        ledger.close()


def test_a_job_reads_exactly_the_instances_of_its_version(tmp_path: Path) -> None:
    agent = make_agent(
        tmp_path / "agent", dicom={"stable_age_s": 1.5}, ledger={"lease_s": 900.0}, engine_delay_s=6.0
    )
    first = write_series(tmp_path / "a", slices=12)
    second = write_series(tmp_path / "b", slices=18, seed=5)
    ledger = Ledger(agent.ledger_url)
    try:
        agent.start()
        store(agent.dicom_port, first.files)
        wait_for(lambda: agent.engine_calls(), 30, what="job 1 to reach the engine\n" + agent.log_tail())
        # While job 1 is in the engine: 12 slices of another series; its job 2 waits in the queue ...
        store(agent.dicom_port, second.files[:12])
        wait_for(lambda: len(ledger.list_jobs()) == 2, 20, what="job 2 to be queued\n" + agent.log_tail())
        # ... and 6 late slices of it open version 2 before job 2 starts.
        store(agent.dicom_port, second.files[12:])
        assert ledger.get_job(2).state == JobState.QUEUED
        wait_for(lambda: _finished(ledger, 3), 60, what="three jobs\n" + agent.log_tail())

        calls = agent.engine_calls()
        assert [c["slices"] for c in calls] == [12, 12, 18], "job 2 read instances of version 2"
        assert set(calls[1]["sop_uids"]) == set(second.sop_uids[:12])
        versions = ledger.series_versions(second.series_uid)
        assert [(v.version, v.instance_count) for v in versions] == [(1, 12), (2, 6)]
    finally:
        agent.kill()
        ledger.close()
