"""DICOM TLS on the SCP, with certificates made by openssl for the test (tests/support_tls.py)."""

from __future__ import annotations

import ssl
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
from tests.support_tls import Pki


def tls_settings(pki: Pki, *, verify_clients: bool) -> dict[str, object]:
    tls: dict[str, object] = {
        "enabled": True,
        "certificate": pki.server_cert,
        "private_key": pki.server_key,
    }
    if verify_clients:
        tls["client_ca"] = pki.ca
    return {"tls": tls}


def client_context(pki: Pki, *, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if with_certificate:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def associate(scp: StorageSCP, context: ssl.SSLContext | None) -> Association:
    ae = AE(ae_title=TEST_SCU_AE)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    tls_args = (context, "localhost") if context else None
    return ae.associate("127.0.0.1", scp.port, ae_title="SPINEAGENT", tls_args=tls_args)


def test_store_over_tls(start_scp: StartSCP, pki: Pki, tmp_path: Path) -> None:
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


def test_client_certificates_are_verified_when_a_client_ca_is_set(start_scp: StartSCP, pki: Pki) -> None:
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
