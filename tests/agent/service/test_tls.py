"""DICOM TLS on the SCP, with certificates made by openssl for the test."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from agent.service.scp import StorageSCP, build_tls_context
from config import ConfigError
from tests.agent.service.conftest import TEST_SCU_AE, StartSCP, scp_settings, write_series
from tests.conftest import require_tool


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _key_and_csr(name: str, subject: str, cwd: Path) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd)  # fmt: skip


def _sign(name: str, extensions: str, cwd: Path) -> None:
    (cwd / f"{name}.ext").write_text(extensions + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    cwd = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=spine-agent test CA",
             cwd=cwd)  # fmt: skip
    _key_and_csr("server", "/CN=localhost", cwd)
    _sign("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth", cwd)
    _key_and_csr("client", "/CN=TESTSCU", cwd)
    _sign("client", "extendedKeyUsage=clientAuth", cwd)
    return cwd


def tls_settings(pki: Path, *, verify_clients: bool) -> dict[str, object]:
    tls: dict[str, object] = {
        "enabled": True,
        "certificate": pki / "server.crt",
        "private_key": pki / "server.key",
    }
    if verify_clients:
        tls["client_ca"] = pki / "ca.crt"
    return {"tls": tls}


def client_context(pki: Path, *, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.crt"))
    if with_certificate:
        context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    return context


def associate(scp: StorageSCP, context: ssl.SSLContext | None) -> Association:
    ae = AE(ae_title=TEST_SCU_AE)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    tls_args = (context, "localhost") if context else None
    return ae.associate("127.0.0.1", scp.port, ae_title="SPINEAGENT", tls_args=tls_args)


def test_store_over_tls(start_scp: StartSCP, pki: Path, tmp_path: Path) -> None:
    scp = start_scp(**tls_settings(pki, verify_clients=False))
    series = write_series(tmp_path / "src", slices=1)
    assoc = associate(scp, client_context(pki, with_certificate=False))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_store(dcmread(series.files[0])).Status == 0
    assoc.release()
    assert scp.spool.instance_path(series.study_uid, series.series_uid, series.sop_uids[0]).is_file()

    plain = associate(scp, None)  # a client speaking plain DICOM to the TLS port gets nowhere
    assert not plain.is_established


def test_client_certificates_are_verified_when_a_client_ca_is_set(start_scp: StartSCP, pki: Path) -> None:
    scp = start_scp(**tls_settings(pki, verify_clients=True))
    anonymous = associate(scp, client_context(pki, with_certificate=False))
    assert not anonymous.is_established
    known = associate(scp, client_context(pki, with_certificate=True))
    assert known.is_established
    known.release()


def test_unreadable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    settings = scp_settings(
        tmp_path,
        tls={"enabled": True, "certificate": tmp_path / "missing.crt", "private_key": tmp_path / "k.key"},
    )
    with pytest.raises(ConfigError, match=r"dicom.tls: cannot load certificate .*missing.crt"):
        build_tls_context(settings)
