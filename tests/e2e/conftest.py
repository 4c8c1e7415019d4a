"""A real agent (``spine-agent serve`` in a subprocess) with a real Orthanc as its PACS destination."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inference.phantoms import Phantom, generate_phantom, write_dicom_series
from inference.phantoms.dicom_writer import SeriesInfo, series_info
from storage import Job, JobState, Ledger
from tests.conftest import free_port, require_tool
from tests.integration.orthanc import orthanc  # noqa: F401  (fixture)

#: A lumbar phantom at a clinical-ish but small resolution: ~2 s to make, ~100 slices.
PHANTOM_SEED = 910_001
PHANTOM_SPACING = (1.5, 1.5, 3.0)


@dataclass
class PhantomSeries:
    phantom: Phantom
    files: list[Path]
    info: SeriesInfo


@pytest.fixture(scope="session")
def phantom_series(tmp_path_factory: pytest.TempPathFactory) -> PhantomSeries:
    folder = tmp_path_factory.mktemp("phantom-series")
    phantom = generate_phantom(seed=PHANTOM_SEED, fov="lumbar", spacing=PHANTOM_SPACING)
    files = write_dicom_series(phantom, folder)
    return PhantomSeries(phantom, files, series_info(phantom))


@dataclass
class AgentProcess:
    """``spine-agent serve`` running with its own config, spool and ledger."""

    directory: Path
    config: Path
    dicom_port: int
    http_port: int
    ledger_url: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    logs: list[str] = field(default_factory=list)
    #: When set, the engine waits inside each job until this file exists (tests/e2e/gated_agent.py);
    #: ``<gate>.entered`` appears when a job reaches it.
    engine_gate: Path | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.log_path.open("ab")
        args = ["--config", str(self.config), "serve", "--grace", "0"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.engine_gate is None:
            command = [sys.executable, "-m", "agent.cli", *args]
        else:
            command = [sys.executable, "-m", "tests.e2e.gated_agent", str(self.engine_gate), *args]
            repo = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
        self.process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            env=env,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited early:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"agent not ready in {timeout_s} s:\n{self.log_path.read_text()}")

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def ledger(self) -> Ledger:
        return Ledger(self.ledger_url)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def make_agent(directory: Path, destination_port: int, *, stable_age_s: float = 1.0) -> AgentProcess:
    directory.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    ledger_url = f"sqlite:///{directory / 'ledger.sqlite3'}"
    config = directory / "agent.toml"
    config.write_text(
        "[dicom]\n"
        f'ae_title = "SPINEAGENT"\nbind_address = "127.0.0.1"\nport = {dicom_port}\n'
        'allowed_calling_aes = ["STORESCU"]\n'
        f"stable_age_s = {stable_age_s}\n"
        "[[destinations]]\n"
        f'name = "orthanc"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {destination_port}\n'
        "[storage]\n"
        f'spool_dir = "{directory / "spool"}"\ndisk_reserve_mb = 64\n'
        "[ledger]\n"
        f'url = "{ledger_url}"\nlease_s = 30.0\n'
        "[delivery]\nretry_base_s = 1.0\nretry_cap_s = 4.0\n"
        "[http]\n"
        f'bind_address = "127.0.0.1"\nport = {http_port}\n'
        '[logging]\nformat = "json"\nlevel = "INFO"\n'
    )
    return AgentProcess(directory, config, dicom_port, http_port, ledger_url, directory / "agent.log")


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def storescu(port: int, files: list[Path], calling_ae: str = "STORESCU") -> None:
    """Send with DCMTK's storescu, as an outside PACS would."""
    binary = require_tool("storescu")
    result = subprocess.run(
        [binary, "-aet", calling_ae, "-aec", "SPINEAGENT", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def wait_for(predicate, timeout_s: float, poll_s: float = 0.5, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def read_json(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())


def run_one_series(agent: AgentProcess, files: list[Path]) -> Job:
    """Start ``agent``, send it ``files`` with storescu and wait for its one job: SUCCEEDED, read afresh."""
    agent.start()
    storescu(agent.dicom_port, files)
    ledger = agent.ledger()
    wait_for(
        lambda: any(j.state in (JobState.SUCCEEDED, JobState.FAILED) for j in ledger.list_jobs()),
        300,
        what="the job to finish",
    )
    (job,) = ledger.list_jobs()
    job = ledger.get_job(job.id)
    assert job.state == JobState.SUCCEEDED, job.failure_reason
    return job
