"""A real Orthanc (the Debian ``orthanc`` package) for integration tests: a PACS on loopback.

:func:`start_orthanc` writes an Orthanc configuration JSON into a directory of its own (storage, index
and log inside it), starts the ``Orthanc`` binary on free loopback DICOM and HTTP ports, waits until
its REST API and DICOM port answer, and returns an :class:`OrthancServer`;
:meth:`OrthancServer.stop` terminates it. The :func:`orthanc` fixture does both around a test.
Other tests reuse them::

    from tests.integration.orthanc import orthanc  # noqa: F401  (the fixture)
    from tests.integration.orthanc import OrthancServer, start_orthanc

``dicomweb=True`` loads Debian's DICOMweb plugin (package ``orthanc-dicomweb``) and serves the
DICOMweb API at :attr:`OrthancServer.dicomweb_url` (``/dicom-web``), what the OHIF viewer test reads.

Orthanc accepts C-STORE from any calling AE (``DicomAlwaysAllowStore``) and, by default, does not check
the called AE title; ``check_called_aet=True`` makes it reject a wrong one. ``modalities`` declares the
DICOM peers Orthanc may send to (e.g. the agent's SCP, for a routing test). Where ``Orthanc`` is not
installed the fixture skips, except with ``CI`` set, where it fails (CI installs it).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, require

__all__ = [
    "OrthancServer",
    "find_dicomweb_plugin",
    "find_orthanc",
    "orthanc",
    "require_orthanc",
    "require_orthanc_dicomweb",
    "start_orthanc",
]

log = logging.getLogger(__name__)

_CANDIDATES = ("Orthanc", "/usr/sbin/Orthanc", "/usr/bin/Orthanc")
#: Where Debian's ``orthanc-dicomweb`` puts the plugin.
_DICOMWEB_PLUGINS = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)
#: Root of the DICOMweb API on Orthanc's HTTP port.
DICOMWEB_ROOT = "/dicom-web"


def find_orthanc() -> str | None:
    """Path of the Orthanc binary, or None."""
    for candidate in _CANDIDATES:
        path = shutil.which(candidate)
        if path is not None:
            return path
    return None


def find_dicomweb_plugin() -> Path | None:
    """Path of Orthanc's DICOMweb plugin, or None."""
    return next((path for path in _DICOMWEB_PLUGINS if path.is_file()), None)


@dataclass
class OrthancServer:
    """A running Orthanc: its DICOM endpoint, its REST API and its files."""

    aet: str
    host: str
    dicom_port: int
    http_port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (only served when started with ``dicomweb=True``)."""
        return f"{self.base_url}{DICOMWEB_ROOT}"

    @property
    def log_path(self) -> Path:
        return self.directory / "orthanc.log"

    def get(self, path: str) -> Any:
        """GET ``path`` from the REST API and decode the JSON answer."""
        with urllib.request.urlopen(f"{self.base_url}{path}", timeout=10) as response:  # noqa: S310
            return json.loads(response.read().decode())

    def post(self, path: str, body: Any) -> Any:
        """POST JSON ``body`` to ``path`` and decode the JSON answer."""
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read().decode())

    def study_uids(self) -> list[str]:
        """StudyInstanceUID of every study stored."""
        return [
            self.get(f"/studies/{sid}")["MainDicomTags"]["StudyInstanceUID"] for sid in self.get("/studies")
        ]

    def series_of_study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Orthanc's description (MainDicomTags, Instances) of each series of one study."""
        for study in self.get("/studies?expand"):
            if study["MainDicomTags"]["StudyInstanceUID"] == study_instance_uid:
                return list(self.get(f"/studies/{study['ID']}/series"))
        return []

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        """Terminate Orthanc (SIGTERM, then SIGKILL) and wait for it."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)


def _config(
    directory: Path,
    *,
    aet: str,
    dicom_port: int,
    http_port: int,
    check_called_aet: bool,
    modalities: Mapping[str, tuple[str, str, int]],
    dicomweb_plugin: Path | None,
) -> dict[str, Any]:
    dicomweb = {
        "Plugins": [str(dicomweb_plugin)],
        "DicomWeb": {"Enable": True, "Root": f"{DICOMWEB_ROOT}/", "EnableWado": False, "Ssl": False},
    }
    return {
        "Name": "spine-agent-test-pacs",
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "index"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "HttpServerEnabled": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomCheckCalledAet": check_called_aet,
        "DicomCheckModalityHost": False,
        "DicomModalities": {name: list(peer) for name, peer in modalities.items()},
        "Plugins": [],
        **(dicomweb if dicomweb_plugin is not None else {}),
        "SaveJobs": False,
        "StorageCompression": False,
        "UnknownSopClassAccepted": False,
    }


def start_orthanc(
    directory: Path,
    *,
    aet: str = "ORTHANC",
    check_called_aet: bool = False,
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    dicom_port: int | None = None,
    http_port: int | None = None,
    dicomweb: bool = False,
    startup_timeout_s: float = 60.0,
) -> OrthancServer:
    """Start Orthanc with its files under ``directory``; ports are free loopback ports unless given.

    ``modalities`` maps a name to ``(AE title, host, port)``; ``dicomweb`` loads the DICOMweb plugin.
    Raises ``FileNotFoundError`` when Orthanc (or the plugin asked for) is not installed and
    ``RuntimeError`` (with the end of its log) when it does not come up in time.
    """
    binary = find_orthanc()
    if binary is None:
        raise FileNotFoundError("Orthanc is not installed (Debian package 'orthanc')")
    plugin = find_dicomweb_plugin() if dicomweb else None
    if dicomweb and plugin is None:
        raise FileNotFoundError("Orthanc's DICOMweb plugin is missing (Debian package 'orthanc-dicomweb')")
    directory.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = http_port or free_port()
    config_path = directory / "orthanc.json"
    config = _config(
        directory,
        aet=aet,
        dicom_port=dicom_port,
        http_port=http_port,
        check_called_aet=check_called_aet,
        modalities=modalities or {},
        dicomweb_plugin=plugin,
    )
    config_path.write_text(json.dumps(config, indent=2))
    log_file = (directory / "orthanc.log").open("wb")
    process = subprocess.Popen([binary, str(config_path)], stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    server = OrthancServer(aet, "127.0.0.1", dicom_port, http_port, directory, process)
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            break
        try:
            server.get("/system")
            with socket.create_connection((server.host, dicom_port), timeout=1):
                pass  # the DICOM listener may come up after the REST API
            log.debug("Orthanc %s up on DICOM %d, HTTP %d", aet, dicom_port, http_port)
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    server.stop()
    tail = server.log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"Orthanc did not start within {startup_timeout_s} s; log ends:\n{tail}")


def require_orthanc() -> None:
    """Skip the calling test where Orthanc is absent; fail instead when ``CI`` is set."""
    require(find_orthanc() is not None, "Orthanc is not installed (Debian package 'orthanc')")


def require_orthanc_dicomweb() -> None:
    """Like :func:`require_orthanc`, for Orthanc with its DICOMweb plugin."""
    require_orthanc()
    require(find_dicomweb_plugin() is not None, "the DICOMweb plugin is not installed (orthanc-dicomweb)")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A fresh Orthanc for one test, stopped afterwards."""
    require_orthanc()
    server = start_orthanc(tmp_path / "orthanc")
    try:
        yield server
    finally:
        server.stop()
