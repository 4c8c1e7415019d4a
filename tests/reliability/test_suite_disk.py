"""Disk: a full spool (a small tmpfs the test mounts) and a corrupt file in the spool."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import DeliveryState, JobState
from tests.reliability.suite_support import (
    make_agent,
    make_series,
    start_storescp,
    storescu,
    wait_for,
    write_report,
)

pytestmark = pytest.mark.integration

FS_SIZE = "3m"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (root, or sudo -n); in CI not being able to mount fails, locally it skips."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]  # .ci/run may run as a user with sudo
    done = subprocess.run(
        [*sudo, "mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=1777", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        message = f"cannot mount a tmpfs for the full-disk test: {done.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount_point
    finally:
        subprocess.run([*sudo, "umount", "-l", str(mount_point)], check=False)


def fill(fs: Path, leave_bytes: int) -> Path:
    """Fill the file system up to ``leave_bytes`` free; returns the filler file."""
    filler = fs / "filler.bin"
    stat = os.statvfs(fs)
    free = stat.f_bavail * stat.f_frsize
    with filler.open("ab") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
        f.flush()
        os.fsync(f.fileno())
    return filler


def spool_files(spool: Path) -> list[Path]:
    return (
        [p for p in (spool / "incoming").rglob("*") if p.is_file()] if (spool / "incoming").exists() else []
    )


def test_full_spool_answers_0xA700_writes_no_partial_file_and_recovers(
    tmp_path: Path, small_fs: Path
) -> None:
    agent = make_agent(
        tmp_path / "agent",
        spool_dir=small_fs / "spool",
        dicom={"stable_age_s": 3600.0},  # the SCP is under test here, not the worker
        storage={"disk_reserve_mb": 0},
        engine_delay_s=0.0,
    )
    (series,) = make_series(tmp_path / "series", 1, slices=24, seed=400)
    agent.start()
    try:
        filler = fill(small_fs, leave_bytes=12 * 4096)
        run = storescu(agent.dicom_port, series.files)
        run.wait()
        statuses = run.statuses()
        acked = {p.stem for p, st in statuses.items() if st == "Success"}
        refused = {p.stem: st for p, st in statuses.items() if st != "Success"}
        assert refused, f"nothing was refused; the file system did not fill: {statuses}"
        assert all("A700" in st or "OutOfResources" in st for st in refused.values()), refused
        on_disk = spool_files(agent.spool)
        assert {p.stem for p in on_disk if p.suffix == ".dcm"} == acked
        assert [p for p in on_disk if p.suffix != ".dcm"] == [], "a partial or temporary file was left"

        filler.unlink()  # space returns
        run = storescu(agent.dicom_port, series.files)
        assert run.wait() == 0
        assert set(run.acknowledged()) == set(series.files)
        assert {p.stem for p in spool_files(agent.spool)} == {f.stem for f in series.files}
        assert agent.alive
        assert agent.http_get("/readyz")[0] == 200
        write_report(
            "disk",
            [{"fault": "spool file system full", "acknowledged": len(acked), "refused_0xA700": len(refused),
              "partial_files": 0, "recovered": True}],
        )  # fmt: skip
    finally:
        agent.kill()


def test_a_corrupt_spool_file_fails_only_its_series(tmp_path: Path) -> None:
    dest = start_storescp(tmp_path / "dest")
    agent = make_agent(
        tmp_path / "agent",
        destinations=[("dest", "DEST", dest.port)],
        dicom={"stable_age_s": 4.0},
        engine_delay_s=0.0,
    )
    series = make_series(tmp_path / "series", 3, seed=402)
    agent.start()
    try:
        assert storescu(agent.dicom_port, [f for s in series for f in s.files]).wait() == 0
        bad = series[1]
        victim = agent.spool / "incoming" / bad.study_uid / bad.series_uid / bad.files[5].name
        victim.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300)  # corrupt it in place before the job runs
        ledger = agent.ledger()
        wait_for(
            lambda: (
                len([j for j in ledger.list_jobs() if j.state in (JobState.SUCCEEDED, JobState.FAILED)]) == 3
            ),
            60,
            0.5,
            what="three finished jobs",
        )
        jobs = {j.series.series_instance_uid: j for j in ledger.list_jobs()}
        assert jobs[bad.series_uid].state == JobState.FAILED
        reason = str(jobs[bad.series_uid].failure_reason)
        assert "not a readable DICOM file" in reason or "unreadable" in reason or "truncated" in reason, (
            reason
        )
        for s in (series[0], series[2]):
            assert jobs[s.series_uid].state == JobState.SUCCEEDED, jobs[s.series_uid].failure_reason
            wait_for(
                lambda s=s: ledger.list_deliveries(jobs[s.series_uid].id)[0].state == DeliveryState.DELIVERED,  # type: ignore[misc]
                30,
                0.5,
                what="the good series' results",
            )
        assert agent.alive
        write_report("disk", [{"fault": "corrupt file in the spool", "failed_jobs": 1, "other_series_ok": 2,
                               "reason": reason[:100]}])  # fmt: skip
        ledger.close()
    finally:
        agent.kill()
        dest.stop()
