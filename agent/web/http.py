"""The health and Prometheus metrics endpoint (``[http]`` in the configuration).

* ``GET /healthz``: the process is alive -> ``200 ok``.
* ``GET /readyz``: ``200`` when the agent can take work: the ledger answers, the spool is writable, the
  engine is loaded and the spool's disk has more free space than ``storage.disk_reserve_mb``; otherwise
  ``503``. Both answer a JSON body naming each check, e.g.
  ``{"ready": false, "checks": {"ledger": {"ok": true, "detail": "reachable"}, ...}}``.
* ``GET /metrics``: the Prometheus text format of :data:`agent.web.metrics.REGISTRY`; the gauges that mirror
  the ledger and the disk are refreshed at each scrape.
* ``/``, ``/dashboard...`` and ``/api/...``: the admin dashboard (:mod:`agent.web.dashboard`), when given one.

The health and metrics answers read no DICOM and no patient data (the dashboard's job pages read a job's
files in the spool: :mod:`agent.web.preview`, :mod:`agent.web.patient_data`). A stdlib
:class:`~http.server.ThreadingHTTPServer` is enough: the endpoint serves a scraper and a load balancer's
probes, not users.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.web import metrics
from agent.web.dashboard import Dashboard, DashboardRequest, DashboardResponse
from config import Settings
from storage import Ledger

log = logging.getLogger(__name__)

#: Bytes in the MiB of ``storage.disk_reserve_mb``.
MIB = 1024 * 1024
#: Largest request body read (and discarded): the dashboard's actions carry none.
MAX_BODY_BYTES = 64 * 1024


class DiskUsage(NamedTuple):
    """What :func:`shutil.disk_usage` returns: bytes of the file system."""

    total: int
    used: int
    free: int


#: Probe of a path's file system; tests replace it to simulate a full disk.
DiskUsageProbe = Callable[[Path], DiskUsage]


def disk_usage(path: Path) -> DiskUsage:
    """:func:`shutil.disk_usage` of ``path``, or of its nearest existing parent."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    total, used, free = shutil.disk_usage(probe)
    return DiskUsage(total, used, free)


@dataclass(frozen=True)
class CheckResult:
    """One readiness check: passed or not, and a short reason (never patient data)."""

    ok: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


#: A readiness check the service adds (e.g. "scp": the Storage SCP listens).
ReadinessCheck = Callable[[], CheckResult]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class Readiness:
    """The checks behind ``/readyz``; each one is cheap (one query, one temp file, one statfs)."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        model_loaded: Callable[[], bool],
        extra_checks: Mapping[str, ReadinessCheck] | None = None,
        disk_probe: DiskUsageProbe = disk_usage,
    ) -> None:
        self.spool_dir = Path(settings.storage.spool_dir)
        self.reserve_bytes = settings.storage.disk_reserve_mb * MIB
        self.ledger = ledger
        self.model_loaded = model_loaded
        self.extra_checks = dict(extra_checks or {})
        self.disk_probe = disk_probe

    def check_ledger(self) -> CheckResult:
        try:
            self.ledger.ping()
        except Exception as exc:  # any driver error means "not reachable"; the reason goes to the body
            return CheckResult(False, f"unreachable: {_first_line(exc)}")
        return CheckResult(True, "reachable")

    def check_spool(self) -> CheckResult:
        if not self.spool_dir.is_dir():
            return CheckResult(False, f"{self.spool_dir} is not a directory")
        try:
            fd, name = tempfile.mkstemp(prefix=".readyz-", dir=self.spool_dir)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                os.unlink(name)
        except OSError as exc:
            return CheckResult(False, f"not writable: {exc.strerror or exc}")
        return CheckResult(True, "writable")

    def check_model(self) -> CheckResult:
        try:
            loaded = bool(self.model_loaded())
        except Exception as exc:
            return CheckResult(False, f"unknown: {_first_line(exc)}")
        return CheckResult(True, "loaded") if loaded else CheckResult(False, "not loaded")

    def check_disk(self) -> CheckResult:
        try:
            free = self.disk_probe(self.spool_dir).free
        except OSError as exc:
            return CheckResult(False, f"cannot read free space: {exc.strerror or exc}")
        detail = f"{free // MIB} MiB free, reserve {self.reserve_bytes // MIB} MiB"
        return CheckResult(free > self.reserve_bytes, detail)

    def run(self) -> dict[str, CheckResult]:
        """Every check by name: ledger, spool, model, disk, then the extra ones."""
        results = {
            "ledger": self.check_ledger(),
            "spool": self.check_spool(),
            "model": self.check_model(),
            "disk": self.check_disk(),
        }
        for name, check in self.extra_checks.items():
            try:
                results[name] = check()
            except Exception as exc:
                results[name] = CheckResult(False, _first_line(exc))
        return results


def refresh_scrape_gauges(ledger: Ledger, spool_dir: Path, disk_probe: DiskUsageProbe = disk_usage) -> None:
    """Refresh what mirrors the ledger and the disk; a failing source is logged, the rest still served."""
    try:
        metrics.refresh_ledger_gauges(ledger)
    except Exception as exc:
        log.warning("metrics: ledger gauges not refreshed: %s", _first_line(exc))
    try:
        metrics.DISK_FREE.set(disk_probe(spool_dir).free)
    except OSError as exc:
        log.warning("metrics: free disk not read: %s", exc.strerror or exc)


class _Handler(BaseHTTPRequestHandler):
    server: _OpsHTTPServer
    server_version = "spine-agent"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        try:
            if path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                results = owner.readiness.run()
                ready = all(r.ok for r in results.values())
                body = {
                    "ready": ready,
                    "checks": {k: r.as_json() for k, r in results.items()},
                    # For information (never makes the agent unready): each destination's last attempt.
                    "destinations": metrics.destination_status(owner.destination_names),
                }
                failed = ", ".join(f"{k} ({r.detail})" for k, r in results.items() if not r.ok)
                owner.note_readiness(failed or None)
                status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
                self._send(status, json.dumps(body).encode() + b"\n", "application/json")
            elif path == "/metrics":
                refresh_scrape_gauges(owner.ledger, owner.readiness.spool_dir, owner.readiness.disk_probe)
                self._send(HTTPStatus.OK, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)
            elif not self._to_dashboard("GET"):
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        except Exception:
            log.exception("http: %s failed", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"body too large\n", "text/plain; charset=utf-8")
            return
        self.rfile.read(length)  # keep the connection in step; nothing reads the body
        try:
            if not self._to_dashboard("POST"):
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        except Exception:
            log.exception("http: POST %s failed", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", "text/plain; charset=utf-8")

    def _to_dashboard(self, method: str) -> bool:
        """Let the dashboard answer; False when there is none or the path is not its."""
        dashboard = self.server.owner.dashboard
        if dashboard is None:
            return False
        path, _, query = self.path.partition("?")
        request = DashboardRequest(
            method, path, query, self.headers.get("Authorization"), self.client_address[0]
        )
        response: DashboardResponse | None = dashboard.handle(request)
        if response is None:
            return False
        self._send(response.status, response.body, response.content_type, response.headers)
        return True

    def _send(
        self, status: HTTPStatus, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if "Cache-Control" not in (headers or {}):
            self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes and scrapes arrive every few seconds; keep them out of the INFO log.
        log.debug("http %s - %s", self.address_string(), format % args)


class _OpsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: HealthServer


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``http.bind_address:http.port``, in a thread.

    With ``dashboard`` it also serves the admin dashboard (:class:`agent.web.dashboard.Dashboard`).

    ``port`` and ``bind_address`` override the configuration (tests pass ``port=0`` for a free port; the
    configuration's ``port = 0`` means the service does not create the server at all).
    """

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        model_loaded: Callable[[], bool],
        extra_checks: Mapping[str, ReadinessCheck] | None = None,
        port: int | None = None,
        bind_address: str | None = None,
        disk_probe: DiskUsageProbe = disk_usage,
        dashboard: Dashboard | None = None,
    ) -> None:
        self.ledger = ledger
        self.dashboard = dashboard
        self.destination_names = [d.name for d in settings.destinations]
        if dashboard is not None:
            dashboard.destinations = list(self.destination_names)
            dashboard.system_status = self.system_status
            dashboard.spool_dir = Path(settings.storage.spool_dir)
            dashboard.show_patient_data = settings.http.show_patient_data
        self.readiness = Readiness(
            settings, ledger, model_loaded=model_loaded, extra_checks=extra_checks, disk_probe=disk_probe
        )
        self.bind_address = bind_address if bind_address is not None else settings.http.bind_address
        self._requested_port = port if port is not None else settings.http.port
        self._server: _OpsHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._last_not_ready: str | None = None

    def system_status(self) -> dict[str, Any]:
        """What the dashboard's system page shows: the readiness checks, free disk, the loaded weights
        version and each destination's last attempt (the same data as /readyz and /metrics)."""
        results = self.readiness.run()
        try:
            free = f"{self.readiness.disk_probe(self.readiness.spool_dir).free / 2**30:.1f} GiB"
        except OSError as exc:
            free = f"unknown ({exc.strerror or exc})"
        return {
            "ready": all(r.ok for r in results.values()),
            "checks": {name: r.as_json() for name, r in results.items()},
            "weights_version": metrics.loaded_model_version(),
            "disk_free": free,
            "destinations": metrics.destination_status(self.destination_names),
        }

    @property
    def port(self) -> int:
        """The port listened on (the real one when 0 was asked for)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.bind_address if self.bind_address not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind and serve in a daemon thread; raises OSError when the address is taken."""
        if self._server is not None:
            return
        server = _OpsHTTPServer((self.bind_address, self._requested_port), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True
        )
        self._thread.start()
        dashboard = ""
        if self.dashboard is not None:
            mode = "actions enabled" if self.dashboard.actions_enabled else "read-only"
            dashboard = f" /dashboard ({mode})"
        log.info("http: /healthz /readyz /metrics%s on %s", dashboard, self.url)

    def stop(self) -> None:
        """Stop serving and close the socket; idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None
        log.info("http: stopped")

    def note_readiness(self, failed: str | None) -> None:
        """Log readiness changes once (probes repeat every few seconds); ``failed`` None = ready."""
        if failed == self._last_not_ready:
            return
        previous, self._last_not_ready = self._last_not_ready, failed
        if failed is not None:
            log.warning("not ready: %s", failed)
        elif previous is not None:
            log.info("ready again")
