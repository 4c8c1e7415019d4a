"""What every command of one ``spine-agent`` invocation shares: the ``--config`` option, read once."""

from __future__ import annotations

from pathlib import Path

from config import Settings, load_settings, resolve_config_path


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
