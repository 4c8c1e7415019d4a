"""A throw-away PKI for the DICOM TLS tests (SCP and sender), made by openssl.

:func:`make_pki` writes a test CA, a server certificate for ``127.0.0.1``/``localhost`` and a client
certificate signed by it, and a second, unrelated CA (``other-ca.crt``: the "wrong CA" a client may be
configured with). The ``pki`` fixture makes one per test module; ``tests/agent/service/conftest.py``
imports it for the tests there.
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import require_tool

__all__ = ["Pki", "make_pki", "pki", "server_context"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(name: str, subject: str, cwd: Path) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", subject,
             cwd=cwd)  # fmt: skip


def _key_and_csr(name: str, subject: str, cwd: Path) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd)  # fmt: skip


def _sign(name: str, extensions: str, cwd: Path) -> None:
    (cwd / f"{name}.ext").write_text(extensions + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=cwd)  # fmt: skip


@dataclass(frozen=True)
class Pki:
    """The files :func:`make_pki` wrote (all PEM)."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def other_ca(self) -> Path:
        """A CA that signed nothing here."""
        return self.folder / "other-ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.folder / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.folder / "client.key"


def make_pki(folder: Path) -> Pki:
    """A test CA, a server certificate for 127.0.0.1/localhost, a client certificate, and another CA."""
    folder.mkdir(parents=True, exist_ok=True)
    _ca("ca", "/CN=spine-agent test CA", folder)
    _key_and_csr("server", "/CN=localhost", folder)
    _sign("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth", folder)
    _key_and_csr("client", "/CN=TESTSCU", folder)
    _sign("client", "extendedKeyUsage=clientAuth", folder)
    _ca("other-ca", "/CN=some other CA", folder)
    return Pki(folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_context(pki: Pki, *, verify_clients: bool) -> ssl.SSLContext:
    """A server-side context with the test server certificate; ``verify_clients``: require a client
    certificate signed by the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    if verify_clients:
        context.load_verify_locations(cafile=str(pki.ca))
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context
