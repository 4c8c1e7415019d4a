"""Receive: DCMTK ``storescu`` sends one CT series to DCMTK ``storescp`` and to ``spine-agent serve``.

Each run starts a fresh receiver with a fresh output folder (storescp) or a fresh spool and SQLite
ledger (the agent), waits until it listens, then times ``storescu`` from start to exit: one association
carrying every file (and, for the 4-association figure, four ``storescu`` at once with a quarter of the
files each, timed until the last exits). Receivers alternate (storescp, agent, storescp, agent, ...).

The agent's figure includes what it does before each C-STORE response: the spool write with fsync, the
SHA-256 and the ledger update. storescp writes the file and answers (no fsync).

Two storescp peers: ``storescp`` as installed, and ``storescp`` with ``TCP_NODELAY=1`` in its environment
(DCMTK then disables Nagle's algorithm on its sockets). On loopback the default one waits for the
delayed ACK (~40 ms) after each C-STORE response, so it is an easy peer (about 11 MB/s here); the
TCP_NODELAY one is the peer that counts. storescu is the same program with the same environment for all.
The agent's quiet time is set far beyond the run, so no job starts while it receives.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import ROOT, Figure, free_port, interleave, median_of, values_of

CALLING_AE = "STORESCU"


@dataclass
class Series:
    folder: Path
    files: list[Path]

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def write_series(folder: Path, slices: int, size: int) -> Series:
    """The project's synthetic CT writer (``tests/dicom_io/ct_series.py``): int16, explicit VR LE."""
    sys.path.insert(0, str(ROOT))
    from tests.dicom_io.ct_series import write_ct_series

    ct = write_ct_series(folder, slices=slices, rows=size, columns=size, slice_step=1.0)
    return Series(folder, list(ct.files))


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early (rc {process.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on {port} within {timeout_s} s")


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def send(port: int, called_ae: str, batches: list[list[Path]]) -> float:
    """Seconds from starting ``len(batches)`` storescu at once (one association each) to the last exit."""
    commands = [
        ["storescu", "-aet", CALLING_AE, "-aec", called_ae, "127.0.0.1", str(port), *map(str, batch)]
        for batch in batches
    ]
    start = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in commands]
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    seconds = time.perf_counter() - start
    for proc, out in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            text = out.decode(errors="replace")[-2000:]
            raise RuntimeError(f"storescu failed (rc {proc.returncode}): {text}")
    return seconds


def storescp_run(
    workdir: Path, batches: list[list[Path]], nodelay: bool = True
) -> Callable[[int], dict[str, float]]:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"

    def run(index: int) -> dict[str, float]:
        out = workdir / f"storescp-{'nodelay' if nodelay else 'default'}-{index}"
        out.mkdir(parents=True)
        port = free_port()
        proc = subprocess.Popen(
            ["storescp", "--output-directory", str(out), "-aet", "STORESCP", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            _wait_port(port, proc, 30.0, "storescp")
            seconds = send(port, "STORESCP", batches)
        finally:
            _stop(proc)
        stored = len(list(out.iterdir()))
        shutil.rmtree(out, ignore_errors=True)
        expected = sum(len(b) for b in batches)
        if stored != expected:
            raise RuntimeError(f"storescp stored {stored} of {expected} files")
        return {"seconds": seconds}

    return run


def agent_config(directory: Path, dicom_port: int, http_port: int) -> Path:
    config = directory / "agent.toml"
    config.write_text(
        "[dicom]\n"
        f'ae_title = "SPINEAGENT"\nbind_address = "127.0.0.1"\nport = {dicom_port}\n'
        f'allowed_calling_aes = ["{CALLING_AE}"]\n'
        "stable_age_s = 86400\nmax_associations = 16\n"
        "[[destinations]]\n"
        f'name = "nowhere"\nae_title = "NOWHERE"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        "[storage]\n"
        f'spool_dir = "{directory / "spool"}"\ndisk_reserve_mb = 64\n'
        "[ledger]\n"
        f'url = "sqlite:///{directory / "ledger.sqlite3"}"\n'
        "[engine]\ndevice = \"cpu\"\n"
        "[http]\n"
        f'bind_address = "127.0.0.1"\nport = {http_port}\n'
        '[logging]\nformat = "json"\nlevel = "INFO"\n'
    )
    return config


def start_agent(directory: Path, timeout_s: float = 180.0) -> tuple[subprocess.Popen[bytes], int, float]:
    """``spine-agent serve`` with its own config, spool and ledger: (process, DICOM port, ready after s)."""
    directory.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = agent_config(directory, dicom_port, http_port)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    with (directory / "agent.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--config", str(config), "serve", "--grace", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env=env,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited early:\n{(directory / 'agent.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return proc, dicom_port, time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    _stop(proc)
    raise RuntimeError(f"agent not ready in {timeout_s} s:\n{(directory / 'agent.log').read_text()[-3000:]}")


def agent_run(workdir: Path, batches: list[list[Path]]) -> Callable[[int], dict[str, float]]:
    def run(index: int) -> dict[str, float]:
        directory = workdir / f"agent-{index}"
        proc, port, ready_s = start_agent(directory)
        try:
            seconds = send(port, "SPINEAGENT", batches)
        finally:
            _stop(proc)
        stored = len(list((directory / "spool").rglob("*.dcm")))
        expected = sum(len(b) for b in batches)
        shutil.rmtree(directory, ignore_errors=True)
        if stored != expected:
            raise RuntimeError(f"the agent spooled {stored} of {expected} files")
        return {"seconds": seconds, "ready_s": ready_s}

    return run


def split(files: list[Path], parts: int) -> list[list[Path]]:
    return [files[i::parts] for i in range(parts)]


def bench(
    series: Series, workdir: Path, runs: int, associations: tuple[int, ...], size: int = 512
) -> list[Figure]:
    """One association carries ``series``; n > 1 associations each carry their own series of
    ``len(series.files) // n`` slices (written here), all at once: the same number of instances.

    (n associations carrying parts of one *new* series race to open its first version in the ledger and
    some C-STOREs fail with 0xC211, IntegrityError; docs/performance.md. So the parts are separate series.)
    """
    figures = []
    for n in associations:
        if n == 1:
            batches = [series.files]
        else:
            parts = [
                write_series(workdir / f"series-{n}-{i}", len(series.files) // n, size) for i in range(n)
            ]
            batches = [p.files for p in parts]
        mb = sum(p.stat().st_size for b in batches for p in b) / 1e6
        samples = interleave(
            runs,
            [
                ("storescp", storescp_run(workdir, batches, nodelay=True)),
                ("agent", agent_run(workdir, batches)),
                ("storescp-default", storescp_run(workdir, batches, nodelay=False)),
            ],
        )
        ours = [{"mbs": mb / s["seconds"]} for s in samples["agent"]]
        ready_s = median_of(samples["agent"], "ready_s")
        for key, peer_name, goal in (
            ("storescp", "DCMTK storescp TCP_NODELAY=1", 1.0),
            ("storescp-default", "DCMTK storescp as installed", None),
        ):
            peer = [{"mbs": mb / s["seconds"]} for s in samples[key]]
            figures.append(receive_figure(series, n, ours, peer, peer_name, goal, runs, mb, ready_s))
    return figures


def receive_figure(
    series: Series,
    n: int,
    ours: list[dict[str, float]],
    peer: list[dict[str, float]],
    peer_name: str,
    goal: float | None,
    runs: int,
    mb: float,
    ready_s: float,
) -> Figure:
    return Figure(
        section="receive",
        name=f"{len(series.files)} x {series_size(series)} CT, {n} association{'s' * (n > 1)}"
        + (f" ({n} series)" if n > 1 else ""),
        unit="MB/s",
        ours=median_of(ours, "mbs"),
        peer=median_of(peer, "mbs"),
        peer_name=peer_name,
        better="higher",
        runs=runs,
        goal=goal,
        note=f"{mb:.0f} MB uncompressed; agent ready in {ready_s:.1f} s (not timed); "
        "ours includes fsync + SHA-256 + ledger, storescp no fsync",
        ours_runs=values_of(ours, "mbs"),
        peer_runs=values_of(peer, "mbs"),
    )


def series_size(series: Series) -> str:
    from pydicom import dcmread

    ds = dcmread(series.files[0], stop_before_pixels=True)
    return f"{ds.Rows}x{ds.Columns}"
