"""Log formats, series hashes, and the patient-data filter."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest

from agent.logging_setup import REDACTED, configure_logging, redact_text
from config.settings import LoggingSettings
from dicom_io.uids import uid_digest
from storage import JobState, Ledger

UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def capture(fmt: str, level: str = "INFO") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(LoggingSettings(format=fmt, level=level), stream=stream)  # type: ignore[arg-type]
    return stream


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


def test_uid_digest_is_short_stable_and_not_the_uid() -> None:
    digest = uid_digest(UID)
    assert digest == uid_digest(UID + " ") and len(digest) == 12
    assert all(c in "0123456789abcdef" for c in digest)
    assert digest not in UID and uid_digest(UID + "1") != digest


def test_json_lines_carry_context_fields(restore_root_logging: None) -> None:
    stream = capture("json")
    log = logging.getLogger("agent.service.worker")
    log.info("job %d finished in %.1f s", 7, 3.25, extra={"job_id": 7, "series": uid_digest(UID)})
    log.debug("not shown at INFO")
    try:
        raise RuntimeError("engine ran out of memory")
    except RuntimeError:
        log.exception("job failed", extra={"job_id": 8})
    first, second = json_lines(stream)
    assert set(first) == {"ts", "level", "logger", "message", "job_id", "series"}
    assert first["level"] == "INFO" and first["logger"] == "agent.service.worker"
    assert first["message"] == "job 7 finished in 3.2 s"
    assert first["job_id"] == 7 and first["series"] == uid_digest(UID)
    assert str(first["ts"]).endswith("+00:00")
    assert second["level"] == "ERROR" and second["job_id"] == 8
    assert "RuntimeError: engine ran out of memory" in str(second["exception"])
    assert UID not in stream.getvalue()


def test_text_lines_append_context_fields(restore_root_logging: None) -> None:
    stream = capture("text")
    logging.getLogger("agent.service.sender").warning(
        "delivery retry", extra={"job_id": 3, "destination": "pacs"}
    )
    line = stream.getvalue().strip()
    assert line.endswith("WARNING agent.service.sender: delivery retry job_id=3 destination=pacs")


def test_configure_logging_twice_keeps_one_handler(restore_root_logging: None) -> None:
    first = capture("text")
    second = capture("json")
    logging.getLogger("x").warning("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1
    assert logging.getLogger("pynetdicom").level == logging.WARNING
    capture("text", level="DEBUG")
    assert logging.getLogger("pynetdicom").level == logging.NOTSET


def test_patient_attributes_passed_as_extra_are_redacted(restore_root_logging: None) -> None:
    stream = capture("json")
    logging.getLogger("agent.service.scp").info(
        "stored",
        extra={
            "PatientName": "Doe^John",
            "patient_id": "123456",
            "PatientBirthDate": "19700101",
            "job_id": 1,
        },
    )
    (entry,) = json_lines(stream)
    assert entry["PatientName"] == entry["patient_id"] == entry["PatientBirthDate"] == REDACTED
    assert entry["job_id"] == 1
    for secret in ("Doe^John", "123456", "19700101"):
        assert secret not in stream.getvalue()


def test_patient_values_in_messages_arguments_and_exceptions_are_redacted(
    restore_root_logging: None,
) -> None:
    stream = capture("json")
    log = logging.getLogger("somewhere")
    dataset = pydicom.Dataset()
    dataset.PatientName = "Doe^John"
    dataset.PatientID = "123456"
    dataset.PatientBirthDate = "19700101"
    dataset.AccessionNumber = "ACC42"
    dataset.Modality = "CT"
    log.warning("bad instance:\n%s", dataset)
    log.info("PatientName=%s patient_id: %s", "Doe^John", "123456")
    try:
        raise ValueError("PatientBirthDate='19700101' is not a date")
    except ValueError:
        log.exception("cannot parse")
    text = stream.getvalue()
    for secret in ("Doe^John", "123456", "19700101", "ACC42"):
        assert secret not in text
    entries = json_lines(stream)
    assert "CS: 'CT'" in str(entries[0]["message"])  # other attributes stay readable
    assert entries[1]["message"] == f"PatientName={REDACTED} patient_id: {REDACTED}"
    assert f"PatientBirthDate={REDACTED}" in str(entries[2]["exception"])


def test_debug_records_are_not_rewritten(restore_root_logging: None) -> None:
    # DEBUG is for troubleshooting on site; the codebase still never logs datasets.
    stream = capture("text", level="DEBUG")
    logging.getLogger("dbg").debug("PatientID=%s", "777")
    assert "PatientID=777" in stream.getvalue()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Patient ID: 1234 and more", f"Patient ID: {REDACTED} and more"),
        ('other_patient_ids="A B"', f"other_patient_ids={REDACTED}"),
        ("job 5 series ab12 finished", "job 5 series ab12 finished"),
        ("patientsex=M, modality=CT", f"patientsex={REDACTED}, modality=CT"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_a_retention_sweep_logs_parseable_lines_without_uids(
    restore_root_logging: None, ledger: Ledger, tmp_path: Path
) -> None:
    from storage.retention import RetentionSweeper
    from storage.spool import Spool
    from tests.storage.scenario import finish, queue, receive, write_file
    from tests.storage.test_retention import NOW, OLD, make_settings

    stream = capture("json")
    spool = tmp_path / "spool"
    receive(ledger, spool, UID + ".1", UID + ".2", [UID + ".3"], OLD - timedelta(minutes=5))
    job_id = queue(ledger, OLD - timedelta(minutes=4))
    finish(ledger, spool, job_id, JobState.FAILED, OLD)
    # An instance stored during the sweep: retention keeps it and warns (naming the job, not the series).
    write_file(spool / f"incoming/{UID}.1/{UID}.2/{UID}.4.dcm", NOW)
    settings_ = make_settings(spool, ledger.url)
    report = RetentionSweeper(settings_, ledger, Spool(spool), disk_probe=lambda _p: 99.0).sweep(NOW)
    assert report.purged_jobs == [job_id]
    entries = json_lines(stream)
    assert [e["level"] for e in entries] == ["WARNING", "INFO", "WARNING"]
    assert all(set(e) >= {"ts", "level", "logger", "message"} for e in entries)
    assert UID not in stream.getvalue()


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_pynetdicom_transport_errors_the_agent_handles_stay_below_warning(
    restore_root_logging: None, level: str
) -> None:
    """A refused connection (what every delivery retry to a down PACS meets) is no ERROR line."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from tests.conftest import free_port

    stream = io.StringIO()
    configure_logging(LoggingSettings(format="text", level=level), stream)  # type: ignore[arg-type]
    ae = AE(ae_title="SPINEAGENT")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", free_port(), ae_title="NOBODY")
    assert not assoc.is_established
    lines = stream.getvalue().splitlines()
    assert not [line for line in lines if " ERROR " in line or " WARNING " in line], lines
    refused = [line for line in lines if "unable to connect to remote" in line]
    # At DEBUG the line is still there, as DEBUG; at INFO it is gone.
    assert (refused and all(" DEBUG " in line for line in refused)) if level == "DEBUG" else not refused
