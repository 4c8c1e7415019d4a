"""The quiet timer queues one job per series version; late instances open the next version."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from agent.service.scheduler import QUIET_TIMER_JOB, AgentScheduler, quiet_tick_interval
from agent.service.scp import StorageSCP
from storage import JobState, Ledger
from tests.agent.service.conftest import TEST_SCU_AE, StartSCP, scp_settings, write_series

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def send(scp: StorageSCP, files: list[Path]) -> None:
    ae = AE(ae_title=TEST_SCU_AE)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="SPINEAGENT")
    assert assoc.is_established
    try:
        assert all(int(assoc.send_c_store(dcmread(f)).Status) == 0 for f in files)
    finally:
        assoc.release()


def test_quiet_timer_queues_exactly_one_job_per_version(tmp_path: Path, ledger: Ledger) -> None:
    clock = Clock(T0)
    queued: list[list[int]] = []
    scheduler = AgentScheduler(scp_settings(tmp_path), ledger, on_queued=queued.append, clock=clock)
    ledger.record_instance("1.2.3", "1.2.3.4", 100, "incoming/1.2.3/1.2.3.4", now=T0)
    ledger.record_instance("1.2.3", "1.2.3.4", 100, "incoming/1.2.3/1.2.3.4", now=T0 + timedelta(seconds=20))

    clock.now = T0 + timedelta(seconds=45)  # 25 s after the last instance: not quiet for 30 s yet
    assert scheduler.tick_quiet_series() == []
    clock.now = T0 + timedelta(seconds=51)
    [job_id] = scheduler.tick_quiet_series()
    assert scheduler.tick_quiet_series() == []  # once, however often it ticks
    assert queued == [[job_id]]
    job = ledger.get_job(job_id)
    assert job.state == JobState.QUEUED and job.series.version == 1 and job.series.instance_count == 2

    # a late instance opens version 2, queued once it is quiet in turn
    late = ledger.record_instance("1.2.3", "1.2.3.4", 100, "incoming/1.2.3/1.2.3.4", now=clock.now)
    assert late.version == 2 and late.instance_count == 1
    clock.now += timedelta(seconds=31)
    [second] = scheduler.tick_quiet_series()
    assert ledger.get_job(second).series.version == 2


def test_receive_then_quiet_then_late_instance_end_to_end(
    start_scp: StartSCP, ledger: Ledger, tmp_path: Path
) -> None:
    scp = start_scp(stable_age_s=0.4)
    scheduler = AgentScheduler(scp.settings, ledger)
    series = write_series(tmp_path / "src", slices=4)
    send(scp, series.files[:3])
    scheduler.start()
    try:
        assert wait_for(lambda: len(ledger.list_jobs()) == 1)
        time.sleep(3 * quiet_tick_interval(0.4))
        [job] = ledger.list_jobs()
        assert job.series.version == 1 and job.series.instance_count == 3

        send(scp, series.files[3:])  # arrives after the job was queued
        assert wait_for(lambda: len(ledger.list_jobs()) == 2)
        time.sleep(3 * quiet_tick_interval(0.4))
        newest, oldest = ledger.list_jobs()
        assert (oldest.series.version, newest.series.version) == (1, 2)
        assert newest.series.instance_count == 1
        # both versions point at the same folder, which now holds every instance received
        assert newest.series.spool_path == oldest.series.spool_path
        assert len(list(scp.spool.resolve(newest.series.spool_path).glob("*.dcm"))) == 4
    finally:
        scheduler.shutdown()


def test_add_interval_runs_jobs_and_survives_their_exceptions(
    tmp_path: Path, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = AgentScheduler(scp_settings(tmp_path), ledger)
    ran = threading.Event()
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        ran.set()

    scheduler.add_interval("flaky", flaky, 0.1, run_now=True)
    assert scheduler.job_names == ["flaky", QUIET_TIMER_JOB]
    with pytest.raises(ValueError, match="seconds must be positive"):
        scheduler.add_interval("bad", flaky, 0)
    scheduler.start()
    try:
        assert ran.wait(5)
    finally:
        scheduler.shutdown()
    assert not scheduler.running
    assert "scheduled job 'flaky' failed" in caplog.text
    scheduler.shutdown()  # idempotent


def test_quiet_tick_interval_bounds() -> None:
    assert quiet_tick_interval(30) == 5.0
    assert quiet_tick_interval(8) == 2.0
    assert quiet_tick_interval(0.1) == 0.2
