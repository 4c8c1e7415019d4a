"""What ``serve`` checks before it opens anything, and what ``config check`` checks too.

Every problem is one line naming the configuration key and the path or value, so a bad start fails in
the first second with a message an admin can act on (instead of a traceback once the engine has loaded).
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable
from pathlib import Path

from config import ConfigError, Settings


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):  # pragma: no cover - non-POSIX or a uid without a passwd entry
        return str(os.geteuid())


def _writable_folder(path: Path, key: str) -> str | None:
    """None when ``path`` is (or can be created as) a folder this process may write; else the problem."""
    path = path.expanduser()
    if path.exists():
        if not path.is_dir():
            return f"{key} = {str(path)!r}: is a file, not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{key} = {str(path)!r}: folder not writable by user {_user()}"
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{key} = {str(path)!r}: cannot be created ({parent} is a file)"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{key} = {str(path)!r}: does not exist and {parent} is not writable by user {_user()}"
    return None


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` ledger URL (None for PostgreSQL or an in-memory database)."""
    prefix = url.split("://", 1)[0]
    if not prefix.startswith("sqlite"):
        return None
    database = url.split("://", 1)[1][1:].split("?", 1)[0]
    return Path(database) if database and database != ":memory:" else None


def redacted_url(url: str) -> str:
    """The ledger URL with its password replaced by ``***`` (for logs and messages)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown without anything after the scheme
        return url.split("://", 1)[0] + "://..."


def _ledger_problem(url: str) -> str | None:
    path = sqlite_path(url)
    if path is None:
        return None
    path = path.expanduser()
    if path.exists():
        if not path.is_file():
            return f"ledger.url: {path} is not a file"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"ledger.url: {path} is not writable by user {_user()}"
        # SQLite in WAL mode writes -wal and -shm files beside the database.
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return f"ledger.url: folder {path.parent} is not writable by user {_user()} (SQLite needs it)"
        return None
    problem = _writable_folder(path.parent, "ledger.url folder")
    return problem


def _weights_problem(settings: Settings) -> str | None:
    from inference.engine.weights import WeightsError, default_weights_dir

    configured = settings.engine.weights_dir
    if configured is not None:
        if not (configured / "engine.json").is_file():
            return f"engine.weights_dir = {str(configured)!r}: no engine.json there"
        return None
    try:
        default_weights_dir()
    except WeightsError as exc:
        return f"engine.weights_dir is unset and {exc}"
    return None


def startup_problems(settings: Settings, *, weights: bool = True) -> list[str]:
    """Every problem that would stop ``serve``, one line each (empty = it would start)."""
    from agent.service.dicom_client import check_destination_tls
    from agent.service.scp import build_tls_context
    from agent.web.dashboard import load_admin_token

    problems = [
        _writable_folder(settings.storage.spool_dir, "storage.spool_dir"),
        _ledger_problem(settings.ledger.url),
        _weights_problem(settings) if weights else None,
    ]
    checks: list[Callable[[], object]] = [
        lambda: load_admin_token(settings.http),
        lambda: build_tls_context(settings),
    ]
    checks += [functools.partial(check_destination_tls, d) for d in settings.destinations]
    for check in checks:
        try:
            check()
        except ConfigError as exc:
            problems.append(str(exc))
    return [p for p in problems if p]


def check_startup(settings: Settings, *, weights: bool = True) -> None:
    """Raise :class:`ConfigError` with the first start-up problem (see :func:`startup_problems`)."""
    problems = startup_problems(settings, weights=weights)
    if problems:
        more = f" (and {len(problems) - 1} more: see `spine-agent config check`)" if problems[1:] else ""
        raise ConfigError(problems[0] + more)


def port_in_use(host: str, port: int) -> bool:
    """True when ``host:port`` cannot be bound right now (another process listens there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False
