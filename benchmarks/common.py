"""What every part of the suite shares: interleaved runs, medians, ratios, child processes, the record."""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class Figure:
    """One line of the table: ours against a peer measured in the same run (``ratio = ours / peer``).

    ``better`` says which way is good: ``"higher"`` (throughput) or ``"lower"`` (seconds, memory).
    ``goal`` is the ratio the issue asks for (``None``: no goal, the figure is informative).
    """

    section: str
    name: str
    unit: str
    ours: float
    peer: float
    peer_name: str
    better: str
    runs: int
    goal: float | None = None
    note: str = ""
    ours_runs: list[float] = field(default_factory=list)
    peer_runs: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.ours / self.peer if self.peer else float("nan")

    @property
    def meets_goal(self) -> bool | None:
        if self.goal is None:
            return None
        return self.ratio >= self.goal if self.better == "higher" else self.ratio <= self.goal

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        out["meets_goal"] = self.meets_goal
        return out


def interleave(
    runs: int, contestants: Sequence[tuple[str, Callable[[int], dict[str, float]]]]
) -> dict[str, list[dict[str, float]]]:
    """Run each contestant ``runs`` times in turn (A, B, A, B, ...); each call gets its run index."""
    out: dict[str, list[dict[str, float]]] = {name: [] for name, _ in contestants}
    for index in range(runs):
        for name, run in contestants:
            out[name].append(run(index))
    return out


def median_of(samples: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(s[key] for s in samples))


def values_of(samples: list[dict[str, float]], key: str) -> list[float]:
    return [round(float(s[key]), 6) for s in samples]


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB: ``VmHWM`` of ``/proc/self/status`` on Linux.

    Not ``ru_maxrss``: Linux carries it over ``fork`` and ``exec``, so a child started by the suite
    reported at least the suite's own peak (which holds the series it wrote); the load figures of 400
    slices were all the parent's 1252 MiB. ``VmHWM`` belongs to the child's own address space.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # no /proc: KiB as on Linux


def rss_mib() -> float:
    """This process's current resident set size in MiB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_child(module: str, *args: str, timeout_s: float = 3600.0) -> dict[str, Any]:
    """``python -m <module> <args>`` in a fresh process; its last stdout line is a JSON object."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain"))}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = 0.0
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "nice": os.nice(0),
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def append_record(record: dict[str, Any], results_dir: Path | None = None) -> Path:
    """Append ``record`` as one JSON line to ``<results_dir>/results.jsonl``; return the file."""
    directory = results_dir or RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.jsonl"
    with path.open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
    return path


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
