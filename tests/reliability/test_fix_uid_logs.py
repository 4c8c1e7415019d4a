"""Issue 16 (4): no full UID in a log line at INFO or above, nor in a job's failure reason.

A series the loader refuses with a message naming an instance file (``<SOP Instance UID>.dcm``) is sent
by DCMTK storescu to ``spine-agent serve``; the FAILED job's reason and the whole INFO log are searched
for every UID of the series.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_io.uids import uid_digest
from storage import JobState, Ledger
from tests.agent.service.conftest import write_series
from tests.reliability.suite_support import FULL_UID, make_agent, store, wait_for

pytestmark = pytest.mark.integration


def test_failure_reasons_and_log_lines_carry_uid_digests_only(tmp_path: Path) -> None:
    series = write_series(tmp_path / "series", slices=12)
    odd = pydicom.dcmread(series.files[5])
    odd.Modality = "MR"  # still CT Image Storage, so the SCP stores it; the loader refuses the series
    odd.save_as(series.files[5], enforce_file_format=True)
    agent = make_agent(tmp_path / "agent", dicom={"stable_age_s": 1.0})
    ledger = Ledger(agent.ledger_url)
    try:
        agent.start()
        store(agent.dicom_port, series.files)
        wait_for(
            lambda: [j.state for j in ledger.list_jobs()] == [JobState.FAILED],
            60,
            what="the job to fail\n" + agent.log_tail(),
        )
        reason = ledger.list_jobs()[0].failure_reason or ""
        assert "modality MR" in reason
        assert f"uid:{uid_digest(series.sop_uids[5])}" in reason
        assert not FULL_UID.search(reason.replace(".dcm", "")), reason
        uids = {series.study_uid, series.series_uid, series.frame_of_reference_uid, *series.sop_uids}
        wait_for(lambda: "job 1: failed" in agent.log_text(), 10, what="the failure's log line")
        log = agent.log_text()
        leaked = sorted(uid for uid in uids if uid in log)
        assert leaked == [], f"full UIDs in the INFO log: {leaked}"
    finally:
        agent.kill()
        ledger.close()
