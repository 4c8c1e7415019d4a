"""Issue 16 (7): an instance truncated on disk is reported as truncated, not as "not a CT image".

DCMTK storescu sends a series to ``spine-agent serve``; one of its spooled files is then cut to 200
bytes (a damaged disk, a careless copy) before the quiet timer queues it. The job must FAIL saying that
instance (by digest) is truncated or unreadable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_io.uids import uid_digest
from storage import JobState, Ledger
from storage.spool import Spool
from tests.agent.service.conftest import write_series
from tests.reliability.suite_support import make_agent, store, wait_for

pytestmark = pytest.mark.integration


def test_a_truncated_instance_is_reported_as_truncated(tmp_path: Path) -> None:
    series = write_series(tmp_path / "series", slices=12)
    agent = make_agent(tmp_path / "agent", dicom={"stable_age_s": 3.0})
    ledger = Ledger(agent.ledger_url)
    try:
        agent.start()
        store(agent.dicom_port, series.files)
        victim = Spool(agent.spool).instance_path(series.study_uid, series.series_uid, series.sop_uids[4])
        received = victim.stat().st_size
        os.truncate(victim, 200)
        wait_for(
            lambda: [j.state for j in ledger.list_jobs()] == [JobState.FAILED],
            60,
            what="the job to fail\n" + agent.log_tail(),
        )
        reason = ledger.list_jobs()[0].failure_reason or ""
        assert "truncated or unreadable" in reason, reason
        assert f"uid:{uid_digest(series.sop_uids[4])}" in reason
        assert f"200 bytes on disk, {received} received" in reason
        assert "SOP Class" not in reason
    finally:
        agent.kill()
        ledger.close()
