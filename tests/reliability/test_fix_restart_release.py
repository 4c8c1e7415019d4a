"""Issue 16 (6): after a crash, the jobs this agent held are released at its next start, not after the
lease (``ledger.lease_s``, 900 s here); one log line says so.

``spine-agent serve`` (stand-in engine that takes a minute) is SIGKILLed while its job is RUNNING, then
started again on the same spool and ledger. A second, unrelated agent identity's RUNNING job in the same
ledger (as on a shared PostgreSQL ledger) must be left alone.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from storage import JobState, Ledger
from storage.ledger import utcnow
from tests.agent.service.conftest import write_series
from tests.reliability.suite_support import make_agent, store, wait_for

pytestmark = pytest.mark.integration


def test_a_restarted_agent_releases_its_own_jobs_at_once(tmp_path: Path) -> None:
    agent = make_agent(
        tmp_path / "agent", dicom={"stable_age_s": 1.0}, ledger={"lease_s": 900.0}, engine_delay_s=120.0
    )
    ledger = Ledger(agent.ledger_url)
    try:
        agent.start()
        agent_id = (agent.spool / "agent-id").read_text().strip()
        store(agent.dicom_port, write_series(tmp_path / "mine", slices=12).files)
        wait_for(lambda: agent.engine_calls(), 30, what="the job to reach the engine\n" + agent.log_tail())
        [job] = ledger.list_jobs()
        assert job.state == JobState.RUNNING
        assert (job.lease_owner or "").startswith(f"{agent_id}@")
        agent.kill()

        # Another agent's job, RUNNING under its own lease, in the same ledger.
        other = write_series(tmp_path / "other", slices=12)
        ledger.record_instance(
            other.study_uid, other.series_uid, 1, "incoming/x/y", utcnow() - timedelta(hours=1)
        )
        [other_job] = ledger.queue_quiet_series(1.0)
        assert ledger.claim_job("0123456789abcdef@elsewhere:42", lease_s=900.0) is not None

        agent.engine_delay_s = 0.2
        agent.start()
        wait_for(
            lambda: ledger.get_job(job.id).state == JobState.SUCCEEDED,
            30,
            what="the released job to run again\n" + agent.log_tail(),
        )
        lines = [r["message"] for r in agent.log_records() if "released at start" in r.get("message", "")]
        assert lines == [
            f"agent {agent_id}: 1 job(s) left RUNNING by its previous run released at start: {job.id}"
        ]
        assert ledger.get_job(job.id).attempts == 2  # the interrupted attempt counts
        assert ledger.get_job(other_job).state == JobState.RUNNING  # not ours: untouched
    finally:
        agent.kill()
        ledger.close()
