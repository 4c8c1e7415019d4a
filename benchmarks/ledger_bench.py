"""Ledger: jobs claimed per second by 1, 2 and 4 worker processes (``storage.Ledger.claim_job``).

Each run builds a fresh ledger holding ``jobs`` QUEUED jobs (one series version each, through
``record_instance`` and ``queue_quiet_series`` as the agent makes them), starts the workers (separate
processes, each with its own ``Ledger``), lets them go at once and times until the queue is empty.
Worker counts alternate (1, 2, 4, 1, 2, 4, ...). The peer of the 2- and 4-worker figures is one worker in
the same run (a ratio of 1.0 means no gain from more workers, below 1.0 a loss to contention).

SQLite always (a file ledger in WAL mode, as shipped); PostgreSQL when ``SPINE_AGENT_TEST_PG_URL`` is set
(its ledger tables are dropped and rebuilt for each run: point it at a scratch database only).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import Figure, interleave, median_of, values_of

PG_ENV = "SPINE_AGENT_TEST_PG_URL"
TABLES = "event, delivery, job, series_instance, series, alembic_version"


def _worker(url: str, owner: str, ready: Any, go: Any, results: Any) -> None:
    from storage import Ledger

    ledger = Ledger(url)
    ledger.ping()  # connection open before the start
    ready.release()
    go.wait()
    claimed = 0
    while ledger.claim_job(owner, lease_s=3600) is not None:
        claimed += 1
    results.put((owner, claimed, time.monotonic()))
    ledger.close()


def fresh_ledger(url: str, jobs: int) -> None:
    from sqlalchemy import text

    from storage import Ledger, utcnow

    ledger = Ledger(url)
    if not url.startswith("sqlite"):
        with ledger.engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {TABLES} CASCADE"))
    ledger.upgrade()
    then = utcnow() - timedelta(hours=1)
    for n in range(jobs):
        ledger.record_instance("1.2.826.0.1.1", f"1.2.826.0.1.2.{n + 1}", 1000, f"incoming/x/{n}", then)
    queued = ledger.queue_quiet_series(60.0)
    ledger.close()
    if len(queued) != jobs:
        raise RuntimeError(f"queued {len(queued)} jobs of {jobs}")


def claim_all(url: str, workers: int, jobs: int) -> dict[str, float]:
    # fork where there is one: the workers start at once with the suite's imports (spawn re-imports
    # SQLAlchemy and the ledger in every worker, seconds each on a loaded machine); each worker still opens
    # its own Ledger after the fork, and the clock starts only when all of them are ready.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx: Any = mp.get_context(method)
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(url, f"bench-{w}", ready, go, results), daemon=True)
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise RuntimeError("ledger worker did not start")
    start = time.monotonic()
    go.set()
    done = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    claimed = sum(d[1] for d in done)
    if claimed != jobs:
        raise RuntimeError(f"{workers} workers claimed {claimed} jobs of {jobs}")
    seconds = max(d[2] for d in done) - start
    return {"seconds": seconds, "per_s": jobs / seconds}


def _runner(kind: str, workdir: Path, workers: int, jobs: int) -> Callable[[int], dict[str, float]]:
    def run(index: int) -> dict[str, float]:
        if kind == "sqlite":
            path = workdir / f"ledger-{workers}-{index}.sqlite3"
            url = f"sqlite:///{path}"
        else:
            url = os.environ[PG_ENV]
        fresh_ledger(url, jobs)
        try:
            return claim_all(url, workers, jobs)
        finally:
            if kind == "sqlite":
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)

    return run


def bench(workdir: Path, runs: int, jobs: int, workers: tuple[int, ...] = (1, 2, 4)) -> list[Figure]:
    kinds = ["sqlite"] + (["postgresql"] if os.environ.get(PG_ENV) else [])
    figures = []
    for kind in kinds:
        samples = interleave(runs, [(str(w), _runner(kind, workdir, w, jobs)) for w in workers])
        base = samples[str(workers[0])]
        for w in workers:
            figures.append(
                Figure(
                    section="ledger",
                    name=f"{kind}, {w} worker{'s' * (w > 1)}",
                    unit="jobs/s",
                    ours=median_of(samples[str(w)], "per_s"),
                    peer=median_of(base, "per_s"),
                    peer_name=f"{kind}, {workers[0]} worker",
                    better="higher",
                    runs=runs,
                    note=f"{jobs} queued jobs claimed to empty",
                    ours_runs=values_of(samples[str(w)], "per_s"),
                    peer_runs=values_of(base, "per_s"),
                )
            )
    return figures
