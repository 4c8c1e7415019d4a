"""Support for the reproducing tests of issue 16 (``test_fix_*.py``): the agent as a process, DCMTK peers.

``python -m tests.reliability.fix_support serve CONFIG`` runs the ``spine-agent serve`` command itself
(typer CLI, config file, logging, signals, SCP, scheduler, worker, sender, HTTP) with one substitution:
the engine is :class:`StandInEngine`, which labels a box in the middle of the volume after
``SPINE_FIX_ENGINE_DELAY_S`` seconds and appends what it was given (slice count, source SOP Instance
UIDs) as one JSON line to ``SPINE_FIX_ENGINE_LOG``. The real engine takes minutes per series on a CPU
and is tested elsewhere; these tests are about what happens around it.

The subprocess imports the code of the tree this file is in (``PYTHONPATH`` is set to it), so copying
the tests into a checkout of an older commit shows them failing there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicom_io.result import Landmark, Result
from dicom_io.volume import Volume
from storage import Ledger
from tests.conftest import free_port, require_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
ENGINE_DELAY_ENV = "SPINE_FIX_ENGINE_DELAY_S"
ENGINE_LOG_ENV = "SPINE_FIX_ENGINE_LOG"
#: A full UID (at least three components, 16+ characters) in text.
FULL_UID = re.compile(r"(?<![\w.])[0-9]+(?:\.[0-9]+){2,}(?![0-9])")


class StandInEngine:
    """Labels L1 (VerSe 20) as a box in the middle of the volume; records its input."""

    def __init__(self, delay_s: float, record: Path | None) -> None:
        self.delay_s = delay_s
        self.record = record
        self.plan = type("Plan", (), {"version": "fix-stand-in"})()

    def predict(self, volume: Volume) -> Result:
        if self.record is not None:
            uids = list(volume.source.sop_instance_uids) if volume.source else []
            with self.record.open("a") as handle:
                handle.write(json.dumps({"slices": int(volume.shape[0]), "sop_uids": uids}) + "\n")
        time.sleep(self.delay_s)
        mask = np.zeros(volume.shape, np.uint8)
        k, j, i = (max(1, n // 3) for n in volume.shape)
        mask[k : 2 * k + 1, j : 2 * j + 1, i : 2 * i + 1] = 20
        centre = volume.index_to_lps([n / 2 for n in volume.shape[::-1]])
        landmark = Landmark(20, (float(centre[0]), float(centre[1]), float(centre[2])), 0.9)
        return Result(mask=mask, landmarks=[landmark], timings={"stage1": self.delay_s}, model_version="fix")


def _serve(config: str) -> None:  # pragma: no cover - runs in the agent subprocess
    import agent.service.service as service_module
    from agent.cli.app import main

    delay = float(os.environ.get(ENGINE_DELAY_ENV, "0.2"))
    record = os.environ.get(ENGINE_LOG_ENV)
    engine = StandInEngine(delay, Path(record) if record else None)
    service_module.load_engine = lambda settings: engine  # type: ignore[assignment]
    sys.argv = ["spine-agent", "--config", config, "serve", "--grace", "0"]
    main()


@dataclass
class Agent:
    """``spine-agent serve`` (stand-in engine) with its own config, spool, ledger and log."""

    directory: Path
    dicom_port: int
    http_port: int
    sections: dict[str, dict[str, Any]]
    destinations: list[dict[str, Any]] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    engine_delay_s: float = 0.2
    #: Run inside ``unshare`` with the spool on a tmpfs of this many KiB (None: plain process).
    tmpfs_kib: int | None = None

    @property
    def spool(self) -> Path:
        return Path(self.sections["storage"]["spool_dir"])

    @property
    def ledger_url(self) -> str:
        return str(self.sections["ledger"]["url"])

    @property
    def log_path(self) -> Path:
        return self.directory / "agent.log"

    @property
    def engine_log(self) -> Path:
        return self.directory / "engine.jsonl"

    @property
    def config(self) -> Path:
        return self.directory / "agent.toml"

    def write_config(self) -> None:
        lines: list[str] = []
        for name, values in self.sections.items():
            lines.append(f"[{name}]")
            lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        for dest in self.destinations:
            lines.append("[[destinations]]")
            lines.extend(f"{key} = {json.dumps(value)}" for key, value in dest.items())
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 90.0, *, wait_ready: bool = True) -> None:
        self.write_config()
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
            ENGINE_DELAY_ENV: str(self.engine_delay_s),
            ENGINE_LOG_ENV: str(self.engine_log),
        }
        command = [sys.executable, "-m", "tests.reliability.fix_support", "serve", str(self.config)]
        if self.tmpfs_kib is not None:
            self.spool.mkdir(parents=True, exist_ok=True)
            script = f"mount -t tmpfs -o size={self.tmpfs_kib}k tmpfs {self.spool} && exec " + " ".join(
                f"'{part}'" for part in command
            )
            command = [require_tool("unshare"), "--user", "--map-root-user", "--mount", "sh", "-c", script]
        handle = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, cwd=self.directory, env=env
        )
        if wait_ready:
            wait_for(self._listening, timeout_s, poll_s=0.2, what=f"agent to listen\n{self.log_tail()}")

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"agent exited early:\n{self.log_tail()}")
        status, _ = self.http_get("/readyz")
        checks = self.readyz()[1].get("checks", {}) if status in (200, 503) else {}
        return bool(checks.get("worker", {}).get("ok"))

    def kill(self) -> None:
        """SIGKILL, as a crash or systemd's last resort."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def in_namespace(self, shell: str) -> subprocess.CompletedProcess[str]:
        """Run ``shell`` in the agent's mount namespace (where its tmpfs spool is mounted)."""
        assert self.process is not None and self.tmpfs_kib is not None
        nsenter = require_tool("nsenter")
        return subprocess.run(
            [nsenter, "-t", str(self.process.pid), "-U", "-m", "--preserve-credentials", "sh", "-c", shell],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def ledger(self) -> Ledger:
        return Ledger(self.ledger_url)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def engine_calls(self) -> list[dict[str, Any]]:
        if not self.engine_log.exists():
            return []
        return [json.loads(line) for line in self.engine_log.read_text().splitlines() if line.strip()]

    def http_get(self, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=timeout_s) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""

    def readyz(self) -> tuple[int, dict[str, Any]]:
        status, body = self.http_get("/readyz")
        try:
            return status, json.loads(body) if body else {}
        except ValueError:
            return status, {}


def make_agent(
    directory: Path,
    *,
    stable_age_s: float = 2.0,
    destination_port: int | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    engine_delay_s: float = 0.2,
    tmpfs_kib: int | None = None,
) -> Agent:
    directory.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    sections: dict[str, dict[str, Any]] = {
        "dicom": {
            "ae_title": "SPINEAGENT",
            "bind_address": "127.0.0.1",
            "port": dicom_port,
            "allowed_calling_aes": ["STORESCU", "ECHOSCU", "FIXTEST"],
            "stable_age_s": stable_age_s,
        },
        "storage": {"spool_dir": str(directory / "spool"), "disk_reserve_mb": 0},
        "ledger": {"url": f"sqlite:///{directory / 'ledger.sqlite3'}", "lease_s": 900.0},
        "delivery": {"retry_base_s": 1.0, "retry_cap_s": 2.0},
        "retention": {"interval_s": 3600.0},
        # The fixes' synthetic series are small (12-18 slices): every one is processed, as before routing.
        "routing": {"enabled": False},
        "http": {"bind_address": "127.0.0.1", "port": http_port},
        "logging": {"format": "json", "level": "INFO"},
    }
    for name, values in (overrides or {}).items():
        sections.setdefault(name, {}).update(values)
    destinations = []
    if destination_port is not None:
        destinations.append(
            {"name": "dest", "ae_title": "STORESCP", "host": "127.0.0.1", "port": destination_port}
        )
    return Agent(
        directory,
        dicom_port,
        http_port,
        sections,
        destinations,
        engine_delay_s=engine_delay_s,
        tmpfs_kib=tmpfs_kib,
    )


def storescu(
    port: int, files: Sequence[Path], *, calling_ae: str = "STORESCU", check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Send with DCMTK's storescu, as a PACS would."""
    result = subprocess.run(
        [require_tool("storescu"), "-aet", calling_ae, "-aec", "SPINEAGENT", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@dataclass
class StoreSCP:
    """DCMTK storescp as the destination; every received instance is its own file (``+uf``)."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_storescp(folder: Path, *, on_reception: str | None = None) -> StoreSCP:
    """storescp on a free port; ``on_reception`` runs synchronously after each file (``#f`` = its name)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [require_tool("storescp"), "-aet", "STORESCP", "+uf", "-od", str(folder)]
    if on_reception:
        command += ["-xcr", on_reception, "-xs"]
    process = subprocess.Popen(
        [*command, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder
    )
    wait_for(lambda: _port_open(port), 10, poll_s=0.1, what="storescp to listen")
    return StoreSCP(port, folder, process)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(
    predicate: Callable[[], object], timeout_s: float, poll_s: float = 0.3, what: str = "it"
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def copy_series(files: Sequence[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(f, folder / f.name)) for f in files]


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        _serve(sys.argv[2])
    else:
        raise SystemExit("usage: python -m tests.reliability.fix_support serve CONFIG")
