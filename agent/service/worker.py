"""The job worker: claims QUEUED jobs from the ledger and runs the pipeline on them.

One worker per engine device. A claimed job carries a lease that a heartbeat thread renews while the
engine runs; if this process dies, the lease lapses and another worker claims the job again (this agent,
restarted, releases its own jobs at once: :meth:`storage.ledger.Ledger.release_owned_jobs`).

A job reads exactly the instances its series version recorded (with those of earlier versions): they are
hard-linked into ``spool/work/<job id>/`` before the engine runs, so instances of a later version
arriving meanwhile are not read, and an instance whose file is shorter than what was received is
reported as truncated. The folder is removed when the attempt ends.

Failures: a series the loader refuses fails at once with its reason; a transient error (the spool's disk
below ``storage.disk_reserve_mb`` before the job starts, ENOSPC/EDQUOT, out of memory) puts the job back
without spending an attempt, to be tried after a back-off (``ledger.defer_base_s`` doubling up to
``ledger.defer_cap_s``); other errors spend one attempt and requeue the job until ``ledger.max_attempts``.
UIDs in failure reasons and log lines are digests (:func:`agent.service.redaction.digest_uids`).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path

from agent.service.pipeline import NoVertebraFound, Predictor, run_pipeline
from agent.service.redaction import digest_uids
from agent.web import metrics
from config import Settings
from dicom_io.errors import SeriesRejected
from dicom_io.uids import uid_digest
from storage import IllegalTransition, Job, JobState, Ledger
from storage.spool import Spool, ensure_dir, is_no_space_error

log = logging.getLogger(__name__)


def worker_identity(agent_id: str | None = None) -> str:
    """``host:pid`` (or ``<agent_id>@host:pid``), recorded as the lease owner."""
    local = f"{socket.gethostname()}:{os.getpid()}"
    return f"{agent_id}@{local}" if agent_id else local


class TransientError(RuntimeError):
    """A job cannot run now for a reason waiting may cure (e.g. the spool's disk is below its reserve)."""


def is_transient(exc: BaseException) -> bool:
    """Errors that say nothing about the input: disk or quota full, out of (GPU) memory."""
    if isinstance(exc, TransientError | MemoryError) or is_no_space_error(exc):
        return True
    return type(exc).__name__ == "OutOfMemoryError"  # torch.cuda.OutOfMemoryError, without importing torch


class JobWorker:
    """Claims and processes jobs one at a time in a background thread."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        spool: Spool,
        engine: Predictor,
        *,
        owner: str | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.spool = spool
        self.engine = engine
        self.owner = owner or worker_identity()
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: int | None = None
        self._lock = threading.Lock()

    # --- life cycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="job-worker", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float) -> int | None:
        """Stop claiming; wait up to ``grace_s`` for the current job, else release it to the queue.

        Returns the id of a job that was released (it will run again after a restart), or None.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=grace_s)
        with self._lock:
            current = self._current
            self._current = None  # a late finish of the abandoned attempt must not touch the ledger
        if current is None:
            return None
        try:
            self.ledger.release_job(current, owner=self.owner)
            log.warning("job %d released unfinished at shutdown; it will run again", current)
        except IllegalTransition:
            return None
        return current

    @property
    def alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        return self._current is not None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # the loop must survive ledger hiccups (e.g. a locked database)
                log.exception("worker loop error; retrying in %.0f s", self.poll_s * 5)
                self._stop.wait(self.poll_s * 5)
                continue
            if worked is None:
                self._stop.wait(self.poll_s)

    # --- one job --------------------------------------------------------------------------------------

    def run_once(self) -> int | None:
        """Claim and process one job; return its id, or None when the queue was empty."""
        if self._stop.is_set():
            return None
        job = self.ledger.claim_job(self.owner, self.settings.ledger.lease_s)
        if job is None:
            return None
        with self._lock:
            self._current = job.id
        heartbeat_stop = threading.Event()
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(job.id, heartbeat_stop), name=f"lease-{job.id}", daemon=True
        )
        heartbeat.start()
        try:
            self._process(job)
        finally:
            heartbeat_stop.set()
            with self._lock:
                self._current = None
        return job.id

    def _still_mine(self, job_id: int) -> bool:
        with self._lock:
            return self._current == job_id

    def _heartbeat(self, job_id: int, stop: threading.Event) -> None:
        interval = max(1.0, self.settings.ledger.lease_s / 3)
        while not stop.wait(interval):
            if not self.ledger.renew_lease(job_id, self.owner, self.settings.ledger.lease_s):
                log.warning("job %d: lease lost (cancelled or reclaimed)", job_id)
                return

    def _input_folder(self, job: Job) -> tuple[Path, int]:
        """The folder the job reads and its instance count: hard links to exactly its version's instances.

        A version recorded before the ledger kept instances reads the series folder as it stands.
        Raises :class:`SeriesRejected` for an instance that is missing or shorter than what was received.
        """
        series = job.series
        series_dir = self.spool.resolve(series.spool_path)
        instances = self.ledger.version_instances(series.id)
        if not instances:
            return series_dir, sum(1 for _ in series_dir.glob("*.dcm"))
        work = self.spool.work_dir(job.id)
        shutil.rmtree(work, ignore_errors=True)
        ensure_dir(work)
        for sop, record in sorted(instances.items()):
            source = self.spool.instance_path(series.study_instance_uid, series.series_instance_uid, sop)
            try:
                size = source.stat().st_size
            except FileNotFoundError:
                raise SeriesRejected(
                    f"instance uid:{uid_digest(sop)} is missing from the spool (received, then removed)"
                ) from None
            if size != record.byte_count and not self.ledger.newer_instance(series.id, sop):
                raise SeriesRejected(
                    f"instance uid:{uid_digest(sop)} is truncated or unreadable: {size} bytes on disk, "
                    f"{record.byte_count} received"
                )
            target = work / source.name
            try:
                os.link(source, target)
            except OSError as exc:
                if is_no_space_error(exc):
                    raise
                shutil.copy2(source, target)  # a file system without hard links
        return work, len(instances)

    def _check_room(self) -> None:
        reserve = self.settings.storage.disk_reserve_mb * 1024 * 1024
        if not self.spool.has_room(reserve):
            mib = 1024 * 1024
            raise TransientError(
                f"spool disk below its reserve ({self.spool.free_bytes() // mib} MiB free, "
                f"storage.disk_reserve_mb {reserve // mib})"
            )

    def _process(self, job: Job) -> None:
        extra = {"job_id": job.id, "series": uid_digest(job.series.series_instance_uid)}
        out_dir = self.spool.output_dir(job.id)
        work_dir = self.spool.work_dir(job.id)
        started = time.perf_counter()
        try:
            self._check_room()
            series_dir, count = self._input_folder(job)
            log.info(
                "job %d: started (attempt %d, series version %d, %d instance(s))",
                job.id,
                job.attempts,
                job.series.version,
                count,
                extra=extra,
            )
            output = run_pipeline(
                series_dir, out_dir, self.engine, max_instances=self.settings.dicom.max_series_instances
            )
        except SeriesRejected as exc:
            self._finish_failed(job, f"series refused: {exc}", extra)
            shutil.rmtree(out_dir, ignore_errors=True)
            return
        except NoVertebraFound as exc:
            self._finish_failed(job, str(exc), extra)
            shutil.rmtree(out_dir, ignore_errors=True)
            return
        except Exception as exc:
            reason = digest_uids(f"{exc.__class__.__name__}: {exc}")
            shutil.rmtree(out_dir, ignore_errors=True)
            if is_transient(exc):
                self._defer(job, reason, extra)
                return
            log.error("job %d: attempt %d failed: %s", job.id, job.attempts, reason, extra=extra)
            log.debug("job %d: traceback", job.id, exc_info=True)  # paths with full UIDs: DEBUG only
            if job.attempts >= self.ledger.max_attempts:
                self._finish_failed(job, f"failed after {job.attempts} attempt(s): {reason}", extra)
            elif self._still_mine(job.id):
                self.ledger.requeue_job(job.id, owner=self.owner, reason=reason)
            return
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        elapsed = time.perf_counter() - started
        if not self._still_mine(job.id):
            log.warning(
                "job %d: finished after it was released; discarding this attempt", job.id, extra=extra
            )
            return
        timings = {**output.timings, "total": elapsed}
        try:
            self.ledger.succeed_job(
                job.id,
                owner=self.owner,
                timings=timings,
                model_version=output.result.model_version,
                output_path=self.spool.relative(out_dir),
                destinations=[d.name for d in self.settings.destinations],
            )
        except IllegalTransition as exc:  # cancelled by an admin while running
            log.warning("job %d: result dropped: %s", job.id, exc, extra=extra)
            return
        metrics.JOB_DURATION.observe(elapsed)
        for stage, seconds in timings.items():
            if stage != "total":
                metrics.STAGE_DURATION.labels(stage=stage).observe(seconds)
        metrics.JOBS_FINISHED.labels(state=JobState.SUCCEEDED.value).inc()
        log.info(
            "job %d: succeeded, %d vertebrae in %.1f s",
            job.id,
            len(output.result.landmarks),
            elapsed,
            extra=extra,
        )

    def _defer(self, job: Job, reason: str, extra: dict[str, object]) -> None:
        """Put the job back without spending its attempt; it is claimed again after a back-off."""
        if not self._still_mine(job.id):
            return
        cfg = self.settings.ledger
        delay = min(cfg.defer_cap_s, cfg.defer_base_s * 2.0 ** min(job.deferrals, 30))
        try:
            self.ledger.defer_job(job.id, owner=self.owner, reason=reason, delay_s=delay)
        except IllegalTransition as exc:
            log.warning("job %d: could not defer: %s", job.id, exc, extra=extra)
            return
        log.warning(
            "job %d: transient error, tried again in %.0f s (attempt not spent): %s",
            job.id,
            delay,
            reason,
            extra=extra,
        )

    def _finish_failed(self, job: Job, reason: str, extra: dict[str, object]) -> None:
        reason = digest_uids(reason)
        if not self._still_mine(job.id):
            return
        try:
            self.ledger.fail_job(job.id, reason, owner=self.owner)
        except IllegalTransition as exc:
            log.warning("job %d: could not record failure: %s", job.id, exc, extra=extra)
            return
        metrics.JOBS_FINISHED.labels(state=JobState.FAILED.value).inc()
        log.warning("job %d: failed: %s", job.id, reason, extra=extra)
