"""The ``spine-agent`` command line: the typer app, its commands and the demo."""

from agent.cli.app import app, main

__all__ = ["app", "main"]
