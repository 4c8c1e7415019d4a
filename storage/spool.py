"""The spool on disk: where received instances and job outputs live, and how files get there durably.

Layout under the spool root (``settings.storage.spool_dir``)::

    incoming/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   received instances
    outgoing/<job id>/...                                                  a job's results (SEG, SR, ...)
    work/<job id>/<SOPInstanceUID>.dcm    hard links to exactly the instances a running job reads
    agent-id                              this agent's identity (created once, survives restarts)
    agent.lock                            held (flock) by the running agent: one agent per spool

Every file is written by :func:`atomic_write`: a temporary file in the same directory, ``fsync``,
``os.replace`` onto the final name, ``fsync`` of the directory. A reader (or a crash) sees either the
old file or the new one, never a half-written file. Temporary files start with ``.`` and end in
``.tmp``, so ``*.dcm`` globs never see them.

UIDs become path parts only after :func:`dicom_io.uids.check_uid` accepted them; ledger paths are
resolved with :meth:`Spool.resolve`, which refuses anything that would leave the spool root.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from dicom_io.uids import check_uid

log = logging.getLogger(__name__)

#: Suffix of the temporary files :func:`atomic_write` creates (see :meth:`Spool.remove_stale_temp_files`).
TEMP_SUFFIX = ".tmp"
#: errno values that mean "the disk (or the quota) is full": the SCP answers 0xA700 for these.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(directory: Path) -> None:
    """Create ``directory`` and missing parents; each new entry is made durable in its parent."""
    if directory.is_dir():
        return
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another thread created it meanwhile
            path.mkdir()
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes | Iterable[bytes]) -> int:
    """Write ``data`` (bytes or chunks) to ``path`` durably and atomically; return the bytes written.

    An existing file at ``path`` is replaced in one step. On any error the temporary file is removed and
    the error re-raised (``OSError`` with ``errno`` ENOSPC/EDQUOT when the disk is full); ``path`` is
    left as it was. The parent directory must exist (see :func:`ensure_dir`).
    """
    chunks = (data,) if isinstance(data, bytes | bytearray | memoryview) else data
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    written = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                written += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o640)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)
    return written


def atomic_write_bytes(path: Path, data: bytes) -> int:
    """:func:`atomic_write` that first creates the parent folder (durably) if it is missing."""
    ensure_dir(path.parent)
    return atomic_write(path, data)


def is_no_space_error(exc: BaseException) -> bool:
    """True for the ``OSError`` a full disk or quota raises."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


class SpoolBusy(RuntimeError):
    """Another running agent holds this spool's lock."""


#: File holding the agent identity, inside the spool root.
AGENT_ID_FILE = "agent-id"
#: File the running agent holds an exclusive ``flock`` on.
LOCK_FILE = "agent.lock"


class Spool:
    """Paths and writes under one spool root; safe to share between threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.incoming_root = self.root / "incoming"
        self.outgoing_root = self.root / "outgoing"
        self.work_root = self.root / "work"
        self._lock_fd: int | None = None

    def create(self) -> None:
        """Create the root, ``incoming/`` and ``outgoing/`` (idempotent)."""
        ensure_dir(self.incoming_root)
        ensure_dir(self.outgoing_root)

    # --- paths ----------------------------------------------------------------------------------------

    def incoming_relpath(self, study_uid: str, series_uid: str) -> str:
        """``incoming/<study>/<series>``, relative to the root (what the ledger stores as ``spool_path``).

        Raises :class:`dicom_io.errors.InvalidUID` when either UID breaks the DICOM grammar.
        """
        study = check_uid(study_uid, "Study Instance UID")
        series = check_uid(series_uid, "Series Instance UID")
        return f"incoming/{study}/{series}"

    def incoming_dir(self, study_uid: str, series_uid: str) -> Path:
        """Folder of one series' received instances (not created here)."""
        return self.root / self.incoming_relpath(study_uid, series_uid)

    def instance_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """``incoming/<study>/<series>/<sop>.dcm``; every UID is checked first."""
        sop = check_uid(sop_instance_uid, "SOP Instance UID")
        return self.incoming_dir(study_uid, series_uid) / f"{sop}.dcm"

    def output_relpath(self, job_id: int) -> str:
        """``outgoing/<job id>``, relative to the root (what the ledger stores as ``output_path``)."""
        if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 1:
            raise ValueError(f"job id must be a positive integer, got {job_id!r}")
        return f"outgoing/{job_id}"

    def output_dir(self, job_id: int) -> Path:
        """Folder of one job's results (not created here)."""
        return self.root / self.output_relpath(job_id)

    def work_dir(self, job_id: int) -> Path:
        """Folder of hard links to the instances one running job reads (removed when the attempt ends)."""
        return self.root / "work" / self.output_relpath(job_id).split("/", 1)[1]

    # --- identity -------------------------------------------------------------------------------------

    def agent_identity(self) -> str:
        """This agent's identity: 16 hex digits made once and kept in ``<spool>/agent-id``.

        It survives restarts (the lease owner of a job is ``<identity>@<host>:<pid>``, so a restarted agent
        finds the jobs its previous run held) and differs between agents with their own spools, which is
        what a shared PostgreSQL ledger needs.
        """
        path = self.root / AGENT_ID_FILE
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            text = ""
        if len(text) == 16 and all(c in "0123456789abcdef" for c in text):
            return text
        identity = uuid.uuid4().hex[:16]
        ensure_dir(self.root)
        atomic_write(path, (identity + "\n").encode("ascii"))
        return identity

    def lock(self) -> None:
        """Hold ``<spool>/agent.lock`` until :meth:`unlock` or the process ends (else :class:`SpoolBusy`)."""
        if self._lock_fd is not None:
            return
        ensure_dir(self.root)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusy(f"another spine-agent is running on the spool {self.root}") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def resolve(self, relpath: str) -> Path:
        """An absolute path for a ledger ``spool_path``/``output_path``; refuses paths leaving the root."""
        candidate = Path(relpath)
        if candidate.is_absolute() or ".." in candidate.parts or not candidate.parts:
            raise ValueError(f"spool path {relpath!r} must be relative and stay inside the spool")
        return self.root / candidate

    def relative(self, path: Path) -> str:
        """The spool-relative form of ``path`` (what the ledger stores); refuses paths outside the root."""
        absolute = Path(path).expanduser().absolute()
        try:
            relpath = absolute.relative_to(self.root)
        except ValueError:
            raise ValueError(f"{path} is not inside the spool {self.root}") from None
        if ".." in relpath.parts or not relpath.parts:
            raise ValueError(f"{path} is not inside the spool {self.root}")
        return relpath.as_posix()

    # --- writing --------------------------------------------------------------------------------------

    def write_instance(
        self, study_uid: str, series_uid: str, sop_instance_uid: str, data: bytes | Iterable[bytes]
    ) -> Path:
        """Write one received instance durably (replacing an earlier copy of the same SOP Instance UID)."""
        path = self.instance_path(study_uid, series_uid, sop_instance_uid)
        ensure_dir(path.parent)
        atomic_write(path, data)
        return path

    # --- disk space -----------------------------------------------------------------------------------

    def free_bytes(self) -> int:
        """Free bytes (for unprivileged users) on the spool's file system."""
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return int(shutil.disk_usage(probe).free)

    def has_room(self, reserve_bytes: int, incoming_bytes: int = 0) -> bool:
        """True when writing ``incoming_bytes`` still leaves ``reserve_bytes`` free."""
        return self.free_bytes() - incoming_bytes >= reserve_bytes

    # --- housekeeping ---------------------------------------------------------------------------------

    def remove_stale_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Delete temporary files a crash left under ``incoming/`` and ``outgoing/``; return how many."""
        cutoff = time.time() - older_than_s
        removed = 0
        for top in (self.incoming_root, self.outgoing_root):
            if not top.is_dir():
                continue
            for path in top.rglob(f".*{TEMP_SUFFIX}"):
                try:
                    if path.is_file() and path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except OSError as exc:
                    # the name holds a SOP Instance UID: full detail at DEBUG only
                    log.warning("could not remove a stale temporary file: %s", exc.strerror)
                    log.debug("stale temporary file %s: %s", path, exc)
        if removed:
            log.info("removed %d stale temporary file(s) from the spool", removed)
        return removed
