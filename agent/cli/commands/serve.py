"""``spine-agent serve``."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

#: Exit status for a configuration error (sysexits.h EX_CONFIG). The systemd unit lists it in
#: RestartPreventExitStatus: restarting cannot fix a bad file, so the unit stays failed with the reason.
EXIT_CONFIG = 78


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        grace: Annotated[
            float,
            typer.Option(min=0, help="Seconds to let the current job finish on SIGTERM before releasing it."),
        ] = 20.0,
    ) -> None:
        """Run the agent: Storage SCP, quiet-timer scheduler, engine worker, sender, health/metrics.

        A configuration problem (a bad key, a folder it cannot write, missing weights) exits with
        status 78 and one line naming the key; the systemd unit does not restart on it."""
        from agent.cli.state import config_error_line, config_origin, settings
        from agent.logging_setup import configure_logging
        from agent.service.service import AgentService
        from config import ConfigError

        try:
            cfg = settings()
            configure_logging(cfg.logging)
            service = AgentService(cfg, shutdown_grace_s=grace, config_origin=config_origin())
            report = service.run_until_signalled()
        except ConfigError as exc:
            logging.shutdown()
            print(f"error: {config_error_line(str(exc))}", file=sys.stderr, flush=True)  # noqa: T201 - one line
            sys.exit(EXIT_CONFIG)
        if report.released_job is not None:
            # The abandoned attempt is still inside the engine in a daemon thread; its job is back in the
            # ledger. Exit now instead of letting interpreter shutdown tear native threads down mid-call
            # (which aborts the process).
            logging.shutdown()
            os._exit(0)
