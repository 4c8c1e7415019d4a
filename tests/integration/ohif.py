"""The OHIF Viewer v3 as a radiologist opens it, on loopback: its prebuilt files, a small server, Chromium.

* :data:`OHIF_VERSION` is the ``@ohif/app`` release the tests use. ``.ci/run`` fetches it with
  ``npm pack`` into ``.cache/ohif/`` (ignored by git); :func:`require_ohif_dist` finds its ``dist/``
  there (or at ``$SPINE_AGENT_OHIF_DIST``), skips without it and fails with ``CI`` set. Nothing is
  downloaded at test time.
* :class:`OhifServer` serves ``dist/`` as static files, answers the viewer's routes (``/viewer?...``)
  with ``index.html``, serves an ``app-config.js`` of its own (:func:`app_config`: one DICOMweb data
  source, the first-visit tour off) and forwards ``/dicom-web/...`` to Orthanc's DICOMweb plugin, so the
  browser sees one origin and Orthanc needs no CORS.
* :func:`chromium` starts Debian's headless Chromium (Selenium, as the dashboard test does) with WebGL
  on SwiftShader, the software rasterizer, and every name but loopback unresolvable.
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import os
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import free_port, require, require_module, require_tool

__all__ = [
    "CHROMIUM_FLAGS",
    "OHIF_DIST_ENV",
    "OHIF_VERSION",
    "OhifServer",
    "app_config",
    "chromium",
    "find_ohif_dist",
    "require_ohif_dist",
]

log = logging.getLogger(__name__)

#: The ``@ohif/app`` version fetched by ``.ci/run`` (keep the two in step).
OHIF_VERSION = "3.13.2"
#: Environment variable naming another ``dist/`` folder of the same version.
OHIF_DIST_ENV = "SPINE_AGENT_OHIF_DIST"
_DEFAULT_DIST = Path(__file__).resolve().parents[2] / ".cache" / "ohif" / "package" / "dist"

#: Headless Chromium as root in a container: WebGL through SwiftShader (no GPU), no network but loopback.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--use-angle=swiftshader",
    "--use-gl=angle",
    "--enable-unsafe-swiftshader",
    "--disable-gpu-sandbox",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def find_ohif_dist() -> Path | None:
    """The ``dist/`` folder of ``@ohif/app`` :data:`OHIF_VERSION`, or None when it is not there."""
    configured = os.environ.get(OHIF_DIST_ENV)
    dist = Path(configured) if configured else _DEFAULT_DIST
    package = dist.parent / "package.json"
    if not (dist / "index.html").is_file() or not package.is_file():
        return None
    version = json.loads(package.read_text()).get("version")
    if version != OHIF_VERSION:
        log.warning("OHIF at %s is %s, not %s", dist, version, OHIF_VERSION)
        return None
    return dist


def require_ohif_dist() -> Path:
    """:func:`find_ohif_dist`, skipping the calling test without it (failing where ``CI`` is set)."""
    dist = find_ohif_dist()
    if dist is None:
        message = (
            f"@ohif/app {OHIF_VERSION} is not in {os.environ.get(OHIF_DIST_ENV) or _DEFAULT_DIST}; "
            f"fetch it as .ci/run does (npm pack @ohif/app@{OHIF_VERSION})"
        )
        require(False, message)
        raise AssertionError(message)  # not reached: require() skipped or failed
    return dist


def app_config(dicomweb_root: str = "/dicom-web") -> str:
    """OHIF's ``window.config``: one DICOMweb data source at ``dicomweb_root``, no first-visit tour."""
    source = {
        "friendlyName": "Orthanc (test PACS)",
        "name": "orthanc",
        "wadoUriRoot": dicomweb_root,
        "qidoRoot": dicomweb_root,
        "wadoRoot": dicomweb_root,
        "qidoSupportsIncludeField": False,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "omitQuotationForMultipartRequest": True,
        "bulkDataURI": {"enabled": True},
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        # The onboarding tour would cover the viewport on a first visit, which every test run is.
        "customizationService": [{"ohif.tours": {"$set": []}}],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "orthanc",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "orthanc",
                "configuration": source,
            }
        ],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static ``dist/`` with an ``index.html`` fallback, our ``app-config.js``, ``/dicom-web`` forwarded."""

    server: _OhifHttpServer
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
    }

    def __init__(self, request: Any, client_address: Any, server: _OhifHttpServer) -> None:
        super().__init__(request, client_address, server, directory=str(server.dist))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("ohif http: %s", format % args)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/dicom-web/"):
            self._forward()
        elif path == "/app-config.js":
            self._send(200, "text/javascript", self.server.app_config)
        else:
            if path == "/" or not (self.server.dist / path.lstrip("/")).is_file():
                self.path = "/index.html"  # the viewer's own routes: /viewer, /segmentation, ...
            super().do_GET()

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self) -> None:
        upstream = self.server.upstream
        connection = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
            target = upstream.path.rstrip("/") + self.path[len("/dicom-web") :]
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status >= 400:
            log.info("DICOMweb %s -> %d", self.path, response.status)
        self._send(response.status, response.getheader("Content-Type", "application/octet-stream"), body)


class _OhifHttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dist: Path, config: str, upstream: str) -> None:
        self.dist = dist
        self.app_config = config.encode()
        self.upstream = urllib.parse.urlsplit(upstream)
        super().__init__(address, _Handler)


@dataclass
class OhifServer:
    """OHIF served on a loopback port, reading the studies of ``dicomweb_url`` (Orthanc's DICOMweb root)."""

    dist: Path
    dicomweb_url: str
    port: int = 0
    _server: _OhifHttpServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def viewer_url(self, study_instance_uid: str) -> str:
        """The viewer (OHIF's default, measurement-tracking mode) opened on one study."""
        return f"{self.url}/viewer?StudyInstanceUIDs={study_instance_uid}"

    def start(self) -> OhifServer:
        self.port = self.port or free_port()
        self._server = _OhifHttpServer(("127.0.0.1", self.port), self.dist, app_config(), self.dicomweb_url)
        threading.Thread(target=self._server.serve_forever, name="ohif-http", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def chromium(profile_dir: Path, *, width: int = 1600, height: int = 1000) -> Any:
    """A Selenium-driven headless Chromium with a fresh profile; the caller quits it."""
    binary = require_tool("chromium")
    driver_binary = require_tool("chromedriver")
    webdriver = require_module("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_binary))
    driver.set_page_load_timeout(60)
    return driver
