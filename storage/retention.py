"""Retention: removing the spool files of finished jobs, by age and when the disk fills up.

A job's files are its series version's input folder ``incoming/<study>/<series>/`` and its outputs
``outgoing/<job id>/``. A job is *eligible* when it is SUCCEEDED, FAILED or CANCELLED, not purged yet,
and none of its deliveries is PENDING (a SUCCEEDED job waits until every delivery is DELIVERED, FAILED
or CANCELLED). Each sweep:

1. purges every eligible job that finished more than ``retention.max_age_h`` hours ago;
2. while the spool's file system is fuller than ``retention.high_watermark_percent``, purges the
   remaining eligible jobs, oldest finished first, until it is below.

Purging marks ``purged_at`` in the ledger first (a compare-and-set, so an admin's retry in the same
instant wins), then removes the outputs, then the input folder *only if no series version using it still
needs it*: several versions of a series (re-sent or late instances) share one folder, and an open version
or a version whose job is not purged (QUEUED, RUNNING, or finished but not eligible yet) keeps it.

A folder is removed by renaming it into ``.retention-trash/`` first (atomic), so the SCP can never write
into a folder while it is being deleted: an instance stored just before the rename is newer than every
arrival the ledger knew of, and is moved back; one stored after it lands in a fresh folder. Every path
comes from the ledger and is resolved and checked to stay inside the spool root before anything is
removed; a job with none of its folders in this spool (another agent's, on a shared ledger) is left
alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from config import Settings
from storage.ledger import Ledger, utcnow
from storage.models import Job, Series
from storage.spool import Spool, ensure_dir

log = logging.getLogger(__name__)

#: Folder under the spool root that folders are renamed into before they are deleted.
TRASH_DIR = ".retention-trash"

PurgeReason = Literal["age", "watermark"]

#: Percent used of the file system holding a path; tests replace it to simulate a full disk.
DiskProbe = Callable[[Path], float]


def disk_used_percent(path: Path) -> float:
    """Used space of the file system holding ``path`` as ``df`` shows it: used / (used + available)."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    capacity = usage.used + usage.free
    return 100.0 * usage.used / capacity if capacity else 0.0


@dataclass
class RetentionReport:
    """What one sweep did (job ids and spool-relative paths only; no patient data)."""

    #: When the sweep ran (the age cut-off is ``now - max_age_h``).
    now: datetime
    #: Jobs purged because they were older than ``max_age_h``.
    purged_by_age: list[int] = field(default_factory=list)
    #: Jobs purged (younger than ``max_age_h``) because the disk was above the watermark.
    purged_by_watermark: list[int] = field(default_factory=list)
    #: Spool-relative folders removed.
    removed_paths: list[str] = field(default_factory=list)
    #: Input folders kept because another series version still needs them.
    kept_shared: list[str] = field(default_factory=list)
    #: Eligible jobs left alone because none of their folders is in this spool.
    not_local: list[int] = field(default_factory=list)
    #: Bytes of files removed.
    freed_bytes: int = 0
    #: Disk usage (percent) of the spool's file system before and after the sweep.
    disk_percent_before: float = 0.0
    disk_percent_after: float = 0.0
    #: Problems met (a path outside the spool, a folder that could not be removed), one line each.
    errors: list[str] = field(default_factory=list)

    @property
    def purged_jobs(self) -> list[int]:
        return self.purged_by_age + self.purged_by_watermark


def _tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symbolic links are not followed)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _needs_folder(version: Series) -> bool:
    """An open version, a closed one without a job, or one with a job not purged still needs its files."""
    return version.closed_at is None or not version.jobs or any(j.purged_at is None for j in version.jobs)


class RetentionSweeper:
    """Removes finished jobs' spool files; ``sweep()`` is what the service schedules every ``interval_s``."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        spool: Spool,
        *,
        disk_probe: DiskProbe | None = None,
        on_sweep: Callable[[RetentionReport], None] | None = None,
    ) -> None:
        """``on_sweep`` is called with every sweep's report (the agent counts purges in its metrics)."""
        self.ledger = ledger
        self.spool = spool
        self.on_sweep = on_sweep
        self.max_age = timedelta(hours=settings.retention.max_age_h)
        self.high_watermark_percent = settings.retention.high_watermark_percent
        self.disk_probe: DiskProbe = disk_probe or disk_used_percent

    # --- the sweep ------------------------------------------------------------------------------------

    def sweep(self, now: datetime | None = None) -> RetentionReport:
        """One pass: purge by age, then by watermark. Never touches unfinished work."""
        now = now or utcnow()
        report = RetentionReport(now=now)
        self._empty_trash(report)
        report.disk_percent_before = report.disk_percent_after = self._disk_percent()
        for job in self.ledger.purge_candidates(finished_before=now - self.max_age):
            self._purge(job, "age", now, report)
        disk = self._disk_percent()
        if disk > self.high_watermark_percent:
            # Only now the younger finished jobs are read: oldest finished first.
            for job in self.ledger.purge_candidates():
                if disk <= self.high_watermark_percent:
                    break
                if job.id in report.not_local:
                    continue
                self._purge(job, "watermark", now, report)
                disk = self._disk_percent()
        report.disk_percent_after = disk
        self._log(report)
        if self.on_sweep is not None:
            self.on_sweep(report)
        return report

    def _disk_percent(self) -> float:
        return self.disk_probe(self.spool.root)

    def _log(self, report: RetentionReport) -> None:
        if report.purged_jobs or report.errors:
            log.info(
                "retention: purged %d job(s) (%d by age, %d by watermark), removed %d folder(s), "
                "freed %d MiB, disk %.1f%% -> %.1f%%",
                len(report.purged_jobs),
                len(report.purged_by_age),
                len(report.purged_by_watermark),
                len(report.removed_paths),
                report.freed_bytes // (1024 * 1024),
                report.disk_percent_before,
                report.disk_percent_after,
            )
        else:
            log.debug("retention: nothing to purge, disk %.1f%%", report.disk_percent_after)
        if report.disk_percent_after > self.high_watermark_percent:
            log.warning(
                "retention: spool disk still %.1f%% full (watermark %.1f%%), no finished job left to purge",
                report.disk_percent_after,
                self.high_watermark_percent,
            )
        for error in report.errors:
            log.error("retention: %s", error)

    # --- one job --------------------------------------------------------------------------------------

    def _purge(self, job: Job, reason: PurgeReason, now: datetime, report: RetentionReport) -> None:
        output = (
            self._inside_spool(job.output_path, f"job {job.id} outputs", report) if job.output_path else None
        )
        source = self._inside_spool(job.series.spool_path, f"job {job.id} input folder", report)
        if not (output is not None and output.exists()) and not (source is not None and source.exists()):
            report.not_local.append(job.id)
            return
        if not self.ledger.mark_purged(job.id, now):
            log.debug("retention: job %d changed meanwhile; skipped", job.id, extra={"job_id": job.id})
            return
        (report.purged_by_age if reason == "age" else report.purged_by_watermark).append(job.id)
        if output is not None and output.exists() and job.output_path is not None:
            self._remove_folder(
                output, job.output_path, f"job {job.id} outputs", newer_than=None, report=report
            )
        if source is not None and source.exists():
            self._remove_input_folder(job, source, report)

    def _remove_input_folder(self, job: Job, folder: Path, report: RetentionReport) -> None:
        """Remove a job's series folder unless a version sharing it is open or has a job not purged."""
        series = job.series
        versions = self.ledger.series_versions(series.series_instance_uid)
        sharing = [v for v in versions if v.spool_path == series.spool_path]
        if any(_needs_folder(v) for v in sharing):
            report.kept_shared.append(series.spool_path)
            return
        newest_known = max(v.last_received_at for v in sharing)
        self._remove_folder(
            folder, series.spool_path, f"job {job.id} input folder", newer_than=newest_known, report=report
        )

    # --- files ----------------------------------------------------------------------------------------

    def _inside_spool(self, relpath: str, what: str, report: RetentionReport) -> Path | None:
        """The folder a ledger path names, if it lies strictly inside the spool (symbolic links resolved).

        ``what`` names it in messages ("job 5 outputs"): the path itself holds UIDs, kept out of logs.
        """
        try:
            path = self.spool.resolve(relpath)
        except ValueError:
            report.errors.append(f"{what}: the ledger's path is not relative to the spool; left alone")
            return None
        root = self.spool.root.resolve()
        real = path.resolve()
        # At least two levels deep ("outgoing/<job>", "incoming/<study>/<series>"): never a top folder.
        if not real.is_relative_to(root) or len(real.relative_to(root).parts) < 2:
            report.errors.append(f"{what}: resolves outside the spool or to a top folder; left alone")
            return None
        if real.relative_to(root).parts[0] == TRASH_DIR:
            report.errors.append(f"{what}: points into the retention trash; left alone")
            return None
        return real

    def _remove_folder(
        self, folder: Path, relpath: str, what: str, *, newer_than: datetime | None, report: RetentionReport
    ) -> int:
        """Rename ``folder`` into the trash, move back files newer than ``newer_than``, delete the rest."""
        trash_root = self.spool.root / TRASH_DIR
        parked = trash_root / uuid.uuid4().hex
        try:
            ensure_dir(trash_root)
            os.rename(folder, parked)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            report.errors.append(f"cannot remove {what}: {exc.strerror or type(exc).__name__}")
            return 0
        if newer_than is not None:
            self._restore_newer(parked, folder, newer_than.timestamp(), what, report)
        freed = _tree_size(parked)
        try:
            shutil.rmtree(parked)
        except OSError as exc:  # left in the trash; the next sweep tries again
            report.errors.append(f"cannot delete the removed {what}: {exc.strerror or type(exc).__name__}")
        report.removed_paths.append(relpath)
        report.freed_bytes += freed
        if newer_than is not None and not folder.exists():
            # The study folder goes too once its last series is gone (rmdir fails if it is not empty).
            with contextlib.suppress(OSError):
                folder.parent.rmdir()
        return freed

    def _restore_newer(
        self, parked: Path, folder: Path, newer_than: float, what: str, report: RetentionReport
    ) -> None:
        """Move back files stored after the newest arrival the ledger knew of (a race with the SCP)."""
        restored = 0
        for path in sorted(parked.rglob("*")):
            try:
                if not path.is_file() or path.is_symlink() or path.lstat().st_mtime <= newer_than:
                    continue
                target = folder / path.relative_to(parked)
                ensure_dir(target.parent)
                if not target.exists():  # a copy stored since the rename is at least as new
                    os.rename(path, target)
                    restored += 1
            except OSError as exc:
                report.errors.append(
                    f"cannot restore a new instance into {what}: {exc.strerror or type(exc).__name__}"
                )
        if restored:
            log.warning("retention: %d instance(s) arrived while %s was removed; kept", restored, what)

    def _empty_trash(self, report: RetentionReport) -> None:
        """Delete what an interrupted sweep left in the trash."""
        trash_root = self.spool.root / TRASH_DIR
        if not trash_root.is_dir():
            return
        for leftover in trash_root.iterdir():
            try:
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
            except OSError as exc:
                report.errors.append(f"cannot empty {TRASH_DIR}: {exc.strerror or type(exc).__name__}")
