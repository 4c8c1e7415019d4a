"""Destination faults: down, refusing associations, failure statuses, slow, dropping the association.

One agent, one destination port. For each fault a series is sent while the destination misbehaves; once
the ledger shows a failed attempt (the back-off), the destination is healed (DCMTK storescp, one file per
received instance) and the result must arrive exactly once. The failure statuses come from a pynetdicom
SCP on the same port (storescp cannot answer them); what it stored counts as held too.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    SegmentationStorage,
)
from pynetdicom.transport import ThreadedAssociationServer

from storage import DeliveryState, JobState
from tests.conftest import free_port
from tests.reliability.suite_support import (
    StoreSCP,
    make_agent,
    make_series,
    result_uids,
    storescu,
    variants,
    wait_for,
    write_report,
)

pytestmark = pytest.mark.integration


class StatusSCP:
    """A destination answering ``statuses`` in turn (then Success), counting what it stored."""

    def __init__(self, port: int, statuses: list[int]) -> None:
        self.port = port
        self.statuses = list(statuses)
        self.held: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.server: ThreadedAssociationServer | None = None

    def _on_store(self, event: Any) -> int:
        with self._lock:
            if self.statuses:
                return self.statuses.pop(0)
            self.held[str(event.request.AffectedSOPInstanceUID)] += 1
            return 0x0000

    def start(self) -> StatusSCP:
        ae = AE(ae_title="DEST")
        ae.add_supported_context(SegmentationStorage)
        ae.add_supported_context(Comprehensive3DSRStorage)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


SHORT_FAULTS: list[tuple[str, Any]] = [
    ("down", None),
    ("refusing associations", ["--refuse"]),
    ("failure status 0xA700 twice", [0xA700, 0xA700]),
]
LONG_FAULTS: list[tuple[str, Any]] = [
    ("slow (2 s per C-STORE)", ["--sleep-during", "2"]),
    ("drops the association mid-transfer", ["--abort-during"]),
]


@pytest.mark.parametrize(
    "faults",
    variants(SHORT_FAULTS, LONG_FAULTS),
)
def test_destination_faults_lose_nothing_and_send_nothing_twice(tmp_path: Path, faults: list[Any]) -> None:
    port = free_port()
    dest = StoreSCP(tmp_path / "dest", port)
    agent = make_agent(
        tmp_path / "agent",
        destinations=[("dest", "DEST", port)],
        delivery={"retry_base_s": 0.5, "retry_cap_s": 2.0, "max_attempts": 50},
        engine_delay_s=0.0,
    )
    series = make_series(tmp_path / "series", len(faults), seed=300)
    status_scp: StatusSCP | None = None
    status_held: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    results: dict[str, list[str]] = {}
    agent.start()
    ledger = agent.ledger()
    try:
        for (name, fault), s in zip(faults, series, strict=True):
            if fault is None:
                dest.stop()
            elif isinstance(fault[0], int):
                dest.stop()
                status_scp = StatusSCP(port, fault).start()
            else:
                dest.restart(extra=fault)
            t0 = time.monotonic()
            assert storescu(agent.dicom_port, s.files).wait() == 0

            def job(s: Any = s) -> Any:
                jobs = [j for j in ledger.list_jobs() if j.series.series_instance_uid == s.series_uid]
                return jobs[0] if jobs else None

            wait_for(lambda: job() is not None and job().state == JobState.SUCCEEDED, 30, 0.3, what="the job")
            job_id = job().id
            results[name] = result_uids(agent, ledger.get_job(job_id).output_path)
            assert len(results[name]) == 2, results[name]
            failure = ""
            if name.startswith(("slow", "failure status")):
                # heals by itself: a slow peer, or one answering 0xA700 (out of resources) twice
                wait_for(
                    lambda job_id=job_id: ledger.list_deliveries(job_id)[0].state == DeliveryState.DELIVERED,
                    60,
                    0.5,
                    what=f"delivery despite '{name}'",
                )
                if name.startswith("failure status"):
                    assert ledger.list_deliveries(job_id)[0].attempts == 2, name
            else:
                # a peer that aborts mid-C-STORE costs one sender DIMSE timeout (~30 s) per attempt
                wait_for(
                    lambda job_id=job_id: ledger.list_deliveries(job_id)[0].attempts >= 2,
                    150,
                    0.3,
                    what="two failed attempts (back-off)",
                )
                failed = ledger.list_deliveries(job_id)[0]
                assert failed.state == DeliveryState.PENDING, (name, failed.state, failed.last_error)
                assert failed.last_error or failed.last_status, "the failed attempt is not recorded"
                failure = f"{failed.last_status or ''} {failed.last_error or ''}".strip()
                dest.restart(extra=[])
                wait_for(
                    lambda job_id=job_id: ledger.list_deliveries(job_id)[0].state == DeliveryState.DELIVERED,
                    60,
                    0.5,
                    what=f"delivery after healing '{name}'",
                )
            if status_scp is not None:
                status_scp.stop()
                status_held.update(status_scp.held)
                status_scp = None
            delivery = ledger.list_deliveries(job_id)[0]
            rows.append(
                {
                    "fault": name,
                    "attempts": delivery.attempts,
                    "seconds_to_delivered": round(time.monotonic() - t0, 1),
                    "failure_recorded": failure[:90],
                }
            )
            dest.restart(extra=[])
        # no sleep: every delivery is DELIVERED (final), so nothing more is sent or counted
        assert {d.state for d in ledger.list_deliveries()} == {DeliveryState.DELIVERED}
        held = dest.held()
        metrics = agent.http_get("/metrics")[1]
    finally:
        agent.kill()
        dest.stop()
        if status_scp is not None:
            status_scp.stop()
        ledger.close()
    counts = {name: [held[uid] + status_held[uid] for uid in uids] for name, uids in results.items()}
    for row in rows:
        row["held"] = counts[row["fault"]]
    write_report("destination", rows)
    assert counts == {name: [1, 1] for name in results}, rows
    # the back-off shows in the metrics too: every attempt before the last is counted as "pending"
    retries = sum(row["attempts"] - 1 for row in rows)
    pending = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("spine_agent_delivery_attempts_total{") and 'outcome="pending"' in line
    )
    assert pending == retries, metrics
