"""Lease renewal: a job that runs longer than its lease keeps its owner (agent/service/worker.py).

The worker renews the lease every ``lease_s / 3`` while the engine runs. Here a second agent (its own
Ledger on the same database) keeps trying to claim while a real worker thread is held inside the engine
well past the first lease's expiry: the job must stay RUNNING under the first owner, its expiry must
move forward, and it must finish once, with one attempt spent. Without renewal the second agent takes
the job as soon as the first lease lapses (and on a shared ledger would compute and deliver it twice).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

from agent.service.worker import JobWorker
from dicom_io.result import Result
from dicom_io.volume import Volume
from inference.phantoms import Phantom
from storage import JobState, Ledger, utcnow
from storage.spool import Spool
from tests.agent.service.test_worker import TruthPredictor, _settings, _spool_series, phantom_files

__all__ = ["phantom_files"]  # the module-scoped fixture, shared with test_worker

LEASE_S = 4.5  # renewed every 1.5 s


def test_a_job_longer_than_its_lease_keeps_its_owner(
    tmp_path: Path, ledger: Ledger, ledger_url: str, phantom_files: tuple[Phantom, list[Path]]
) -> None:
    phantom, files = phantom_files
    settings = _settings(tmp_path)
    settings.ledger.lease_s = LEASE_S
    job_id = _spool_series(settings, ledger, files)
    entered, proceed = threading.Event(), threading.Event()

    class LongPredictor(TruthPredictor):
        def predict(self, volume: Volume) -> Result:
            entered.set()
            proceed.wait(120)
            return super().predict(volume)

    predictor = LongPredictor(phantom)
    spool = Spool(settings.storage.spool_dir)
    worker = JobWorker(settings, ledger, spool, predictor, owner="agent-a", poll_s=0.05)
    other = Ledger(ledger_url, max_attempts=3)  # the second agent sharing the ledger
    try:
        worker.start()
        assert entered.wait(60), "the worker never reached the engine"
        first = other.get_job(job_id)
        assert first.state == JobState.RUNNING and first.lease_owner == "agent-a"
        assert first.lease_expires_at is not None
        first_expiry = first.lease_expires_at
        expiries = set()
        # Keep trying to take the job until well after the first lease would have lapsed.
        while utcnow() < first_expiry + timedelta(seconds=LEASE_S / 2):
            assert other.claim_job("agent-b", lease_s=LEASE_S) is None, "the second agent took the job"
            job = other.get_job(job_id)
            assert job.state == JobState.RUNNING and job.lease_owner == "agent-a"
            assert job.lease_expires_at is not None
            # Renewed every lease_s/3, the lease never runs low (a quarter leaves ~2 s for a slow machine).
            left = (job.lease_expires_at - utcnow()).total_seconds()
            assert left > LEASE_S / 4, f"lease down to {left:.2f} s: not renewed every lease_s/3"
            expiries.add(job.lease_expires_at)
            time.sleep(0.2)
        assert len(expiries) >= 3 and max(expiries) > first_expiry  # renewed, repeatedly

        proceed.set()
        deadline = time.monotonic() + 120
        while other.get_job(job_id).state == JobState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.1)
        done = other.get_job(job_id)
        assert done.state == JobState.SUCCEEDED and done.attempts == 1
        assert predictor.calls == 1
        assert [e.kind for e in other.events(job_id=job_id)].count("job.running") == 1
    finally:
        proceed.set()
        worker.stop(grace_s=30)
        other.close()
