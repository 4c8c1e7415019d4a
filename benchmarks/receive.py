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
TCP_NODELAY one is the peer that counts. storescu is the same program with the same environment for all,
``TCP_NODELAY=1`` included since 2026-12-07 (before that the sender's Nagle stalls made storescp look
slow on compressed files; the uncompressed figures of earlier records were sent without it).
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


#: Compressed transfer syntaxes of the receive and load sections: name -> (UID, label). Both lossless, both
#: accepted by the agent's SCP (``agent.service.scp.SUPPORTED_TRANSFER_SYNTAXES``); pydicom encodes them
#: with the project's own dependencies (pyjpegls, which highdicom requires, and pylibjpeg-openjpeg).
COMPRESSED = {
    "jpeg-ls": ("1.2.840.10008.1.2.4.80", "JPEG-LS lossless"),
    "jpeg2000": ("1.2.840.10008.1.2.4.90", "JPEG 2000 lossless"),
}
#: storescp's option to prefer (and so accept) each of them: as installed it accepts only uncompressed
#: syntaxes, and with ``+xa`` it still picks Explicit VR Little Endian, which storescu cannot convert to.
STORESCP_PREFER = {"jpeg-ls": "+xt", "jpeg2000": "+xv"}
#: storescu's option to propose each of them (as installed it proposes only uncompressed syntaxes and
#: cannot decompress these to send them so).
STORESCU_PROPOSE = {"jpeg-ls": "-xt", "jpeg2000": "-xv"}


def compress_series(series: Series, folder: Path, syntax: str) -> Series:
    """The same instances (same UIDs, same pixels) re-encoded in ``COMPRESSED[syntax]``, one file each."""
    from pydicom import dcmread

    uid = COMPRESSED[syntax][0]
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for path in series.files:
        ds = dcmread(path)
        ds.compress(uid, generate_instance_uid=False)  # the same instance, re-encoded losslessly
        out = folder / path.name
        ds.save_as(out, enforce_file_format=True)
        files.append(out)
    return Series(folder, files)


def transfer_syntax_of(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


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


def send(port: int, called_ae: str, batches: list[list[Path]], syntax: str = "") -> float:
    """Seconds from starting ``len(batches)`` storescu at once (one association each) to the last exit."""
    propose = [STORESCU_PROPOSE[syntax]] if syntax else []
    commands = [
        ["storescu", *propose, "-aet", CALLING_AE, "-aec", called_ae, "127.0.0.1", str(port)]
        + [str(p) for p in batch]
        for batch in batches
    ]
    # The sender runs with Nagle off too (the same for every receiver): without it storescu's last small
    # write of each instance waits for the receiver's delayed ACK, which storescp (not pynetdicom) then
    # pays on JPEG-LS/JPEG 2000 files: 6-13 MB/s instead of 76-128 MB/s (docs/performance.md).
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for c in commands
    ]
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    seconds = time.perf_counter() - start
    for proc, out in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            text = out.decode(errors="replace")[-2000:]
            raise RuntimeError(f"storescu failed (rc {proc.returncode}): {text}")
    return seconds


def storescp_run(
    workdir: Path, batches: list[list[Path]], nodelay: bool = True, syntax: str = ""
) -> Callable[[int], dict[str, float]]:
    """storescp as the receiver; with ``syntax`` (a compressed one) it runs with the option that prefers
    that syntax (``STORESCP_PREFER``) and the run checks that the files it wrote are in it, as sent."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"

    def run(index: int) -> dict[str, float]:
        out = workdir / f"storescp-{'nodelay' if nodelay else 'default'}-{syntax or 'native'}-{index}"
        out.mkdir(parents=True)
        port = free_port()
        accept = [STORESCP_PREFER[syntax]] if syntax else []
        proc = subprocess.Popen(
            ["storescp", *accept, "--output-directory", str(out), "-aet", "STORESCP", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            _wait_port(port, proc, 30.0, "storescp")
            seconds = send(port, "STORESCP", batches, syntax)
        finally:
            _stop(proc)
        written = sorted(out.iterdir())
        stored = len(written)
        wrong = _wrong_syntax(written, syntax)
        shutil.rmtree(out, ignore_errors=True)
        expected = sum(len(b) for b in batches)
        if stored != expected:
            raise RuntimeError(f"storescp stored {stored} of {expected} files")
        if wrong:
            raise RuntimeError(f"storescp wrote {wrong}, not {syntax}")
        return {"seconds": seconds}

    return run


def agent_config(
    directory: Path,
    dicom_port: int,
    http_port: int,
    stable_age_s: float = 86400.0,
    calling_ae: str = CALLING_AE,
    destination: tuple[str, int] | None = None,
) -> Path:
    """The agent's config: its own spool and SQLite ledger; the quiet time far beyond the run unless
    ``stable_age_s`` is given; ``destination`` (AE title, port on loopback) or one that nothing serves."""
    dest_ae, dest_port = destination or ("NOWHERE", free_port())
    config = directory / "agent.toml"
    config.write_text(
        "[dicom]\n"
        f'ae_title = "SPINEAGENT"\nbind_address = "127.0.0.1"\nport = {dicom_port}\n'
        f'allowed_calling_aes = ["{calling_ae}"]\n'
        f"stable_age_s = {stable_age_s}\nmax_associations = 16\n"
        "[[destinations]]\n"
        f'name = "dest"\nae_title = "{dest_ae}"\nhost = "127.0.0.1"\nport = {dest_port}\n'
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
    return start_agent_with(directory, timeout_s=timeout_s)


def start_agent_with(
    directory: Path,
    timeout_s: float = 180.0,
    stable_age_s: float = 86400.0,
    calling_ae: str = CALLING_AE,
    destination: tuple[str, int] | None = None,
) -> tuple[subprocess.Popen[bytes], int, float]:
    """:func:`start_agent` with the settings of :func:`agent_config`."""
    directory.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = agent_config(directory, dicom_port, http_port, stable_age_s, calling_ae, destination)
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


def _wrong_syntax(files: list[Path], syntax: str) -> str:
    """'' when the first and last of ``files`` are in ``COMPRESSED[syntax]`` (or ``syntax`` is '')."""
    if not syntax or not files:
        return ""
    for path in (files[0], files[-1]):
        found = transfer_syntax_of(path)
        if found != COMPRESSED[syntax][0]:
            return f"{path.name} in {found}"
    return ""


def agent_run(
    workdir: Path, batches: list[list[Path]], syntax: str = ""
) -> Callable[[int], dict[str, float]]:
    def run(index: int) -> dict[str, float]:
        directory = workdir / f"agent-{syntax or 'native'}-{index}"
        proc, port, ready_s = start_agent(directory)
        try:
            seconds = send(port, "SPINEAGENT", batches, syntax)
        finally:
            _stop(proc)
        spooled = sorted((directory / "spool").rglob("*.dcm"))
        stored = len(spooled)
        wrong = _wrong_syntax(spooled, syntax)
        expected = sum(len(b) for b in batches)
        shutil.rmtree(directory, ignore_errors=True)
        if stored != expected:
            raise RuntimeError(f"the agent spooled {stored} of {expected} files")
        if wrong:
            raise RuntimeError(f"the agent spooled {wrong}, not {syntax}")
        return {"seconds": seconds, "ready_s": ready_s}

    return run


def split(files: list[Path], parts: int) -> list[list[Path]]:
    return [files[i::parts] for i in range(parts)]


def bench(
    series: Series,
    workdir: Path,
    runs: int,
    associations: tuple[int, ...],
    size: int = 512,
    installed_peer: bool = True,
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
        contestants = [
            ("storescp", storescp_run(workdir, batches, nodelay=True)),
            ("agent", agent_run(workdir, batches)),
        ]
        if installed_peer:
            contestants.append(("storescp-default", storescp_run(workdir, batches, nodelay=False)))
        samples = interleave(runs, contestants)
        ours = [{"mbs": mb / s["seconds"]} for s in samples["agent"]]
        ready_s = median_of(samples["agent"], "ready_s")
        for key, peer_name, goal in (
            ("storescp", "DCMTK storescp TCP_NODELAY=1", 1.0),
            ("storescp-default", "DCMTK storescp as installed", None),
        )[: 1 + installed_peer]:
            peer = [{"mbs": mb / s["seconds"]} for s in samples[key]]
            figures.append(receive_figure(series, n, ours, peer, peer_name, goal, runs, mb, ready_s))
    return figures


def bench_compressed(
    compressed: dict[str, Series], workdir: Path, runs: int, uncompressed_mb: float
) -> list[Figure]:
    """The same series in each compressed syntax, one association: the agent against storescp
    (TCP_NODELAY=1, preferring the syntax), interleaved; MB/s of the compressed bytes, and the ratio."""
    figures = []
    for syntax, series in compressed.items():
        batches = [series.files]
        mb = series.nbytes / 1e6
        samples = interleave(
            runs,
            [
                ("storescp", storescp_run(workdir, batches, nodelay=True, syntax=syntax)),
                ("agent", agent_run(workdir, batches, syntax=syntax)),
            ],
        )
        ours = [{"mbs": mb / s["seconds"]} for s in samples["agent"]]
        peer = [{"mbs": mb / s["seconds"]} for s in samples["storescp"]]
        ready_s = median_of(samples["agent"], "ready_s")
        figures.append(
            mbs_figure(
                f"{len(series.files)} x {series_size(series)} CT {COMPRESSED[syntax][1]}, 1 association",
                ours,
                peer,
                f"DCMTK storescp TCP_NODELAY=1 {STORESCP_PREFER[syntax]}",
                1.0,
                runs,
                f"{mb:.0f} MB compressed ({uncompressed_mb / mb:.2f}:1; MB/s of compressed bytes); "
                f"agent ready in {ready_s:.1f} s (not timed); both keep the syntax as sent",
            )
        )
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
    return mbs_figure(
        f"{len(series.files)} x {series_size(series)} CT, {n} association{'s' * (n > 1)}"
        + (f" ({n} series)" if n > 1 else ""),
        ours,
        peer,
        peer_name,
        goal,
        runs,
        f"{mb:.0f} MB uncompressed; agent ready in {ready_s:.1f} s (not timed); "
        "ours includes fsync + SHA-256 + ledger, storescp no fsync",
    )


def mbs_figure(
    name: str,
    ours: list[dict[str, float]],
    peer: list[dict[str, float]],
    peer_name: str,
    goal: float | None,
    runs: int,
    note: str,
) -> Figure:
    """A receive figure: median MB/s of ours against the peer's (higher is better)."""
    return Figure(
        section="receive",
        name=name,
        unit="MB/s",
        ours=median_of(ours, "mbs"),
        peer=median_of(peer, "mbs"),
        peer_name=peer_name,
        better="higher",
        runs=runs,
        goal=goal,
        note=note,
        ours_runs=values_of(ours, "mbs"),
        peer_runs=values_of(peer, "mbs"),
    )


def series_size(series: Series) -> str:
    from pydicom import dcmread

    ds = dcmread(series.files[0], stop_before_pixels=True)
    return f"{ds.Rows}x{ds.Columns}"
