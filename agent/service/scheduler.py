"""Periodic work of the agent on one APScheduler 3 ``BackgroundScheduler``, and the series quiet timer.

DICOM has no "series complete" message, so a series is considered complete once no instance of it has
arrived for ``dicom.stable_age_s`` seconds (Orthanc's StableAge, mercure's ``series_complete_trigger``).
The quiet timer is one interval job that asks the ledger to close every quiet open series version and
give each one job (:meth:`storage.ledger.Ledger.close_quiet_series`, a compare-and-set, so two
schedulers on a shared PostgreSQL ledger still queue each version once).

Quiet time counts only while the agent is up: a version is quiet once ``stable_age_s`` passed since
both its last instance and the start of this scheduler, so a restart restarts every open version's clock
(the series may have been cut off by the crash; the PACS gets ``stable_age_s`` to send the rest).

Routing (:mod:`agent.service.routing`, ``[routing]``) decides at that moment whether the version is
processed: a version the rules leave out gets a SKIPPED job with the reason instead of a QUEUED one, in
the same ledger transaction that closes it (one INFO line per skipped version, series named by digest).

Instances arriving after a version was closed open the next version (the ledger does this in
``record_instance``), unless they are identical re-sends of instances already recorded; its job reads
the instances of its version and of the earlier ones, i.e. the series as received up to then. A new
version re-runs the series; it is never merged silently into a finished result.

Other components add their own periodic work with :meth:`AgentScheduler.add_interval` (the sender's
delivery tick, retention, gauges). Each job runs at most once at a time and missed runs are coalesced;
an exception is logged with the job's name and the next run happens as planned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from agent.service.routing import SeriesRouter
from config import Settings
from dicom_io.uids import uid_digest
from storage.ledger import Ledger, utcnow
from storage.models import JobState, Series
from storage.spool import Spool

log = logging.getLogger(__name__)

#: Name of the quiet-timer job.
QUIET_TIMER_JOB = "series-quiet-timer"


def quiet_tick_interval(stable_age_s: float) -> float:
    """Seconds between quiet-timer ticks: a quarter of the quiet time, between 0.2 s and 5 s.

    A series is therefore queued between ``stable_age_s`` and ``stable_age_s + 5`` seconds after its
    last instance.
    """
    return min(5.0, max(0.2, stable_age_s / 4.0))


class AgentScheduler:
    """The agent's one background scheduler, with the series quiet timer built in.

    ``on_queued`` (optional) is called with the ids of newly queued jobs, e.g. to wake the worker.
    ``clock`` gives "now" for the ledger (tests pass their own). ``spool`` is where the routing rules read
    the series' headers (default: a :class:`Spool` on ``storage.spool_dir``).
    """

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        on_queued: Callable[[list[int]], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        spool: Spool | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.on_queued = on_queued
        self.clock = clock
        self.stable_age_s = settings.dicom.stable_age_s
        self.router = SeriesRouter(settings.routing, ledger, spool or Spool(settings.storage.spool_dir))
        #: When :meth:`start` ran (the quiet clock of every open version restarts there).
        self.up_since: datetime | None = None
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self.add_interval(QUIET_TIMER_JOB, self.tick_quiet_series, quiet_tick_interval(self.stable_age_s))

    def add_interval(
        self, name: str, func: Callable[[], object], seconds: float, *, run_now: bool = False
    ) -> None:
        """Run ``func()`` every ``seconds`` (first run after one interval, or at once with ``run_now``).

        ``name`` identifies the job in logs; adding a name again replaces the earlier job. May be called
        before or after :meth:`start`.
        """
        if seconds <= 0:
            raise ValueError(f"interval job {name!r}: seconds must be positive, got {seconds}")

        def run() -> None:
            try:
                func()
            except Exception:
                log.exception("scheduled job %r failed; it runs again in %.1f s", name, seconds)

        kwargs: dict[str, object] = {}
        if run_now:
            kwargs["next_run_time"] = datetime.now(UTC)
        self._scheduler.add_job(
            run,
            IntervalTrigger(seconds=seconds, timezone=UTC),
            id=name,
            name=name,
            replace_existing=True,
            **kwargs,
        )

    def remove(self, name: str) -> None:
        """Remove the interval job ``name`` (no error if absent)."""
        if self._scheduler.get_job(name) is not None:
            self._scheduler.remove_job(name)

    @property
    def job_names(self) -> list[str]:
        return sorted(job.id for job in self._scheduler.get_jobs())

    def route(self, series: Series) -> str | None:
        """The routing decision for one version; a failure of the rules themselves processes the series
        (the loader then judges it) rather than losing it."""
        try:
            return self.router(series)
        except Exception:
            log.exception(
                "routing failed for series %s version %d; it is processed",
                uid_digest(series.series_instance_uid),
                series.version,
            )
            return None

    def tick_quiet_series(self) -> list[int]:
        """Close every open series version quiet for ``dicom.stable_age_s``: one QUEUED job each, or a
        SKIPPED one where the routing rules leave it out. Returns the ids of the QUEUED jobs."""
        closed = self.ledger.close_quiet_series(
            self.stable_age_s, now=self.clock(), up_since=self.up_since, route=self.route
        )
        for version in closed:
            if version.state == JobState.SKIPPED:
                log.info(
                    "job %d: %s (routing)",
                    version.job_id,
                    version.reason,
                    extra={"job_id": version.job_id, "series": uid_digest(version.series_instance_uid)},
                )
        job_ids = [v.job_id for v in closed if v.state == JobState.QUEUED]
        if job_ids:
            log.info("series quiet for %.0f s: queued job(s) %s", self.stable_age_s, job_ids)
            if self.on_queued is not None:
                self.on_queued(job_ids)
        return job_ids

    def start(self) -> None:
        """Start the background thread; series left open by a previous run are queued once quiet for
        ``stable_age_s`` from now."""
        self.up_since = self.clock()
        left_open = self.ledger.open_series_count()
        if left_open:
            log.info(
                "%d series version(s) still open from before this start: quiet time (%.0f s) restarts now",
                left_open,
                self.stable_age_s,
            )
        self._scheduler.start()
        self._scheduler.modify_job(QUIET_TIMER_JOB, next_run_time=datetime.now(UTC))
        log.info(
            "scheduler started: quiet timer every %.1f s (stable_age_s %.1f), jobs: %s",
            quiet_tick_interval(self.stable_age_s),
            self.stable_age_s,
            ", ".join(self.job_names),
        )

    def shutdown(self, wait: bool = True) -> None:
        """Stop the scheduler; with ``wait`` the running jobs finish first (idempotent)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
            log.info("scheduler stopped")

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)
