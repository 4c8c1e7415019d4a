"""Issue 16 (5): a full disk is waited out, not counted against the attempts meant for bad input; and
``/readyz`` is not ready while the SCP would answer 0xA700.

``spine-agent serve`` runs in its own mount namespace (``unshare``) with the spool on a small tmpfs, so
the disk really fills (ENOSPC from the kernel); the test fills and frees it from inside that namespace
(``nsenter``). DCMTK storescu sends the series.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from storage import JobState, Ledger
from tests.agent.service.conftest import write_series
from tests.conftest import require_tool
from tests.reliability.suite_support import SuiteAgent, make_agent, store, wait_for

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def _namespaces_work() -> None:
    probe = subprocess.run(
        [require_tool("unshare"), "--user", "--map-root-user", "--mount", "true"], capture_output=True
    )
    if probe.returncode != 0:
        message = f"unprivileged user namespaces are not available: {probe.stderr.decode().strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _free_bytes(agent: SuiteAgent) -> int:
    out = agent.in_namespace(f"df -B1 --output=avail {agent.spool} | tail -1")
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def _fill(agent: SuiteAgent, leave_bytes: int) -> None:
    """Fill the spool's tmpfs until ``leave_bytes`` remain free (0: completely)."""
    free = _free_bytes(agent)
    count = max(0, free - leave_bytes) // 4096
    out = agent.in_namespace(f"dd if=/dev/zero of={agent.spool}/filler bs=4096 count={count} 2>&1 || true")
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_full_disk_defers_the_job_without_spending_attempts(tmp_path: Path) -> None:
    _namespaces_work()
    agent = make_agent(
        tmp_path / "agent",
        dicom={"stable_age_s": 2.0},
        tmpfs_kib=8 * 1024,
        ledger={"defer_base_s": 1.0, "defer_cap_s": 2.0, "max_attempts": 3},
    )
    ledger = Ledger(agent.ledger_url)
    series = write_series(tmp_path / "series", slices=12)
    try:
        agent.start()
        store(agent.dicom_port, series.files)
        _fill(agent, 0)  # before the quiet timer fires: the job's writes hit ENOSPC
        wait_for(lambda: ledger.list_jobs(), 20, what="the job to be queued\n" + agent.log_tail())
        # many tries at 1-2 s back-off: 3 deferrals (attempts spent instead would FAIL it at the third)
        wait_for(
            lambda: ledger.list_jobs()[0].deferrals >= 3 or ledger.list_jobs()[0].state == JobState.FAILED,
            60,
            poll_s=0.2,
            what="three tries of the job\n" + agent.log_tail(),
        )
        failed = ledger.list_jobs()[0]
        assert failed.state != JobState.FAILED, (
            f"FAILED after {failed.attempts} attempts: {failed.failure_reason}"
        )
        wait_for(
            lambda: ledger.list_jobs()[0].state == JobState.QUEUED,
            10,
            poll_s=0.05,
            what="the job back in the queue",
        )
        [job] = ledger.list_jobs()
        assert job.attempts == 0, job.failure_reason
        assert job.deferrals >= 3
        assert "No space left on device" in (job.failure_reason or "")

        agent.in_namespace(f"rm -f {agent.spool}/filler")
        wait_for(
            lambda: ledger.list_jobs()[0].state == JobState.SUCCEEDED,
            30,
            what="the job to succeed once there is room\n" + agent.log_tail(),
        )
        assert ledger.list_jobs()[0].attempts == 1
    finally:
        agent.kill()
        ledger.close()


def test_readyz_is_not_ready_when_the_scp_would_refuse_for_space(tmp_path: Path) -> None:
    _namespaces_work()
    agent = make_agent(tmp_path / "agent", tmpfs_kib=8 * 1024, storage={"disk_reserve_mb": 2})
    try:
        agent.start()
        assert agent.readyz()[0] == 200
        _fill(agent, 2 * MIB + 512 * 1024)  # above the reserve, but not by one instance
        status, body = agent.readyz()
        assert status == 503, body
        assert body["checks"]["disk"]["ok"] is True  # the plain free-space check alone would pass
        assert "0xA700" in body["checks"]["scp"]["detail"]
        # and the SCP does refuse: a 1 MiB instance gets 0xA700 (storescu exits non-zero on it)
        big = write_series(tmp_path / "big", slices=1, rows=724, columns=724)
        sent = store(agent.dicom_port, big.files, check=False)
        assert sent.returncode != 0
        assert "refused with 0xA700" in agent.log_text()

        agent.in_namespace(f"rm -f {agent.spool}/filler")
        wait_for(lambda: agent.readyz()[0] == 200, 10, what="ready again")
    finally:
        agent.kill()
