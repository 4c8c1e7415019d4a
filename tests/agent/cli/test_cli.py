from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from storage import JobState, Ledger, utcnow


def run_cli(
    *args: str, config: Path | None = None, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = [sys.executable, "-m", "agent.cli"]
    if config is not None:
        full += ["--config", str(config)]
    return subprocess.run(
        [*full, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[ledger]\nurl = "sqlite:///{tmp_path / "ledger.sqlite3"}"\n'
        f'[storage]\nspool_dir = "{tmp_path / "spool"}"\n'
    )
    return path


def test_help_everywhere() -> None:
    for args in (
        ["--help"],
        ["jobs", "--help"],
        ["jobs", "list", "--help"],
        ["config", "check", "--help"],
        ["db", "upgrade", "--help"],
        ["db", "downgrade", "--help"],
        ["echo", "--help"],
        ["version"],
    ):
        result = run_cli(*args)
        assert result.returncode == 0, (args, result.stderr)


def test_config_example_round_trips_through_check() -> None:
    example = run_cli("config", "example")
    assert example.returncode == 0
    check = run_cli("config", "check", "-", stdin=example.stdout)
    assert check.returncode == 0, check.stderr
    assert "valid" in check.stdout


def test_bad_config_is_one_line_and_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[dicom]\nport = 'eleven'\n")
    result = run_cli("config", "check", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "dicom.port = 'eleven': expected a valid integer" in result.stderr
    assert "Traceback" not in result.stderr
    # a command that needs the config fails the same way at start
    started = run_cli("jobs", "list", config=bad)
    assert started.returncode == 2 and "dicom.port" in started.stderr and "Traceback" not in started.stderr


def test_jobs_commands_against_a_real_ledger(config_file: Path, tmp_path: Path) -> None:
    assert run_cli("db", "upgrade", config=config_file).returncode == 0
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    now = utcnow()
    for uid in ("1.2.840.1", "1.2.840.2"):
        ledger.record_instance("1.2.840", uid, 10, "p", now=now - timedelta(minutes=5))
    first, second = ledger.queue_quiet_series(30)
    ledger.claim_job("w", 60)
    ledger.fail_job(first, "series has 3 slices; at least 20 are needed", owner="w")

    listed = run_cli("jobs", "list", "--json", config=config_file)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {r["id"]: r["state"] for r in rows} == {first: "FAILED", second: "QUEUED"}

    failed_only = json.loads(
        run_cli("jobs", "list", "--json", "--state", "failed", config=config_file).stdout
    )
    assert [r["id"] for r in failed_only] == [first]
    future = json.loads(run_cli("jobs", "list", "--json", "--since", "2999-01-01", config=config_file).stdout)
    assert future == []

    table = run_cli("jobs", "list", config=config_file)
    assert "FAILED" in table.stdout and "at least 20 are needed" in table.stdout

    shown = json.loads(run_cli("jobs", "show", str(first), "--json", config=config_file).stdout)
    assert shown["failure_reason"].startswith("series has 3 slices")
    assert [e["kind"] for e in shown["events"]][-1] == "job.failed"

    assert run_cli("jobs", "retry", str(first), config=config_file).returncode == 0
    assert ledger.get_job(first).state == JobState.QUEUED
    assert run_cli("jobs", "cancel", str(second), config=config_file).returncode == 0
    assert ledger.get_job(second).state == JobState.CANCELLED

    again = run_cli("jobs", "cancel", str(second), config=config_file)
    assert again.returncode == 2 and "cannot go from CANCELLED to CANCELLED" in again.stderr
    missing = run_cli("jobs", "show", "424242", config=config_file)
    assert missing.returncode == 2 and "job 424242 does not exist" in missing.stderr
    bad_state = run_cli("jobs", "list", "--state", "DONE", config=config_file)
    assert bad_state.returncode == 2 and "expected one of" in bad_state.stderr


def test_echo_to_nobody_is_a_clear_error() -> None:
    from tests.conftest import free_port

    result = run_cli("echo", "127.0.0.1", str(free_port()), "--timeout", "3")
    assert result.returncode == 2
    assert "association" in result.stderr and "Traceback" not in result.stderr


def test_deliveries_list_and_retry(config_file: Path, tmp_path: Path) -> None:
    from storage import DeliveryState

    assert run_cli("db", "upgrade", config=config_file).returncode == 0
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    ledger.record_instance("1.2.840", "1.2.840.7", 10, "p", now=utcnow() - timedelta(minutes=5))
    (job_id,) = ledger.queue_quiet_series(30)
    ledger.claim_job("w", 60)
    ledger.succeed_job(
        job_id, owner="w", timings={}, model_version="v", output_path="o", destinations=["pacs"]
    )
    (delivery,) = ledger.list_deliveries(job_id)
    ledger.record_delivery_attempt(
        delivery.id,
        sent_instances=[],
        status=0xA700,
        error="peer out of resources",
        outcome=DeliveryState.FAILED,
    )
    rows = json.loads(run_cli("deliveries", "list", "--json", config=config_file).stdout)
    assert [(r["id"], r["state"], r["last_status"]) for r in rows] == [(delivery.id, "FAILED", "0xA700")]
    retried = run_cli("deliveries", "retry", str(delivery.id), config=config_file)
    assert retried.returncode == 0 and "PENDING" in retried.stdout
    assert ledger.list_deliveries(job_id)[0].state == DeliveryState.PENDING
    again = run_cli("deliveries", "retry", str(delivery.id), config=config_file)
    assert again.returncode == 2 and "cannot go from PENDING to PENDING" in again.stderr


def test_the_ledger_commands_read_well_at_80_columns(config_file: Path, tmp_path: Path) -> None:
    """No cut UIDs (``…771458…``), no Python dicts, no "deliver(ies)", no line past column 80."""
    from dicom_io.uids import uid_digest
    from storage import DeliveryState

    assert run_cli("db", "upgrade", config=config_file).returncode == 0
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    series_uid = "1.2.826.0.1.3680043.8.498.77145858485600738212345678901234567890123"[:64]
    study_uid = "1.2.826.0.1.3680043.8.498.1"
    ledger.record_instance(study_uid, series_uid, 10, "p", now=utcnow() - timedelta(minutes=5))
    (job_id,) = ledger.queue_quiet_series(30)
    ledger.claim_job("worker-on-a-long-host-name", 60)
    ledger.succeed_job(
        job_id,
        owner="worker-on-a-long-host-name",
        timings={"load": 0.412, "stage1": 2.1, "stage2": 5.25, "write": 0.3},
        model_version="v0.2.0",
        output_path="outgoing/1",
        destinations=["pacs", "archive"],
    )
    first, _ = ledger.list_deliveries(job_id)
    ledger.record_delivery_attempt(
        first.id, sent_instances=[], status=0xA700, error="peer out of resources " * 4,
        outcome=DeliveryState.FAILED,
    )
    narrow = {"COLUMNS": "80"}
    outputs = {
        " ".join(args): run_cli(*args, config=config_file, env=narrow)
        for args in (["jobs", "list"], ["jobs", "show", str(job_id)], ["deliveries", "list"])
    }
    for name, result in outputs.items():
        assert result.returncode == 0, (name, result.stderr)
        text = result.stdout
        for bad in ("…", "{'", "(ies)", "(s)"):
            assert bad not in text, (name, bad, text)
        too_wide = [line for line in text.splitlines() if len(line) > 80]
        assert not too_wide, (name, too_wide)
    assert uid_digest(series_uid) in outputs["jobs list"].stdout
    shown = outputs[f"jobs show {job_id}"].stdout
    assert series_uid in shown and "stage1 2.10 s, stage2 5.25 s" in shown
    assert "2 deliveries" in outputs["deliveries list"].stdout


def test_db_downgrade_goes_back_and_upgrade_comes_again(config_file: Path) -> None:
    """Rolling back a release: ``db downgrade REVISION`` undoes the migrations above it; an unknown
    revision, or one above the ledger's, is a one-line error and changes nothing."""
    up = run_cli("db", "upgrade", config=config_file)
    assert up.returncode == 0 and "ledger at revision 0003" in up.stdout
    down = run_cli("db", "downgrade", "0002", config=config_file)
    assert down.returncode == 0 and "ledger at revision 0002" in down.stdout, down.stderr
    for bad, why in (("0009", "unknown revision '0009' (known: base, 0001, 0002, 0003)"),
                     ("0003", "revision 0003 is not below the ledger's revision 0002")):
        refused = run_cli("db", "downgrade", bad, config=config_file)
        assert refused.returncode != 0, refused.stdout
        assert refused.stderr.strip().endswith(f"db downgrade: {why}"), refused.stderr
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert "ledger at revision 0001" in run_cli("db", "downgrade", "0001", config=config_file).stdout
    again = run_cli("db", "upgrade", config=config_file)
    assert again.returncode == 0 and "ledger at revision 0003" in again.stdout
