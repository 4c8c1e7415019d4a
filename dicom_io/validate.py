"""Run the reference DICOM validators on a file and parse what they say into errors and warnings.

* ``dciodvfy -new`` (dicom3tools): IOD, module, attribute and code checks; lines ``Error - ...`` and
  ``Warning - ...``.
* PixelMed ``com.pixelmed.validate.DicomSRValidator``: IOD plus SR template (TID 1500...) checks;
  lines ``Error: ...`` and ``Warning: ...``. Run through ``java`` with the JAXP XPath limits lifted:
  JDK 17+ refuses PixelMed's compiled stylesheet otherwise (``JAXP0801003 ... exceeds the '10,000'
  limit``), which is what the Debian ``DicomSRValidator`` wrapper script hits.
* DCMTK ``dsrdump``: reads the SR document tree with DCMTK's strict checks; its log lines ``E: ...``
  and ``W: ...``, and a non-zero exit status, count.

A validator that cannot be found raises :class:`ValidatorNotFound`; one that crashes or times out
raises :class:`ValidatorFailed` (neither ever reads as "valid"). Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PIXELMED_JAR_ENV",
    "ValidationReport",
    "ValidatorFailed",
    "ValidatorNotFound",
    "find_pixelmed_jar",
    "run_dciodvfy",
    "run_dsrdump",
    "run_pixelmed_sr_validator",
    "validate_seg",
    "validate_sr",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the PixelMed jar when it is not at a Debian path.
PIXELMED_JAR_ENV = "SPINE_AGENT_PIXELMED_JAR"
_PIXELMED_JARS = (Path("/usr/share/java/pixelmed.jar"), Path("/usr/local/share/java/pixelmed.jar"))
_JAXP_UNLIMITED = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)

_DCIODVFY_LINE = re.compile(r"^(Error|Warning) - (.*)$")
_PIXELMED_LINE = re.compile(r"^(Error|Warning): (.*)$")
#: PixelMed progress lines; any other unprefixed line (e.g. "Parent content item ... has illegal
#: relationship ...") is a finding and counts as an error.
_PIXELMED_PROGRESS = re.compile(
    r"^(Found .* IOD|Found Root Template .*|Root Template Validation Complete|IOD validation complete)$"
)
_DCMTK_LINE = re.compile(r"^([EFW]): (.*)$")


class ValidatorNotFound(FileNotFoundError):
    """The validator's executable (or PixelMed's jar, or java) is not installed.

    Install the Debian packages ``dicom3tools``, ``pixelmed-apps`` and ``dcmtk``, or set
    ``SPINE_AGENT_PIXELMED_JAR``.
    """


class ValidatorFailed(RuntimeError):
    """The validator ran but crashed or timed out, so it said nothing about the file."""


@dataclass(frozen=True)
class ValidationReport:
    """What one validator said about one file."""

    tool: str
    path: Path
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    #: The validator's complete output (stdout then stderr), for logs and failure messages.
    output: str

    @property
    def ok(self) -> bool:
        """True when the validator reported no error."""
        return not self.errors

    def summary(self) -> str:
        """One line per finding, prefixed with the tool, for an assertion or a log."""
        lines = [f"{self.tool}: {len(self.errors)} errors, {len(self.warnings)} warnings on {self.path}"]
        lines += [f"  error: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _run(command: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise ValidatorNotFound(f"{command[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise ValidatorFailed(f"{Path(command[0]).name} timed out after {timeout_s} s") from exc


def _which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ValidatorNotFound(f"{name} is not on PATH")
    return path


def _parse(tool: str, path: Path, text: str, pattern: re.Pattern[str]) -> ValidationReport:
    errors: list[str] = []
    warnings: list[str] = []
    for line in text.splitlines():
        match = pattern.match(line.strip())
        if match is None:
            continue
        kind, message = match.groups()
        (warnings if kind in ("Warning", "W") else errors).append(message.strip())
    return ValidationReport(tool, path, tuple(errors), tuple(warnings), text)


def run_dciodvfy(path: Path, *, timeout_s: float = 120.0) -> ValidationReport:
    """Validate any DICOM file with dicom3tools' ``dciodvfy -new``."""
    proc = _run([_which("dciodvfy"), "-new", str(path)], timeout_s)
    text = proc.stdout + proc.stderr
    report = _parse("dciodvfy", path, text, _DCIODVFY_LINE)
    if proc.returncode not in (0, 1) or not text.strip():
        raise ValidatorFailed(f"dciodvfy exited with {proc.returncode} on {path}: {text[-500:]}")
    return report


def find_pixelmed_jar() -> Path:
    """The PixelMed jar: ``$SPINE_AGENT_PIXELMED_JAR`` or the Debian ``pixelmed-apps`` location."""
    configured = os.environ.get(PIXELMED_JAR_ENV)
    candidates = [Path(configured)] if configured else list(_PIXELMED_JARS)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValidatorNotFound(
        f"PixelMed jar not found (looked at {', '.join(map(str, candidates))}); "
        f"install pixelmed-apps or set {PIXELMED_JAR_ENV}"
    )


def run_pixelmed_sr_validator(path: Path, *, timeout_s: float = 300.0) -> ValidationReport:
    """Validate an SR with PixelMed's ``DicomSRValidator`` (IOD and templates)."""
    command = [
        _which("java"),
        *_JAXP_UNLIMITED,
        "-cp",
        str(find_pixelmed_jar()),
        "com.pixelmed.validate.DicomSRValidator",
        str(path),
    ]
    proc = _run(command, timeout_s)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 or "Exception" in proc.stderr or "validation complete" not in text:
        raise ValidatorFailed(f"DicomSRValidator failed on {path} (exit {proc.returncode}): {text[-800:]}")
    report = _parse("DicomSRValidator", path, text, _PIXELMED_LINE)
    unprefixed = tuple(
        line.strip()
        for line in text.splitlines()
        if line.strip()
        and _PIXELMED_LINE.match(line.strip()) is None
        and _PIXELMED_PROGRESS.match(line.strip()) is None
    )
    return ValidationReport(report.tool, path, report.errors + unprefixed, report.warnings, text)


def run_dsrdump(path: Path, *, timeout_s: float = 60.0) -> ValidationReport:
    """Read an SR with DCMTK's ``dsrdump`` (strict defaults); its ``E:``/``W:`` log lines count."""
    proc = _run([_which("dsrdump"), "--log-level", "warn", str(path)], timeout_s)
    report = _parse("dsrdump", path, proc.stderr, _DCMTK_LINE)
    if proc.returncode != 0 and report.ok:
        # A failed read with no logged reason is still an error about the file.
        return ValidationReport(
            report.tool,
            path,
            (f"dsrdump exited with status {proc.returncode}",),
            report.warnings,
            proc.stdout + proc.stderr,
        )
    return ValidationReport(report.tool, path, report.errors, report.warnings, proc.stdout + proc.stderr)


def validate_seg(path: Path) -> list[ValidationReport]:
    """All validators that apply to a SEG (``dciodvfy``)."""
    return [run_dciodvfy(path)]


def validate_sr(path: Path) -> list[ValidationReport]:
    """All validators that apply to an SR: ``dciodvfy``, PixelMed ``DicomSRValidator``, ``dsrdump``."""
    reports = [run_dciodvfy(path), run_pixelmed_sr_validator(path), run_dsrdump(path)]
    for report in reports:
        logger.debug("%s", report.summary())
    return reports
