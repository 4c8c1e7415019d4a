"""Retention on real files and a real SQLite ledger: what goes, and that unfinished work never does."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import LedgerSettings, RetentionSettings, Settings, StorageSettings
from storage import DeliveryState, IllegalTransition, JobState, Ledger
from storage.retention import TRASH_DIR, RetentionReport, RetentionSweeper
from storage.spool import Spool
from tests.storage.scenario import finish, queue, receive, write_file

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(hours=100)  # older than max_age_h = 72
YOUNG = NOW - timedelta(hours=1)


def make_settings(spool: Path, ledger_url: str, watermark: float = 90.0) -> Settings:
    return Settings(
        storage=StorageSettings(spool_dir=spool),
        ledger=LedgerSettings(url=ledger_url),
        retention=RetentionSettings(max_age_h=72.0, high_watermark_percent=watermark),
    )


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    root = tmp_path / "spool"
    root.mkdir()
    return root


def low_disk(_path: Path) -> float:
    return 10.0


def job_at(ledger: Ledger, spool: Path, series: str, state: JobState, at: datetime, **kw: object) -> int:
    receive(ledger, spool, "1.2.3", series, [f"{series}.1", f"{series}.2"], at - timedelta(minutes=5))
    job_id = queue(ledger, at - timedelta(minutes=4))
    finish(ledger, spool, job_id, state, at, **kw)  # type: ignore[arg-type]
    return job_id


def test_age_removes_only_finished_jobs_with_finished_deliveries(ledger: Ledger, spool: Path) -> None:
    failed = job_at(ledger, spool, "1.1", JobState.FAILED, OLD)
    delivered = job_at(
        ledger,
        spool,
        "1.2",
        JobState.SUCCEEDED,
        OLD,
        deliveries={"pacs": DeliveryState.DELIVERED, "archive": DeliveryState.FAILED},
    )
    cancelled = job_at(ledger, spool, "1.3", JobState.CANCELLED, OLD)
    pending = job_at(
        ledger,
        spool,
        "1.4",
        JobState.SUCCEEDED,
        OLD,
        deliveries={"pacs": DeliveryState.DELIVERED, "archive": DeliveryState.PENDING},
    )
    young = job_at(
        ledger, spool, "1.5", JobState.SUCCEEDED, YOUNG, deliveries={"pacs": DeliveryState.DELIVERED}
    )
    running = job_at(ledger, spool, "1.6", JobState.RUNNING, OLD)
    queued = job_at(ledger, spool, "1.7", JobState.QUEUED, OLD)
    receive(ledger, spool, "1.2.3", "1.8", ["open.1"], OLD)  # an open version, no job yet

    settings_ = make_settings(spool, ledger.url)
    report = RetentionSweeper(settings_, ledger, Spool(spool), disk_probe=low_disk).sweep(NOW)

    assert sorted(report.purged_by_age) == sorted([failed, delivered, cancelled])
    assert report.purged_by_watermark == [] and report.errors == []
    for job_id, series in ((failed, "1.1"), (delivered, "1.2"), (cancelled, "1.3")):
        assert not (spool / "incoming/1.2.3" / series).exists()
        assert ledger.get_job(job_id).purged_at == NOW
    assert not (spool / f"outgoing/{delivered}").exists()
    assert report.freed_bytes == 2 * 64 * 3 + 128 + 32
    for job_id, series in ((pending, "1.4"), (young, "1.5"), (running, "1.6"), (queued, "1.7")):
        assert sorted(p.name for p in (spool / "incoming/1.2.3" / series).iterdir()) == [
            f"{series}.1.dcm",
            f"{series}.2.dcm",
        ]
        assert ledger.get_job(job_id).purged_at is None
    assert (spool / f"outgoing/{pending}/seg.dcm").exists() and (spool / f"outgoing/{young}/sr.dcm").exists()
    assert (spool / "incoming/1.2.3/1.8/open.1.dcm").exists()
    assert [e.kind for e in ledger.events(job_id=failed)][-1] == "job.purged"
    # Nothing left to do: a second sweep changes nothing.
    again = RetentionSweeper(settings_, ledger, Spool(spool), disk_probe=low_disk).sweep(NOW)
    assert again.purged_jobs == [] and again.removed_paths == []
    assert not (spool / TRASH_DIR).exists() or not any((spool / TRASH_DIR).iterdir())


def test_a_folder_shared_with_an_open_version_stays_until_the_last_job_is_purged(
    ledger: Ledger, spool: Path
) -> None:
    first = job_at(
        ledger, spool, "2.1", JobState.SUCCEEDED, OLD, deliveries={"pacs": DeliveryState.DELIVERED}
    )
    # Late instances of the same series: a second version, same folder, still open.
    receive(ledger, spool, "1.2.3", "2.1", ["late.1"], YOUNG)
    sweeper = RetentionSweeper(make_settings(spool, ledger.url), ledger, Spool(spool), disk_probe=low_disk)

    report = sweeper.sweep(NOW)
    assert report.purged_by_age == [first]
    assert report.kept_shared == ["incoming/1.2.3/2.1"]
    assert sorted(p.name for p in (spool / "incoming/1.2.3/2.1").iterdir()) == [
        "2.1.1.dcm",
        "2.1.2.dcm",
        "late.1.dcm",
    ]
    assert not (spool / f"outgoing/{first}").exists()

    second = queue(ledger, YOUNG + timedelta(minutes=1))
    finish(ledger, spool, second, JobState.FAILED, YOUNG + timedelta(minutes=2))
    assert sweeper.sweep(NOW).purged_jobs == []  # young: kept
    later = NOW + timedelta(hours=80)
    report = sweeper.sweep(later)
    assert report.purged_by_age == [second]
    assert report.removed_paths == ["incoming/1.2.3/2.1"]
    assert not (spool / "incoming/1.2.3").exists()  # the empty study folder goes too


def test_an_instance_stored_during_the_sweep_is_kept(ledger: Ledger, spool: Path) -> None:
    job = job_at(ledger, spool, "3.1", JobState.FAILED, OLD)
    # Stored by the SCP after the ledger was read, not recorded yet: newer than every known arrival.
    write_file(spool / "incoming/1.2.3/3.1/resent.dcm", NOW)
    report = RetentionSweeper(
        make_settings(spool, ledger.url), ledger, Spool(spool), disk_probe=low_disk
    ).sweep(NOW)
    assert report.purged_by_age == [job]
    assert [p.name for p in (spool / "incoming/1.2.3/3.1").iterdir()] == ["resent.dcm"]
    assert report.freed_bytes == 2 * 64


def test_watermark_removes_the_oldest_finished_jobs_first_until_below(ledger: Ledger, spool: Path) -> None:
    a = job_at(
        ledger,
        spool,
        "4.1",
        JobState.SUCCEEDED,
        YOUNG - timedelta(minutes=30),
        deliveries={"pacs": DeliveryState.DELIVERED},
    )
    b = job_at(ledger, spool, "4.2", JobState.FAILED, YOUNG - timedelta(minutes=20))
    running = job_at(ledger, spool, "4.3", JobState.RUNNING, YOUNG - timedelta(minutes=15))
    c = job_at(
        ledger,
        spool,
        "4.4",
        JobState.SUCCEEDED,
        YOUNG - timedelta(minutes=10),
        deliveries={"pacs": DeliveryState.DELIVERED},
    )
    pending = job_at(
        ledger,
        spool,
        "4.5",
        JobState.SUCCEEDED,
        YOUNG - timedelta(minutes=40),
        deliveries={"pacs": DeliveryState.PENDING},
    )

    def probe(_path: Path) -> float:
        # 95 % with the five series folders, five points less per folder removed.
        return 70.0 + 5.0 * len(list((spool / "incoming/1.2.3").iterdir()))

    settings_ = make_settings(spool, ledger.url, watermark=86.0)
    report = RetentionSweeper(settings_, ledger, Spool(spool), disk_probe=probe).sweep(NOW)

    assert report.purged_by_age == []
    assert report.purged_by_watermark == [a, b]  # oldest finished first, stops once below 86 %
    assert report.disk_percent_before == 95.0 and report.disk_percent_after == 85.0
    assert ledger.get_job(c).purged_at is None and (spool / "incoming/1.2.3/4.4").exists()
    assert ledger.get_job(running).purged_at is None and (spool / "incoming/1.2.3/4.3").exists()
    assert ledger.get_job(pending).purged_at is None and (spool / f"outgoing/{pending}/seg.dcm").exists()


def test_watermark_never_touches_unfinished_work_even_when_nothing_else_is_left(
    ledger: Ledger, spool: Path
) -> None:
    running = job_at(ledger, spool, "5.1", JobState.RUNNING, YOUNG)
    queued = job_at(ledger, spool, "5.2", JobState.QUEUED, YOUNG)
    receive(ledger, spool, "1.2.3", "5.3", ["open"], YOUNG)
    report = RetentionSweeper(
        make_settings(spool, ledger.url), ledger, Spool(spool), disk_probe=lambda _p: 99.0
    ).sweep(NOW)
    assert report.purged_jobs == [] and report.removed_paths == []
    assert report.disk_percent_after == 99.0
    for job_id in (running, queued):
        assert ledger.get_job(job_id).purged_at is None
    assert len(list((spool / "incoming/1.2.3").iterdir())) == 3


def test_paths_outside_the_spool_are_never_removed(ledger: Ledger, spool: Path, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    write_file(outside / "keep.txt", OLD)
    job = job_at(ledger, spool, "6.1", JobState.SUCCEEDED, OLD, deliveries={})
    # The job's output folder is a symbolic link that leads out of the spool.
    output = spool / f"outgoing/{job}"
    for child in output.iterdir():
        child.unlink()
    output.rmdir()
    output.symlink_to(outside, target_is_directory=True)
    report = RetentionSweeper(
        make_settings(spool, ledger.url), ledger, Spool(spool), disk_probe=low_disk
    ).sweep(NOW)
    assert report.purged_by_age == [job]  # the input folder inside the spool went
    assert report.errors == [f"job {job} outputs: resolves outside the spool or to a top folder; left alone"]
    assert (outside / "keep.txt").exists()
    assert not (spool / "incoming/1.2.3/6.1").exists()


def test_a_job_with_no_files_in_this_spool_is_left_to_its_own_agent(ledger: Ledger, spool: Path) -> None:
    job = job_at(ledger, spool, "7.1", JobState.FAILED, OLD)
    for path in (spool / "incoming/1.2.3/7.1").iterdir():
        path.unlink()
    (spool / "incoming/1.2.3/7.1").rmdir()
    report = RetentionSweeper(
        make_settings(spool, ledger.url), ledger, Spool(spool), disk_probe=low_disk
    ).sweep(NOW)
    assert report.not_local == [job] and report.purged_jobs == []
    assert ledger.get_job(job).purged_at is None


def test_a_purged_job_cannot_be_retried(ledger: Ledger, spool: Path) -> None:
    job = job_at(ledger, spool, "8.1", JobState.FAILED, OLD)
    RetentionSweeper(make_settings(spool, ledger.url), ledger, Spool(spool), disk_probe=low_disk).sweep(NOW)
    with pytest.raises(IllegalTransition, match="removed by retention"):
        ledger.retry_job(job)


def test_leftovers_of_an_interrupted_sweep_are_emptied(ledger: Ledger, spool: Path) -> None:
    write_file(spool / TRASH_DIR / "abc" / "x.dcm", OLD)
    RetentionSweeper(make_settings(spool, ledger.url), ledger, Spool(spool), disk_probe=low_disk).sweep(NOW)
    assert list((spool / TRASH_DIR).iterdir()) == []


# --- property: whatever the mix of states, unfinished work survives a sweep at a full disk ---------------

STATES = [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, None]
versions_strategy = st.lists(
    st.tuples(
        st.integers(0, 3),  # which series (versions of one series share a folder)
        st.sampled_from(STATES),  # None: the version stays open (no job yet)
        st.integers(0, 200),  # hours since it finished
        st.lists(st.sampled_from(list(DeliveryState)), max_size=2),
    ),
    min_size=1,
    max_size=7,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(versions=versions_strategy)
def test_a_sweep_never_removes_unfinished_work(
    versions: list[tuple[int, JobState | None, int, list[DeliveryState]]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp) / "spool"
        ledger = Ledger(f"sqlite:///{tmp}/ledger.sqlite3")
        ledger.upgrade()
        try:
            _check_sweep(ledger, spool, versions)
        finally:
            ledger.close()


def _check_sweep(
    ledger: Ledger, spool: Path, versions: list[tuple[int, JobState | None, int, list[DeliveryState]]]
) -> None:
    start = NOW - timedelta(hours=300)
    open_series: set[int] = set()
    protected_files: list[Path] = []
    protected_jobs: list[int] = []
    # Jobs are claimed oldest first and queueing closes every quiet version: build the finished and
    # RUNNING jobs first, then the QUEUED ones, then the open versions.
    order = {None: 2, JobState.QUEUED: 1}
    for index, (series_no, state, hours_ago, delivery_states) in enumerate(
        sorted(versions, key=lambda v: order.get(v[1], 0))
    ):
        if series_no in open_series:
            continue  # one open version per series at a time
        at = start + timedelta(minutes=10 * index)
        series = f"9.{series_no}"
        receive(ledger, spool, "1.2.3", series, [f"{index}"], at)
        instance = spool / f"incoming/1.2.3/{series}/{index}.dcm"
        if state is None:
            open_series.add(series_no)
            protected_files.append(instance)
            continue
        job_id = queue(ledger, at + timedelta(minutes=1))
        deliveries = {f"d{i}": s for i, s in enumerate(delivery_states)}
        finished = max(at + timedelta(minutes=2), NOW - timedelta(hours=hours_ago))
        finish(ledger, spool, job_id, state, finished, deliveries=deliveries)
        waiting = state == JobState.SUCCEEDED and DeliveryState.PENDING in delivery_states
        if state in (JobState.QUEUED, JobState.RUNNING) or waiting:
            protected_jobs.append(job_id)
            protected_files.append(instance)
            if waiting:
                protected_files.append(spool / f"outgoing/{job_id}/seg.dcm")

    report = RetentionSweeper(
        make_settings(spool, ledger.url), ledger, Spool(spool), disk_probe=lambda _p: 99.0
    ).sweep(NOW)

    assert report.errors == []
    for path in protected_files:
        assert path.exists(), f"{path.relative_to(spool)} was removed"
    for job_id in protected_jobs:
        assert ledger.get_job(job_id).purged_at is None
    # At 99 % every eligible job goes, and a folder goes exactly when no version needs it any more.
    for job in ledger.list_jobs(limit=1000):
        eligible = job.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED) and job.id not in (
            protected_jobs
        )
        assert (job.purged_at is not None) == eligible, (job.id, job.state)
        if job.purged_at is not None and job.output_path:
            assert not (spool / job.output_path).exists()
    assert not (spool / TRASH_DIR).exists() or not any((spool / TRASH_DIR).iterdir())


def test_every_sweep_reports_to_the_callback(ledger: Ledger, spool: Path) -> None:
    old = job_at(ledger, spool, "9.1", JobState.SUCCEEDED, OLD)
    reports: list[RetentionReport] = []
    sweeper = RetentionSweeper(
        make_settings(spool, ledger.url), ledger, Spool(spool), disk_probe=low_disk, on_sweep=reports.append
    )
    first = sweeper.sweep(NOW)
    second = sweeper.sweep(NOW)
    assert reports == [first, second]
    assert first.purged_by_age == [old] and second.purged_jobs == []
