"""DICOM TLS to destinations: the real sender and ``destinations echo`` against a pynetdicom Storage SCP
that speaks only TLS on loopback, with certificates made by openssl (tests/support_tls.py)."""

from __future__ import annotations

import io
import logging
import shutil
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from agent.logging_setup import configure_logging
from agent.service.dicom_client import echo_destination
from agent.service.manifest import write_manifest
from agent.service.preflight import startup_problems
from agent.service.sender import run_due_deliveries
from config import Destination, Settings
from config.settings import DeliverySettings, LoggingSettings, StorageSettings
from dicom_io.seg import build_seg
from dicom_io.sr import build_sr
from storage import DeliveryState, Ledger
from storage.models import Delivery
from storage.spool import Spool
from tests.agent.cli.test_cli import run_cli
from tests.dicom_io.ct_series import labelled_result, write_ct_series
from tests.support import free_port
from tests.support_ledger import succeeded_job
from tests.support_tls import Pki, server_context

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Results:
    """A SEG and the SR that references it, as the worker writes them."""

    seg: Path
    sr: Path
    seg_uid: str
    sr_uid: str
    sop_classes: tuple[str, str]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    folder = tmp_path_factory.mktemp("results")
    ct = write_ct_series(folder / "ct")
    result = labelled_result(ct.volume, (22, 23, 24))
    seg = build_seg(ct.volume, ct.datasets, result, series_number=9901, algorithm_version="test-1")
    sr = build_sr(ct.datasets, result, series_number=9902, algorithm_version="test-1", segmentation=seg)
    seg.save_as(folder / "seg.dcm", enforce_file_format=True)
    sr.save_as(folder / "sr.dcm", enforce_file_format=True)
    return Results(
        folder / "seg.dcm",
        folder / "sr.dcm",
        str(seg.SOPInstanceUID),
        str(sr.SOPInstanceUID),
        (str(seg.SOPClassUID), str(sr.SOPClassUID)),
    )


class TlsDestination:
    """A Storage SCP (SEG, SR) with Verification that accepts only DICOM TLS connections."""

    def __init__(self, context: ssl.SSLContext, sop_classes: tuple[str, ...]) -> None:
        self.port = free_port()
        self.stored: list[str] = []
        ae = AE(ae_title="TLSPACS")
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_supported_context(Verification)
        server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            ssl_context=context,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        assert server is not None
        self.server = server

    def _on_store(self, event: Any) -> int:
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000


@pytest.fixture
def tls_pacs(pki: Pki, results: Results) -> Iterator[TlsDestination]:
    """Requires a client certificate signed by the test CA, as a strict PACS would."""
    destination = TlsDestination(server_context(pki, verify_clients=True), results.sop_classes)
    yield destination
    destination.server.shutdown()


def _destination(port: int, **tls: object) -> Destination:
    return Destination(name="pacs", ae_title="TLSPACS", host="127.0.0.1", port=port, **tls)  # type: ignore[arg-type]


def _tls_keys(pki: Pki, *, ca: Path | None = None) -> dict[str, object]:
    return {
        "tls": True,
        "tls_ca_file": ca or pki.ca,
        "tls_cert_file": pki.client_cert,
        "tls_key_file": pki.client_key,
    }


def _settings(spool: Spool, destination: Destination) -> Settings:
    return Settings(
        storage=StorageSettings(spool_dir=spool.root),
        destinations=[destination],
        delivery=DeliverySettings(calling_ae_title="SPINEAGENT", retry_base_s=10),
    )


def _job_with_results(ledger: Ledger, spool: Spool, results: Results) -> None:
    def write(out: Path) -> None:
        shutil.copyfile(results.seg, out / "seg.dcm")
        shutil.copyfile(results.sr, out / "sr.dcm")
        write_manifest(out, [out / "seg.dcm", out / "sr.dcm"])

    succeeded_job(ledger, spool, write, T0)


def _attempt(ledger: Ledger, settings: Settings, spool: Spool) -> Delivery:
    (delivery,) = run_due_deliveries(ledger, settings, spool, now=T0)
    (row,) = ledger.list_deliveries()
    assert row.id == delivery.id
    return row  # as the ledger holds it


def test_seg_and_sr_reach_a_tls_destination_that_verifies_our_client_certificate(
    tls_pacs: TlsDestination, pki: Pki, results: Results, ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    _job_with_results(ledger, spool, results)
    row = _attempt(ledger, _settings(spool, _destination(tls_pacs.port, **_tls_keys(pki))), spool)
    assert row.state == DeliveryState.DELIVERED, row.last_error
    assert tls_pacs.stored == [results.seg_uid, results.sr_uid]  # SEG before the SR that references it


def test_a_server_certificate_signed_by_another_ca_is_a_failed_attempt_with_the_reason(
    tls_pacs: TlsDestination, pki: Pki, results: Results, ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    _job_with_results(ledger, spool, results)
    destination = _destination(tls_pacs.port, **_tls_keys(pki, ca=pki.other_ca))
    row = _attempt(ledger, _settings(spool, destination), spool)
    assert row.state == DeliveryState.PENDING and row.attempts == 1  # retried like a destination down
    assert row.next_attempt_at is not None
    assert row.next_attempt_at.replace(tzinfo=UTC) == T0 + timedelta(seconds=10)
    error = str(row.last_error)
    assert error.startswith(f"no association with TLSPACS@127.0.0.1:{tls_pacs.port} over TLS: ")
    assert "the server's TLS certificate was not accepted" in error and "certificate" in error.lower()
    assert "destinations[pacs].tls_ca_file" in error and str(pki.other_ca) in error
    assert tls_pacs.stored == []


def test_a_refused_certificate_is_one_agent_warning_not_a_pynetdicom_error_with_a_traceback(
    tls_pacs: TlsDestination, pki: Pki, results: Results, ledger: Ledger, tmp_path: Path
) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(LoggingSettings(format="text", level="INFO"), stream)
    try:
        spool = Spool(tmp_path / "spool")
        _job_with_results(ledger, spool, results)
        destination = _destination(tls_pacs.port, **_tls_keys(pki, ca=pki.other_ca))
        _attempt(ledger, _settings(spool, destination), spool)
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert not [line for line in lines if " ERROR " in line or "Traceback" in line], lines
    (retry,) = [line for line in lines if "will retry at" in line]
    assert "TLS certificate was not accepted" in retry


def test_a_certificate_for_another_name_says_which_key_to_set(
    tls_pacs: TlsDestination, pki: Pki, results: Results
) -> None:
    destination = _destination(tls_pacs.port, **_tls_keys(pki), tls_server_name="pacs.example.org")
    outcome = echo_destination(destination, calling_ae="SPINEAGENT", timeout=5)
    assert not outcome.ok and "tls_server_name" in str(outcome.error), outcome.error
    assert "not accepted" in str(outcome.error)


def test_a_destination_that_wants_a_client_certificate_says_so(
    tls_pacs: TlsDestination, pki: Pki, results: Results
) -> None:
    destination = _destination(tls_pacs.port, tls=True, tls_ca_file=pki.ca)  # no tls_cert_file
    outcome = echo_destination(destination, calling_ae="SPINEAGENT", timeout=5)
    assert not outcome.ok and "over TLS" in str(outcome.error)
    assert "require a client certificate (destinations[pacs].tls_cert_file" in str(outcome.error)


def test_plain_dicom_to_a_tls_port_is_not_mistaken_for_success(
    tls_pacs: TlsDestination, results: Results
) -> None:
    outcome = echo_destination(_destination(tls_pacs.port), calling_ae="SPINEAGENT", timeout=5)
    assert not outcome.ok and outcome.status is None


def test_destinations_echo_over_tls(tls_pacs: TlsDestination, pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    good = _tls_keys(pki)
    config.write_text(
        '[delivery]\ncalling_ae_title = "SPINEAGENT"\n'
        f'[[destinations]]\nname = "pacs"\nae_title = "TLSPACS"\nhost = "127.0.0.1"\nport = {tls_pacs.port}\n'
        f'tls = true\ntls_ca_file = "{good["tls_ca_file"]}"\n'
        f'tls_cert_file = "{good["tls_cert_file"]}"\ntls_key_file = "{good["tls_key_file"]}"\n'
        f'[[destinations]]\nname = "wrong-ca"\nae_title = "TLSPACS"\nhost = "127.0.0.1"\n'
        f'port = {tls_pacs.port}\ntls = true\ntls_ca_file = "{pki.other_ca}"\n'
    )
    one = run_cli("destinations", "echo", "pacs", "--timeout", "5", config=config)
    assert one.returncode == 0, one.stdout + one.stderr
    assert one.stdout.startswith(f"pacs: Success (0x0000) TLSPACS@127.0.0.1:{tls_pacs.port} over TLS in ")
    both = run_cli("destinations", "echo", "--timeout", "5", config=config)
    assert both.returncode == 1
    assert "pacs: Success" in both.stdout
    (wrong,) = [line for line in both.stdout.splitlines() if line.startswith("wrong-ca:")]
    assert "FAILED" in wrong and "TLS certificate was not accepted" in wrong, wrong
    listed = run_cli("destinations", "list", config=config)
    assert f"pacs  TLSPACS@127.0.0.1:{tls_pacs.port} (TLS)" in listed.stdout


def test_config_check_names_the_tls_file_that_is_missing(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.crt"
    settings = _settings(Spool(tmp_path / "spool"), _destination(104, **_tls_keys(pki, ca=missing)))
    assert startup_problems(settings, weights=False) == [
        f"destinations[pacs].tls_ca_file = '{missing}': no such file"
    ]
    not_pem = tmp_path / "not-a-cert.pem"
    not_pem.write_text("hello\n")
    settings = _settings(Spool(tmp_path / "spool"), _destination(104, **_tls_keys(pki, ca=not_pem)))
    (problem,) = startup_problems(settings, weights=False)
    assert problem.startswith(f"destinations[pacs].tls_ca_file = '{not_pem}': not a PEM CA certificate")

    config = tmp_path / "agent.toml"
    config.write_text(
        f'[ledger]\nurl = "sqlite:///{tmp_path / "ledger.sqlite3"}"\n'
        f'[storage]\nspool_dir = "{tmp_path / "spool"}"\n'
        f"[dicom]\nport = {free_port()}\n[http]\nport = 0\n"
        f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\n'
        f'tls = true\ntls_ca_file = "{missing}"\n'
    )
    check = run_cli("config", "check", str(config))
    assert check.returncode == 2
    assert check.stderr.strip().splitlines() == [
        f"error: {config}: destinations[pacs].tls_ca_file = '{missing}': no such file"
    ], check.stderr
