"""Log output of the agent: text or JSON lines, and no patient data at INFO or above.

The code base never logs datasets or patient attributes; series are named by
:func:`dicom_io.uids.uid_digest` and jobs by their ledger id. :class:`PatientDataFilter` is the safety net
behind that rule: at INFO and above it blanks the values of patient-identifying DICOM attributes, whether
passed as ``extra=`` keys or found in the message text (``PatientName=...``, or the ``(0010,xxxx)`` lines
of a printed pydicom dataset).

Use ``extra={"job_id": 12, "series": uid_digest(uid)}`` to attach context; both formats show it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from config.settings import LoggingSettings

#: What redacted values are replaced with.
REDACTED = "[redacted]"

# DICOM keywords that identify a patient (group 0010 and the accession number), from the PS3.15 Annex E
# basic de-identification profile.
_PATIENT_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientAge",
    "PatientSex",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "IssuerOfPatientID",
    "MedicalRecordLocator",
    "AccessionNumber",
    "ReferringPhysicianName",
)
#: The keywords lower-cased without separators: ``patient_id``, ``PatientID``, ``Patient ID`` all match.
PATIENT_KEYWORDS: frozenset[str] = frozenset(k.lower() for k in _PATIENT_KEYWORDS)


def _spelling_pattern(keyword: str) -> str:
    """``PatientID`` -> a pattern matching PatientID, patient_id, Patient ID, patient-id (any case)."""
    words = re.findall(r"[A-Z][a-z]+|[A-Z]+(?![a-z])", keyword)
    return r"[_\s-]?".join(words)


# "PatientName=Doe^John", "patient_id: 123", "PatientBirthDate='19700101'" in free text.
_LONGEST_FIRST = sorted(_PATIENT_KEYWORDS, key=len, reverse=True)
_KEYWORD_VALUE = re.compile(
    r"(?P<key>\b(?:" + "|".join(_spelling_pattern(k) for k in _LONGEST_FIRST) + r"))"
    r"(?P<sep>\s*[=:]\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s,;)}\]]+)",
    re.IGNORECASE,
)
# Lines of a printed pydicom dataset for group 0010 (patient) or the accession number (0008,0050):
# "(0010,0010) Patient's Name        PN: 'Doe^John'".
_DATASET_LINE = re.compile(
    r"(?P<tag>\((?:0010,[0-9A-Fa-f]{4}|0008,0050)\)[^\n:]*:\s*)(?P<value>[^\n]*)",
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

#: Extra fields shown first (and in this order) by both formats.
CONTEXT_FIELDS: tuple[str, ...] = ("job_id", "series", "delivery_id", "destination")


def _normalise_key(key: str) -> str:
    return key.replace("_", "").replace(" ", "").replace("-", "").lower()


def is_patient_keyword(key: str) -> bool:
    """True if ``key`` names a patient-identifying attribute (any spelling of the DICOM keyword)."""
    return _normalise_key(key) in PATIENT_KEYWORDS


def redact_text(text: str) -> str:
    """``text`` with the values of patient-identifying attributes replaced by :data:`REDACTED`."""
    text = _DATASET_LINE.sub(lambda m: m.group("tag") + REDACTED, text)
    return _KEYWORD_VALUE.sub(lambda m: m.group("key") + m.group("sep") + REDACTED, text)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record, context fields first."""
    extras = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")}
    ordered = {k: extras.pop(k) for k in CONTEXT_FIELDS if k in extras}
    ordered.update(sorted(extras.items()))
    return ordered


class PatientDataFilter(logging.Filter):
    """Blanks patient-identifying values in records at ``min_level`` (INFO) and above.

    Installed on the handler, so it sees records of every logger (ours and the libraries'). The message
    is formatted once here and its arguments dropped, so what is redacted is exactly what would be written.
    """

    def __init__(self, min_level: int = logging.INFO) -> None:
        super().__init__()
        self.min_level = min_level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: keep the raw text, never lose the line
            message = f"{record.msg} {record.args}"
        redacted = redact_text(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        for key in list(vars(record)):
            if key in _RECORD_ATTRIBUTES:
                continue
            if is_patient_keyword(key):
                setattr(record, key, REDACTED)
            elif isinstance(getattr(record, key), str):
                setattr(record, key, redact_text(getattr(record, key)))
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            # Exception messages can quote a value (e.g. a pydicom error); format and redact them now.
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-01-01T12:00:00.000+00:00 INFO agent.service.worker: message job_id=3 series=ab12cd34ef56``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        extras = " ".join(f"{k}={v}" for k, v in extra_fields(record).items())
        if extras:
            line = f"{line} {extras}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


# Libraries that are chatty at INFO: one line per instance or per scheduler tick.
_QUIET_LOGGERS: dict[str, int] = {
    "pynetdicom": logging.WARNING,
    "apscheduler.executors.default": logging.WARNING,
    "apscheduler.scheduler": logging.WARNING,
    "alembic": logging.WARNING,
    "highdicom": logging.WARNING,  # one line per copied module of every SEG/SR it builds
}


#: pynetdicom's ERROR lines for transport failures the agent handles itself (the sender retries and logs
#: "will retry at ..."; the echo command and the SCP say what happened in their own line). A failed TLS
#: handshake to a destination (``[SSL: CERTIFICATE_VERIFY_FAILED] ...``, logged with its traceback) is
#: one of them: the sender's line gives the reason in words (agent/service/dicom_client.py).
_PYNETDICOM_HANDLED = re.compile(
    r"^(Association request failed: unable to connect to remote|TCP Initialisation Error|"
    r"Association Rejected|Result: Rejected|Reason: |Association Aborted|"
    r"Connection closed while waiting for DIMSE message|DIMSE timeout reached|Network timeout reached|"
    r"\[SSL[:\]]|.*\(_ssl\.c:\d+\)$)"
)


class HandledTransportErrors(logging.Filter):
    """pynetdicom's transport errors become DEBUG records: journald's ``-p err`` then alerts only on what
    needs an admin, and the agent's own line (one per attempt) says what happens next."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno >= logging.WARNING
            and record.name.startswith("pynetdicom")
            and _PYNETDICOM_HANDLED.match(record.getMessage())
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


class _AgentHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler :func:`configure_logging` installed, so a second call replaces it."""


def make_handler(settings: LoggingSettings, stream: TextIO | None = None) -> logging.Handler:
    """A stream handler with the configured format and the patient-data filter."""
    handler = _AgentHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if settings.format == "json" else TextFormatter())
    handler.addFilter(HandledTransportErrors())
    handler.addFilter(PatientDataFilter())
    return handler


def configure_logging(settings: LoggingSettings, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to ``stream`` (stderr: the journal under systemd) in the configured format.

    Idempotent: a second call replaces the handler the first one installed. Returns the handler.
    """
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _AgentHandler):
            root.removeHandler(existing)
            existing.close()
    handler = make_handler(settings, stream)
    root.addHandler(handler)
    level = logging.getLevelName(settings.level)
    root.setLevel(level)
    for name, quiet_level in _QUIET_LOGGERS.items():
        # At DEBUG the libraries speak too; otherwise only their warnings.
        logging.getLogger(name).setLevel(logging.NOTSET if level <= logging.DEBUG else quiet_level)
    logging.captureWarnings(True)
    return handler
