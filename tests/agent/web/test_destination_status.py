"""Per-destination status: /readyz shows each destination's last attempt (informational) and the
sending-attempt counter is labelled by destination; a real sender against an in-process SCP."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.service.manifest import write_manifest
from agent.service.sender import run_due_deliveries
from agent.web.http import HealthServer
from config import Destination, Settings
from config.settings import DeliverySettings, HttpSettings, LedgerSettings, StorageSettings
from storage import Ledger, utcnow
from storage.spool import Spool
from tests.agent.service.test_sender import RecordingSCP, _finished_job, scp  # noqa: F401  (fixture)
from tests.conftest import free_port
from tests.dicom_io.conftest import ct_series  # noqa: F401  (fixture)
from tests.dicom_io.ct_series import CTSeries


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_readyz_and_metrics_say_how_each_destination_is_doing(
    scp: RecordingSCP, ct_series: CTSeries, ledger: Ledger, ledger_url: str, tmp_path: Path  # noqa: F811
) -> None:
    spool = Spool(tmp_path / "spool")
    out = _finished_job(ledger, spool, ct_series)
    shutil.copyfile(ct_series.files[0], out / "seg.dcm")
    write_manifest(out, [out / "seg.dcm"])
    up, down = "pacs", f"down-{free_port()}"
    settings = Settings(
        storage=StorageSettings(spool_dir=spool.root, disk_reserve_mb=0),
        ledger=LedgerSettings(url=ledger_url),
        http=HttpSettings(bind_address="127.0.0.1", port=8080),
        destinations=[
            Destination(name=up, ae_title="TESTSCP", host="127.0.0.1", port=scp.port),
            Destination(name=down, ae_title="NOBODY", host="127.0.0.1", port=free_port()),
        ],
        delivery=DeliverySettings(calling_ae_title="SPINEAGENT"),
    )
    (job,) = ledger.list_jobs(None, None, 1)
    ledger.send_job_to(job.id, down)
    run_due_deliveries(ledger, settings, spool, now=utcnow() + timedelta(seconds=1))

    http = HealthServer(settings, ledger, model_loaded=lambda: True, port=0)
    http.start()
    try:
        status, body = _get(http.url + "/readyz")
        _, text = _get(http.url + "/metrics")
    finally:
        http.stop()
    ready = json.loads(body)
    assert status == 200 and ready["ready"] is True  # a destination down never makes the agent unready
    assert ready["destinations"][up]["last_outcome"] == "delivered"
    assert ready["destinations"][up]["last_delivered_at"] is not None
    assert ready["destinations"][down]["last_outcome"] == "pending"  # will retry
    assert "connect" in (ready["destinations"][down]["last_error"] or "").lower()
    assert ready["destinations"][down]["last_delivered_at"] is None
    samples = {
        (s.labels["destination"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "spine_agent_delivery_attempts"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert samples[(up, "delivered")] >= 1 and samples[(down, "pending")] >= 1
