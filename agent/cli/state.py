"""What every command of one ``spine-agent`` invocation shares: the ``--config`` option, read once."""

from __future__ import annotations

import os
from pathlib import Path

from config import Settings, load_settings, resolve_config_path

#: ``SPINE_AGENT_*`` variables that are options of the command line, not configuration keys.
_NOT_KEYS = frozenset({"SPINE_AGENT_CONFIG", "SPINE_AGENT_DEBUG"})


class CliState:
    """Options shared by every command (set by the root callback)."""

    config_path: Path | None = None


STATE = CliState()


def settings() -> Settings:
    """The settings for this invocation (raises ConfigError with a one-line message)."""
    return load_settings(STATE.config_path)


def config_origin() -> str:
    """Which configuration this invocation reads: the file's absolute path, or the built-in defaults."""
    path = resolve_config_path(STATE.config_path)
    if path is None:
        return "built-in defaults (no --config, no $SPINE_AGENT_CONFIG)"
    return str(path.resolve())


def config_error_line(message: str) -> str:
    """A configuration error's one line, saying so when the offending key comes from the environment.

    The message names the file ("/etc/spine-agent/config.toml: engine.device = 'gpu': ..."), but a
    ``SPINE_AGENT_<SECTION>__<KEY>`` variable (the unit's ``/etc/spine-agent/spine-agent.env``) overrides
    the file, and an admin who looks only at the file finds nothing wrong there."""
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith("SPINE_AGENT_") or upper in _NOT_KEYS:
            continue
        key = upper.removeprefix("SPINE_AGENT_").lower().replace("__", ".")
        if any(f"{lead}{key}{tail}" in message for lead in (": ", " ") for tail in (" ", ":", ".")):
            return f"{message} (set by the environment variable {name}, which overrides the file)"
    return message
