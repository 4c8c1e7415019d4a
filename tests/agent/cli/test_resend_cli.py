"""deliveries resend and jobs send: a real sender to an in-process SCP, the CLI as a subprocess."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

from agent.service.manifest import write_manifest
from agent.service.sender import run_due_deliveries
from config import Destination, Settings
from config.settings import DeliverySettings, LedgerSettings, StorageSettings
from storage import DeliveryState, Ledger, utcnow
from storage.spool import Spool
from tests.agent.cli.test_cli import run_cli
from tests.agent.service.test_sender import RecordingSCP, _finished_job, scp  # noqa: F401  (fixture)
from tests.dicom_io.conftest import ct_series  # noqa: F401  (fixture)
from tests.dicom_io.ct_series import CTSeries


def test_resend_a_delivered_delivery_and_send_a_job_to_another_destination(
    scp: RecordingSCP, ct_series: CTSeries, tmp_path: Path  # noqa: F811
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = Ledger(url)
    ledger.upgrade()
    spool = Spool(tmp_path / "spool")
    out = _finished_job(ledger, spool, ct_series)
    files = [out / "seg.dcm", out / "sr.dcm"]
    for source, target in zip(ct_series.files[:2], files, strict=True):
        shutil.copyfile(source, target)
    write_manifest(out, files)
    settings = Settings(
        storage=StorageSettings(spool_dir=spool.root),
        ledger=LedgerSettings(url=url),
        destinations=[
            Destination(name=name, ae_title="TESTSCP", host="127.0.0.1", port=scp.port)
            for name in ("pacs", "archive")
        ],
        delivery=DeliverySettings(calling_ae_title="SPINEAGENT"),
    )
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[ledger]\nurl = "{url}"\n[storage]\nspool_dir = "{spool.root}"\n'
        + "".join(
            f'[[destinations]]\nname = "{n}"\nae_title = "TESTSCP"\nhost = "127.0.0.1"\nport = {scp.port}\n'
            for n in ("pacs", "archive")
        )
    )
    sop_uids = [str(ds.SOPInstanceUID) for ds in ct_series.datasets[:2]]

    def deliver() -> list[DeliveryState]:
        due = run_due_deliveries(ledger, settings, spool, now=utcnow() + timedelta(seconds=1))
        return [d.state for d in due]

    assert deliver() == [DeliveryState.DELIVERED] and scp.received == sop_uids
    (delivery,) = ledger.list_deliveries()
    job_id = delivery.job_id

    # A DELIVERED delivery is sent again in full (the destination lost it).
    resent = run_cli("deliveries", "resend", str(delivery.id), config=config)
    assert resent.returncode == 0 and "PENDING (every instance again)" in resent.stdout, resent.stderr
    assert deliver() == [DeliveryState.DELIVERED] and scp.received == sop_uids * 2

    # The job to a destination it was not sent to: a new delivery.
    sent = run_cli("jobs", "send", str(job_id), "archive", config=config)
    assert sent.returncode == 0 and "to archive is PENDING" in sent.stdout, sent.stderr
    assert deliver() == [DeliveryState.DELIVERED] and scp.received == sop_uids * 3
    assert sorted(d.destination for d in ledger.list_deliveries(job_id)) == ["archive", "pacs"]

    shown = json.loads(run_cli("jobs", "show", str(job_id), "--json", config=config).stdout)
    details = [e["detail"] for e in shown["events"]]
    assert "re-send of every instance requested by an admin" in details
    assert "sent to archive by an admin" in details

    unknown = run_cli("jobs", "send", str(job_id), "nope", config=config)
    assert unknown.returncode == 2 and "configured: pacs, archive" in unknown.stderr
    pending = run_cli("deliveries", "resend", str(delivery.id), config=config)
    assert run_cli("deliveries", "resend", str(delivery.id), config=config).returncode == 2
    assert pending.returncode == 0
    ledger.close()
