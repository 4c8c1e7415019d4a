"""Shared pieces of the reliability tests: the agent as a process, DCMTK peers, series, checks.

Used by the reliability suite (issue 15, ``test_suite_*.py``) and by the reproducing tests of the fixes
of issue 16 (``test_fix_*.py``).

The agent runs as a real process: ``python -m tests.reliability.suite_support serve CONFIG`` runs the
``spine-agent serve`` command itself (typer CLI, config file, logging, signal handling, SCP, scheduler,
worker, sender, HTTP) with one substitution: the engine is :class:`BoxPredictor`, a deterministic
stand-in that labels a box in the middle of the volume in a configurable time and appends what it was
given (slice count, source SOP Instance UIDs) as one JSON line to ``$SPINE_SUITE_ENGINE_LOG``. The tests
are about what happens around the engine (receive, ledger, spool, delivery, restarts); the real engine
takes minutes per series on this CPU and is tested in tests/inference and tests/e2e.

Everything else is real: DCMTK ``storescu`` sends, DCMTK ``storescp`` is the destination (``+uf``: every
received instance is its own file, so a result sent twice is counted twice), SIGKILL is SIGKILL.

The subprocess imports the code of the tree this file is in (it runs there, with ``PYTHONPATH`` set to
it), so copying the tests into a checkout of an older commit shows them failing there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom

from dicom_io.result import Landmark, Result
from dicom_io.volume import Volume
from storage import JobState, Ledger
from tests.support import free_port, require_tool

if TYPE_CHECKING:
    from tests.agent.service.conftest import SyntheticSeries

#: Where the suite's figures go when a run should feed docs/reliability.md.
REPORT_ENV = "SPINE_SUITE_REPORT"
#: The long variants exist only when this is "1" (they take tens of minutes; the plain ``pytest`` run,
#: which CI makes, also runs ``slow`` tests). They are marked ``slow`` as well.
LONG_ENV = "SPINE_SUITE_LONG"
#: Seconds the stand-in engine takes per series (so kills land during "inference" too).
ENGINE_DELAY_ENV = "SPINE_SUITE_ENGINE_DELAY_S"
#: The JSON-lines file where the stand-in engine records each call (see :meth:`SuiteAgent.engine_calls`).
ENGINE_LOG_ENV = "SPINE_SUITE_ENGINE_LOG"
#: The source tree the agent subprocess runs (the one this file is in).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: A full UID (at least three components) in text.
FULL_UID = re.compile(r"(?<![\w.])[0-9]+(?:\.[0-9]+){2,}(?![0-9])")

FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


#: The per-test limit of a long variant (pytest-timeout), in place of pyproject's 600 s.
LONG_TIMEOUT_S = 4 * 3600


def long_marks() -> list[Any]:
    """``slow``, and a per-test limit that a campaign, a fuzz run or the soak fits in (pyproject's 600 s
    would cut them short)."""
    import pytest  # here, not at the top: the agent subprocess imports this module too

    return [pytest.mark.slow, pytest.mark.timeout(LONG_TIMEOUT_S)]


def variants(short: Any, long: Any) -> list[Any]:
    """Parameters for a short (default run) and a long (``slow``, only with $SPINE_SUITE_LONG=1) variant."""
    import pytest

    out = [pytest.param(short, id="short")]
    if os.environ.get(LONG_ENV) == "1":
        out.append(pytest.param(long, id="long", marks=long_marks()))
    return out


# --- the engine stand-in and the launcher -------------------------------------------------------------


class BoxPredictor:
    """Labels L1 (VerSe 20) as a box in the middle third of the volume, after ``delay_s`` seconds; with a
    ``record`` file, first appends ``{"slices": ..., "sop_uids": [...]}`` (what it was given) to it."""

    def __init__(self, delay_s: float = 0.0, record: Path | None = None) -> None:
        self.delay_s = delay_s
        self.record = record
        self.plan = type("Plan", (), {"version": "suite-box"})()

    def predict(self, volume: Volume) -> Result:
        if self.record is not None:
            uids = list(volume.source.sop_instance_uids) if volume.source else []
            with self.record.open("a") as handle:
                handle.write(json.dumps({"slices": int(volume.shape[0]), "sop_uids": uids}) + "\n")
        time.sleep(self.delay_s)
        mask = np.zeros(volume.shape, np.uint8)
        k, j, i = (max(1, n // 3) for n in volume.shape)
        mask[k : 2 * k + 1, j : 2 * j + 1, i : 2 * i + 1] = 20
        centre = volume.index_to_lps([n / 2 for n in volume.shape[::-1]])
        landmark = Landmark(20, (float(centre[0]), float(centre[1]), float(centre[2])), 0.9)
        return Result(
            mask=mask, landmarks=[landmark], timings={"stage1": self.delay_s}, model_version="suite-box"
        )


def _serve(config: str) -> None:  # pragma: no cover - runs in the agent subprocess
    import agent.service.service as service_module
    from agent.cli.app import main

    delay = float(os.environ.get(ENGINE_DELAY_ENV, "0.3"))
    record = os.environ.get(ENGINE_LOG_ENV)
    engine = BoxPredictor(delay, Path(record) if record else None)
    service_module.load_engine = lambda settings: engine  # type: ignore[assignment]
    sys.argv = ["spine-agent", "--config", config, "serve", "--grace", "0"]
    main()


# --- the agent as a process ---------------------------------------------------------------------------


@dataclass
class SuiteAgent:
    """``spine-agent serve`` (engine stand-in) with its own config, spool, ledger and log."""

    directory: Path
    dicom_port: int
    http_port: int
    config: Path
    spool: Path
    engine_delay_s: float = 0.3
    #: Run inside ``unshare`` with the spool on a tmpfs of this many KiB (None: a plain process).
    tmpfs_kib: int | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.directory / 'ledger.sqlite3'}"

    @property
    def log_path(self) -> Path:
        return self.directory / "agent.log"

    @property
    def engine_log(self) -> Path:
        return self.directory / "engine.jsonl"

    def start(self, timeout_s: float = 300.0, *, wait_ready: bool = True) -> None:
        """Start ``serve``; with ``wait_ready``, return once it logged "spine-agent listening" (SCP, HTTP,
        worker and scheduler are up), fail if it exits first. The timeout is generous: on a machine busy
        with training, a nice 19 start-up takes minutes, and start-up time is not what the suite checks."""
        assert self.process is None or self.process.poll() is not None, "already running"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [sys.executable, "-m", "tests.reliability.suite_support", "serve", str(self.config)]
        if self.tmpfs_kib is not None:
            self.spool.mkdir(parents=True, exist_ok=True)
            script = f"mount -t tmpfs -o size={self.tmpfs_kib}k tmpfs {self.spool} && exec " + " ".join(
                f"'{part}'" for part in command
            )
            command = [require_tool("unshare"), "--user", "--map-root-user", "--mount", "sh", "-c", script]
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
            ENGINE_DELAY_ENV: str(self.engine_delay_s),
            ENGINE_LOG_ENV: str(self.engine_log),
        }
        handle = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env
        )
        handle.close()
        self.starts += 1
        if not wait_ready:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited early (rc {self.process.returncode}):\n{self.log_tail()}")
            with self.log_path.open("rb") as f:
                f.seek(offset)
                if b"spine-agent listening" in f.read():
                    return
            time.sleep(0.1)
        self.kill()  # not left behind by a test that fails here
        raise AssertionError(f"agent not listening after {timeout_s} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL (no clean-up of any kind) and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def in_namespace(self, shell: str) -> subprocess.CompletedProcess[str]:
        """Run ``shell`` in the agent's mount namespace (where its tmpfs spool is mounted)."""
        assert self.process is not None and self.tmpfs_kib is not None
        nsenter = require_tool("nsenter")
        return subprocess.run(
            [nsenter, "-t", str(self.process.pid), "-U", "-m", "--preserve-credentials", "sh", "-c", shell],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def ledger(self) -> Ledger:
        return Ledger(self.ledger_url)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (other lines, e.g. a traceback, are returned as {"raw": line})."""
        records: list[dict[str, Any]] = []
        for line in self.log_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                records.append({"raw": line})
        return records

    def engine_calls(self) -> list[dict[str, Any]]:
        """What the stand-in engine was given, one dict per call (``slices``, ``sop_uids``), in order."""
        if not self.engine_log.exists():
            return []
        return [json.loads(line) for line in self.engine_log.read_text().splitlines() if line.strip()]

    def http_get(self, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
        """(status, body); (0, "") when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=timeout_s) as r:  # noqa: S310
                return int(r.status), r.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""

    def readyz(self) -> tuple[int, dict[str, Any]]:
        """``/readyz``: (status, the JSON body, or {})."""
        status, body = self.http_get("/readyz")
        try:
            return status, json.loads(body) if body else {}
        except ValueError:
            return status, {}


def make_agent(
    directory: Path,
    *,
    destinations: Sequence[tuple[str, str, int]] = (),
    dicom: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
    ledger: dict[str, Any] | None = None,
    delivery: dict[str, Any] | None = None,
    spool_dir: Path | None = None,
    engine_delay_s: float = 0.3,
    log_level: str = "INFO",
    tmpfs_kib: int | None = None,
) -> SuiteAgent:
    """Write a config for an agent on free loopback ports; ``destinations`` are (name, AE, port); the
    ``dicom``, ``storage``, ``ledger`` and ``delivery`` values override the defaults below key by key."""
    directory.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    dicom_values: dict[str, Any] = {
        "ae_title": "SPINEAGENT",
        "bind_address": "127.0.0.1",
        "port": dicom_port,
        "allowed_calling_aes": ["STORESCU"],
        "stable_age_s": 1.0,
    }
    dicom_values.update(dicom or {})
    storage_values: dict[str, Any] = {
        "spool_dir": str(spool_dir or directory / "spool"),
        "disk_reserve_mb": 0,
    }
    storage_values.update(storage or {})
    ledger_values: dict[str, Any] = {"url": f"sqlite:///{directory / 'ledger.sqlite3'}", "lease_s": 4.0}
    ledger_values.update(ledger or {})
    delivery_values: dict[str, Any] = {"retry_base_s": 0.5, "retry_cap_s": 2.0}
    delivery_values.update(delivery or {})
    lines = [_section("dicom", {k: v for k, v in dicom_values.items() if k != "tls"})]
    if "tls" in dicom_values:
        lines.append(_section("dicom.tls", dicom_values["tls"]))
    for name, ae, port in destinations:
        lines.append(
            "[[destinations]]\n" + _pairs({"name": name, "ae_title": ae, "host": "127.0.0.1", "port": port})
        )
    lines += [
        _section("storage", storage_values),
        _section("ledger", ledger_values),
        _section("delivery", delivery_values),
        _section("retention", {"interval_s": 3600.0}),
        # The suite's synthetic series are small (10-24 slices): every one is processed, as before routing.
        _section("routing", {"enabled": False}),
        _section("http", {"bind_address": "127.0.0.1", "port": http_port, "dashboard": False}),
        _section("logging", {"format": "json", "level": log_level}),
    ]
    config = directory / "agent.toml"
    config.write_text("\n".join(lines))
    spool = Path(storage_values["spool_dir"])
    return SuiteAgent(
        directory, dicom_port, http_port, config, spool, engine_delay_s=engine_delay_s, tmpfs_kib=tmpfs_kib
    )


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def _pairs(values: dict[str, Any]) -> str:
    return "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())


def _section(name: str, values: dict[str, Any]) -> str:
    return f"[{name}]\n" + _pairs(values)


# --- DCMTK peers --------------------------------------------------------------------------------------


@dataclass
class StoreSCP:
    """DCMTK ``storescp`` as a destination: every received instance becomes its own file (``+uf``)."""

    directory: Path
    port: int
    ae_title: str = "DEST"
    extra: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        binary = require_tool("storescp")
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory.parent / f"{self.directory.name}.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "-aet", self.ae_title, "+uf", "-od", str(self.directory), *self.extra, str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(lambda: _port_open(self.port), 20, 0.1, what="storescp to listen")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def files(self) -> list[Path]:
        """The files received, by name (DCMTK names a SEG ``SG.*`` and an SR ``SR*``)."""
        if not self.directory.exists():
            return []
        return sorted(p for p in self.directory.iterdir() if p.is_file() and not p.name.startswith("."))

    def restart(self, extra: Sequence[str] | None = None) -> None:
        self.stop()
        if extra is not None:
            self.extra = extra
        self.start()

    def held(self) -> Counter[str]:
        """How many times the destination holds each SOP Instance UID (files it could read)."""
        counts: Counter[str] = Counter()
        for path in self.directory.iterdir() if self.directory.exists() else ():
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                counts[str(ds.SOPInstanceUID)] += 1
            except Exception:  # noqa: S112 - a file still being written is not held yet
                continue
        return counts


def start_storescp(
    directory: Path, extra: Sequence[str] = (), *, on_reception: str | None = None
) -> StoreSCP:
    """storescp on a free port; ``on_reception`` runs synchronously after each file (``#f``: its name)."""
    if on_reception:
        extra = [*extra, "--exec-on-reception", on_reception, "--exec-sync"]
    return StoreSCP(directory, free_port(), extra=extra).start()


#: SOP Class UIDs of structured reports start with this (Basic Text SR, Enhanced SR, Comprehensive SR...).
_SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


@dataclass
class QueryStoreSCP:
    """A destination that answers C-STORE and, unless ``find`` is False, C-FIND (Study Root Query/Retrieve,
    IMAGE level, matching on the Study, Series and SOP Instance UIDs given), like a PACS (Orthanc) does.

    A pynetdicom SCP in the test process. Every reception is written to its own file before the answer is
    sent, and counted (:meth:`held`), so an instance sent twice is held twice (unlike Orthanc, which keeps
    one copy per SOP Instance UID and so cannot count a re-send); C-FIND answers from what was received.

    Faults on the first SR received (after it is written and counted): ``hold_first_sr_s`` sleeps that long
    before answering (a kill of the sender lands in between: it never sees the Success); ``abort_first_sr``
    aborts the association instead of answering. ``first_sr_held`` is set when either happens.

    Faults of the query association (one that proposes only the C-FIND context, as the sender's does), on
    the first ``query_faults`` of them: ``query_fault`` "reject_transient" (A-ASSOCIATE-RJ, rejected-
    transient, local limit exceeded: a PACS at its association limit), "reject_permanent" (rejected-
    permanent, no reason given) or "abort" (A-ABORT instead of an answer). ``store_rejects``: the first so
    many other associations are rejected transiently. ``find_status`` (with ``find_comment`` as its Error
    Comment) answers every C-FIND with that status; ``find_abort`` aborts the association on a C-FIND.
    ``query_associations`` counts the query associations requested, faulted ones included.
    """

    directory: Path
    port: int
    ae_title: str = "QDEST"
    find: bool = True
    hold_first_sr_s: float = 0.0
    abort_first_sr: bool = False
    #: Seconds every C-STORE takes after the instance is written (a slow PACS: deliveries last long enough
    #: for a kill to land inside them).
    store_delay_s: float = 0.0
    query_fault: str | None = None
    query_faults: int = 1_000_000
    store_rejects: int = 0
    find_status: int | None = None
    find_comment: str = ""
    find_abort: bool = False
    finds: int = 0
    query_associations: int = 0
    other_associations: int = 0
    first_sr_held: Any = None
    _received: list[tuple[str, str, str]] = field(default_factory=list)  # (study, series, sop) in order
    _lock: Any = None
    _server: Any = None

    def start(self) -> QueryStoreSCP:
        import threading

        from pynetdicom import AE, StoragePresentationContexts, evt
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StudyRootQueryRetrieveInformationModelFind,
            Verification,
        )

        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.first_sr_held = threading.Event()
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
        if self.find:
            ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_REQUESTED, self._on_requested),
        ]
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_requested(self, event: Any) -> None:
        """A-ASSOCIATE-RQ received: the association faults above (pynetdicom lets this handler answer it)."""
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StudyRootQueryRetrieveInformationModelFind,
        )

        contexts = event.assoc.requestor.primitive.presentation_context_definition_list
        query = all(str(cx.abstract_syntax) == StudyRootQueryRetrieveInformationModelFind for cx in contexts)
        with self._lock:
            if query:
                self.query_associations += 1
                fault = self.query_fault if self.query_associations <= self.query_faults else None
            else:
                self.other_associations += 1
                fault = "reject_transient" if self.other_associations <= self.store_rejects else None
        if fault == "reject_transient":
            event.assoc.acse.send_reject(0x02, 0x03, 0x02)
        elif fault == "reject_permanent":
            event.assoc.acse.send_reject(0x01, 0x01, 0x01)
        elif fault == "abort":
            event.assoc.acse.send_abort(0x00)
        elif fault is not None:
            raise ValueError(f"unknown query_fault {fault!r}")
        if fault is not None:
            event.assoc.kill()  # lets the DUL send the answer before the server closes the socket

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        keys = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        with self._lock:
            n = len(self._received)
            ds.save_as(self.directory / f"{n:06d}.dcm", enforce_file_format=True)
            self._received.append(keys)
            fault = str(ds.SOPClassUID).startswith(_SR_CLASS_PREFIX) and not self.first_sr_held.is_set()
            if fault:
                self.first_sr_held.set()
        if fault and self.abort_first_sr:
            event.assoc.abort()
            return 0x0000  # never sent: the association is gone
        if fault and self.hold_first_sr_s:
            time.sleep(self.hold_first_sr_s)
        time.sleep(self.store_delay_s)
        return 0x0000

    def _on_find(self, event: Any) -> Iterable[tuple[int, Any]]:
        query = event.identifier
        with self._lock:
            self.finds += 1
            received = list(dict.fromkeys(self._received))
        if self.find_abort:
            event.assoc.abort()
            return
        if self.find_status is not None:
            status = pydicom.Dataset()
            status.Status = self.find_status
            if self.find_comment:
                status.ErrorComment = self.find_comment
            yield status, None
            return
        if str(query.get("QueryRetrieveLevel", "")) != "IMAGE":
            yield 0xA900, None  # this test PACS answers IMAGE-level queries only
            return
        wanted = [
            str(query.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        ]
        for keys in received:
            if all(not w or w == k for w, k in zip(wanted, keys, strict=True)):
                answer = pydicom.Dataset()
                answer.QueryRetrieveLevel = "IMAGE"
                answer.StudyInstanceUID, answer.SeriesInstanceUID, answer.SOPInstanceUID = keys
                yield 0xFF00, answer

    def held(self) -> Counter[str]:
        """How many times the destination received (and holds a file of) each SOP Instance UID."""
        with self._lock:
            return Counter(sop for _, _, sop in self._received)


def start_query_scp(directory: Path, **options: Any) -> QueryStoreSCP:
    """:class:`QueryStoreSCP` on a free loopback port."""
    return QueryStoreSCP(directory, free_port(), **options).start()


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


_SENDING = re.compile(r"Sending file: (.+?)\s*$")
_RESPONSE = re.compile(r"Received Store Response \((.*?)\)")


@dataclass
class StorescuRun:
    """One DCMTK ``storescu`` process; :meth:`acknowledged` parses which files got Success."""

    files: list[Path]
    process: subprocess.Popen[str]
    output: str = ""

    def wait(self, timeout_s: float = 120.0) -> int:
        self.output, _ = self.process.communicate(timeout=timeout_s)
        return int(self.process.returncode)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def statuses(self) -> dict[Path, str]:
        """File -> the status text storescu printed for it (files without a response are absent)."""
        out: dict[Path, str] = {}
        current: Path | None = None
        for line in self.output.splitlines():
            m = _SENDING.search(line)
            if m:
                current = Path(m.group(1))
                continue
            m = _RESPONSE.search(line)
            if m and current is not None:
                out[current] = m.group(1)
                current = None
        return out

    def acknowledged(self) -> list[Path]:
        return [p for p, status in self.statuses().items() if status == "Success"]


def storescu(
    port: int,
    files: Iterable[Path],
    *,
    calling_ae: str = "STORESCU",
    called_ae: str = "SPINEAGENT",
    extra: Sequence[str] = (),
) -> StorescuRun:
    """Start ``storescu -v`` on ``files`` (returns at once; call ``wait``)."""
    binary = require_tool("storescu")
    file_list = list(files)
    process = subprocess.Popen(
        [
            binary,
            "-v",
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            *extra,
            "127.0.0.1",
            str(port),
            *map(str, file_list),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return StorescuRun(file_list, process)


def store(
    port: int,
    files: Iterable[Path],
    *,
    calling_ae: str = "STORESCU",
    check: bool = True,
    timeout_s: float = 120.0,
) -> StorescuRun:
    """:func:`storescu` and wait for it; with ``check``, assert that it exited 0 (every file stored)."""
    run = storescu(port, files, calling_ae=calling_ae)
    returncode = run.wait(timeout_s)
    if check:
        assert returncode == 0, run.output
    return run


# --- series -------------------------------------------------------------------------------------------


def make_series(
    root: Path, count: int, *, slices: int = 16, size: int = 32, seed: int = 0
) -> list[SyntheticSeries]:
    """``count`` small CT series (their own study each) written under ``root``."""
    from tests.agent.service.conftest import write_series

    return [
        write_series(root / f"s{n:03d}", slices=slices, rows=size, columns=size, seed=seed + n)
        for n in range(count)
    ]


def sop_of(path: Path) -> str:
    return path.stem


def result_uids(agent: SuiteAgent, output_path: str | None) -> list[str]:
    """The SOP Instance UIDs of a job's results (SEG, SR) in the agent's spool, as written."""
    if not output_path:
        return []
    folder = agent.spool / output_path
    return [
        str(pydicom.dcmread(folder / name, stop_before_pixels=True).SOPInstanceUID)
        for name in ("seg.dcm", "sr.dcm")
        if (folder / name).exists()
    ]


# --- checks -------------------------------------------------------------------------------------------


@dataclass
class LedgerView:
    """What the ledger holds, read once (series versions, their jobs, deliveries)."""

    versions: dict[str, list[tuple[int, int, int]]] = field(
        default_factory=dict
    )  # uid -> (id, version, count)
    jobs_by_series: dict[int, list[Any]] = field(default_factory=dict)
    deliveries: list[Any] = field(default_factory=list)

    @classmethod
    def read(cls, ledger: Ledger, series_uids: Iterable[str]) -> LedgerView:
        view = cls()
        for uid in series_uids:
            view.versions[uid] = [(s.id, s.version, s.instance_count) for s in ledger.series_versions(uid)]
        for job in ledger.list_jobs(limit=100_000):
            view.jobs_by_series.setdefault(job.series_id, []).append(job)
        view.deliveries = ledger.list_deliveries()
        return view

    def all_versions_finished(self) -> bool:
        return all(
            len(self.jobs_by_series.get(sid, [])) == 1 and self.jobs_by_series[sid][0].state in FINISHED
            for versions in self.versions.values()
            for sid, _, _ in versions
        )


def wait_for(
    predicate: Callable[[], object], timeout_s: float, poll_s: float = 0.3, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it is truthy; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def write_report(section: str, rows: list[dict[str, Any]]) -> None:
    """Append figures for docs/reliability.md to the file named by $SPINE_SUITE_REPORT (if set)."""
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    with open(target, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({"section": section, **row}) + "\n")


def render_report(path: Path) -> str:
    """The figures a run wrote to $SPINE_SUITE_REPORT as Markdown tables, one per section."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        rows.setdefault(record.pop("section"), []).append(record)
    out = []
    for section, records in rows.items():
        keys = list(dict.fromkeys(k for r in records for k in r))
        out.append(f"### {section}\n")
        out.append("| " + " | ".join(keys) + " |")
        out.append("|" + "---|" * len(keys))
        for r in records:
            cells = [_cell(r.get(k, "")) for k in keys]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return "<br>".join(f"{k}: {v}" for k, v in sorted(value.items()))
    return str(value).replace("|", "/")


if __name__ == "__main__":  # pragma: no cover - the agent subprocess, and the report
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        _serve(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        print(render_report(Path(sys.argv[2])))
    else:
        sys.exit("usage: python -m tests.reliability.suite_support serve CONFIG | report FILE")
