"""``spine-agent serve``."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        grace: Annotated[
            float,
            typer.Option(min=0, help="Seconds to let the current job finish on SIGTERM before releasing it."),
        ] = 20.0,
    ) -> None:
        """Run the agent: Storage SCP, quiet-timer scheduler, engine worker, sender, health/metrics."""
        from agent.cli.state import settings
        from agent.logging_setup import configure_logging
        from agent.service.service import AgentService

        cfg = settings()
        configure_logging(cfg.logging)
        service = AgentService(cfg, shutdown_grace_s=grace)
        report = service.run_until_signalled()
        if report.released_job is not None:
            # The abandoned attempt is still inside the engine in a daemon thread; its job is back in the
            # ledger. Exit now instead of letting interpreter shutdown tear native threads down mid-call
            # (which aborts the process).
            logging.shutdown()
            os._exit(0)
