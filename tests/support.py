"""Helpers every test uses to reach outside the process: tools, servers, dependencies, ports.

One rule for anything a test needs but cannot provide itself (an external tool, a server, an optional
dependency, the shipped weights, a browser): :func:`require` skips the test on a developer's machine and
fails it where ``CI`` is set, because ``.ci/run`` installs everything the suite needs. ``tests/conftest.py``
backs this up: with ``CI`` set, any skip that is not a ``gpu``-marked test becomes a failure.

Ports: :func:`free_port` hands out a loopback port and keeps it *held* (a bound, non-listening socket with
``SO_REUSEADDR``) until the end of the test session. While it is held the kernel never gives it out as
the local port of an outgoing connection or to another ``bind(0)``, yet a server that binds with
``SO_REUSEADDR`` (pynetdicom, the stdlib HTTP servers, DCMTK, Orthanc) can still listen on it. So the port
cannot be taken between the moment it is chosen and the moment the server starts.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import socket
import threading
from types import ModuleType
from typing import NoReturn

import pytest

__all__ = ["free_port", "in_ci", "release_port", "require", "require_module", "require_tool"]


def in_ci() -> bool:
    """True where ``CI`` is set to anything but an empty string, ``0`` or ``false`` (``.ci/run`` sets it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason} (in CI: .ci/run installs everything the tests need)", pytrace=False)
    pytest.skip(reason)


def require(condition: object, reason: str) -> None:
    """Skip the calling test (or fixture) with ``reason`` unless ``condition`` holds; fail instead in CI."""
    if not condition:
        _missing(reason)


def require_tool(name: str) -> str:
    """Path of an external program on PATH; skip locally when absent, fail in CI."""
    path = shutil.which(name)
    if path is None:
        _missing(f"{name} is not installed")
    return path


def require_module(name: str) -> ModuleType:
    """Import an optional dependency (``importorskip`` that fails in CI)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        _missing(f"cannot import {name}: {exc}")


_held: dict[int, socket.socket] = {}
_held_lock = threading.Lock()


def free_port() -> int:
    """A loopback TCP port chosen by the OS and held for this test session (see the module docstring)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    with _held_lock:
        _held[port] = sock
    return port


def release_port(port: int) -> None:
    """Stop holding ``port`` (for a server that binds without ``SO_REUSEADDR``); a no-op if not held."""
    with _held_lock:
        sock = _held.pop(port, None)
    if sock is not None:
        sock.close()


@atexit.register
def _release_all() -> None:
    with _held_lock:
        for sock in _held.values():
            sock.close()
        _held.clear()
