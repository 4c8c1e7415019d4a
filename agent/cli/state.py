"""What every command of one ``spine-agent`` invocation shares: the ``--config`` option, read once."""

from __future__ import annotations

from pathlib import Path

from config import Settings, load_settings


class CliState:
    """Options shared by every command (set by the root callback)."""

    config_path: Path | None = None


STATE = CliState()


def settings() -> Settings:
    """The settings for this invocation (raises ConfigError with a one-line message)."""
    return load_settings(STATE.config_path)
