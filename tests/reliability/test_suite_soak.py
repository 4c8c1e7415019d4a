"""Soak: ``spine-agent serve`` under steady traffic for ``SPINE_SUITE_SOAK_S`` seconds (default 1800),
its memory sampled from /proc; the resident set must stay flat.

Only with ``SPINE_SUITE_LONG=1`` (marked ``slow``; there is no short variant: a soak of a minute shows
nothing). Every ``PERIOD_S`` seconds DCMTK storescu sends a new series (16 slices, its own study), which
the agent receives, queues after the quiet time, runs through the engine stand-in and delivers to DCMTK
storescp; every tenth round a peer with an unknown calling AE is refused; every round reads ``/metrics``
and ``/readyz``. Once the traffic stops and everything drained:

* the resident set after the warm-up and at the end differ by at most ``max(5 %, 16 MiB)`` (the median of
  the samples in the window after the first quarter of the run against that of the last fifth);
* the open file descriptors after the drain are no more than after the warm-up (plus a few);
* nothing acknowledged is lost; every series version ends in one finished job, SUCCEEDED but for a part
  cut off by a pause longer than the quiet time (a starved storescu; at most 1 in 50); every result of
  every succeeded job is held by the destination exactly once.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from storage import DeliveryState, JobState
from tests.reliability.suite_support import (
    LONG_ENV,
    LedgerView,
    SuiteAgent,
    long_marks,
    make_agent,
    make_series,
    result_uids,
    start_storescp,
    storescu,
    wait_for,
    write_report,
)

pytestmark = [pytest.mark.integration, *long_marks()]

SOAK_S = float(os.environ.get("SPINE_SUITE_SOAK_S", "1800"))
PERIOD_S = 3.0
SAMPLE_S = 10.0
MIB = 1024 * 1024


def sample(agent: SuiteAgent) -> dict[str, float]:
    """The agent process's resident set (bytes), threads and open file descriptors, from /proc."""
    assert agent.process is not None
    pid = agent.process.pid
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return {
        "t": time.monotonic(),
        "rss": float(fields["VmRSS"].split()[0]) * 1024,
        "threads": float(fields["Threads"]),
        "fds": float(len(os.listdir(f"/proc/{pid}/fd"))),
    }


class Sampler:
    """Samples the agent every ``SAMPLE_S`` seconds on its own thread, whatever the traffic loop is doing."""

    def __init__(self, agent: SuiteAgent) -> None:
        self.agent = agent
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(sample(self.agent))
            self._stop.wait(SAMPLE_S)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)


def window(samples: list[dict[str, float]], t0: float, start: float, end: float, key: str) -> list[float]:
    """The ``key`` values of the samples taken between fractions ``start`` and ``end`` of the soak."""
    return [s[key] for s in samples if start * SOAK_S <= s["t"] - t0 <= end * SOAK_S]


def memory_grew(samples: list[dict[str, float]], t0: float) -> tuple[float, float, float]:
    """(after warm-up, at the end, allowed growth), resident set in bytes, medians of their windows."""
    early_values, late_values = window(samples, t0, 0.25, 0.45, "rss"), window(samples, t0, 0.80, 1.00, "rss")
    assert len(early_values) >= 3 and len(late_values) >= 3, f"too few samples: {len(samples)}"
    early, late = statistics.median(early_values), statistics.median(late_values)
    return early, late, max(0.05 * early, 16 * MIB)


# No short variant, so no test at all in the default run (a skip would fail CI).
if os.environ.get(LONG_ENV) == "1":

    def test_memory_stays_flat_under_steady_traffic(tmp_path: Path) -> None:
        dest = start_storescp(tmp_path / "dest")
        agent = make_agent(
            tmp_path / "agent",
            destinations=[("dest", "DEST", dest.port)],
            dicom={"allowed_calling_aes": ["STORESCU"], "stable_age_s": 3.0},
            engine_delay_s=0.3,
        )
        sampler = Sampler(agent)
        acknowledged = 0
        series_uids: list[str] = []
        refused = 0
        try:
            agent.start(timeout_s=300)  # a loaded machine: the soak is about memory, not start-up time
            t0 = time.monotonic()
            rounds = 0
            sampler.start()
            while time.monotonic() - t0 < SOAK_S:
                started = time.monotonic()
                (series,) = make_series(tmp_path / "series" / f"r{rounds:05d}", 1, seed=9000 + rounds)
                run = storescu(agent.dicom_port, series.files)
                assert run.wait(timeout_s=120) == 0, run.output[-1500:]
                acknowledged += len(run.acknowledged())
                series_uids.append(series.series_uid)
                if rounds % 10 == 9:
                    intruder = storescu(agent.dicom_port, series.files[:2], calling_ae="INTRUDER")
                    intruder.wait(timeout_s=60)
                    assert intruder.acknowledged() == [], intruder.output[-1500:]
                    refused += 1
                for f in series.files:  # the agent has them; keep the disk use of a long soak small
                    f.unlink()
                # a generous timeout: on a loaded machine a starved agent answers late, and late is fine
                assert agent.http_get("/metrics", timeout_s=60)[0] == 200
                assert agent.http_get("/readyz", timeout_s=60)[0] in (200, 503)
                rounds += 1
                time.sleep(max(0.0, PERIOD_S - (time.monotonic() - started)))
            ledger = agent.ledger()

            def drained() -> bool:
                view = LedgerView.read(ledger, series_uids)
                return view.all_versions_finished() and all(
                    d.state == DeliveryState.DELIVERED for d in view.deliveries
                )

            sampler.stop()
            wait_for(drained, 300, 2.0, what="every job finished and delivered")
            time.sleep(2 * SAMPLE_S)  # idle: what is still held now is kept
            samples = [*sampler.samples, sample(agent)]
            view = LedgerView.read(ledger, series_uids)
            results = {
                job.id: result_uids(agent, job.output_path)
                for jobs in view.jobs_by_series.values()
                for job in jobs
                if job.state == JobState.SUCCEEDED
            }
            held = dest.held()
            ledger.close()
            assert agent.alive
        finally:
            sampler.stop()
            agent.kill()
            dest.stop()

        early, late, allowed = memory_grew(samples, t0)
        warm_fds = max(window(samples, t0, 0.25, 0.45, "fds"))
        row: dict[str, Any] = {
            "seconds": round(SOAK_S),
            "series": len(series_uids),
            "instances_acknowledged": acknowledged,
            "peers_refused": refused,
            "samples": len(samples),
            "rss_mib_first": round(samples[0]["rss"] / MIB, 1),
            "rss_mib_after_warmup": round(early / MIB, 1),
            "rss_mib_end": round(late / MIB, 1),
            "rss_mib_max": round(max(s["rss"] for s in samples) / MIB, 1),
            "threads_max": int(max(s["threads"] for s in samples)),
            "fds_after_warmup": int(warm_fds),
            "fds_after_drain": int(samples[-1]["fds"]),
            "jobs_succeeded": len(results),
            "deliveries_retried": sum(d.attempts > 1 for d in view.deliveries),
            "results_held_twice": sum(n - 1 for n in held.values() if n > 1),
        }
        write_report("soak", [row])
        assert late - early <= allowed, row
        assert samples[-1]["fds"] <= warm_fds + 5, row
        counted = {uid: sum(c for _, _, c in versions) for uid, versions in view.versions.items()}
        assert sum(counted.values()) == acknowledged, "instances acknowledged but not in the ledger"
        assert view.all_versions_finished()
        jobs = [job for jobs in view.jobs_by_series.values() for job in jobs]
        succeeded = [job for job in jobs if job.state == JobState.SUCCEEDED]
        # a pause longer than the quiet time mid-series (a starved storescu) splits it: the part is refused
        split = [job for job in jobs if "usable slice(s)" in str(job.failure_reason)]
        assert len(succeeded) + len(split) == len(jobs), [
            j.failure_reason for j in jobs if j not in succeeded
        ]
        assert len(split) <= len(jobs) // 50, f"{len(split)} of {len(jobs)} series split by a pause"
        assert len(view.deliveries) == len(succeeded)
        # a result is held twice only after an attempt that got no response (the C-STORE timed out on a
        # starved machine, then landed): at-least-once, as with a kill; one attempt, one copy
        attempts = {d.job_id: d.attempts for d in view.deliveries}
        copies = {job.id: [held[uid] for uid in results[job.id]] for job in succeeded}
        missing = [job_id for job_id, n in copies.items() if len(n) != 2 or 0 in n]
        doubled = {job_id: n for job_id, n in copies.items() if any(c > 1 for c in n)}
        assert missing == [], f"results not delivered: jobs {missing}"
        assert set(held) == {uid for uids in results.values() for uid in uids}, "results nobody made"
        assert all(attempts[job_id] > 1 for job_id in doubled), (doubled, attempts)
        assert sum(c - 1 for n in doubled.values() for c in n) <= sum(a - 1 for a in attempts.values())
