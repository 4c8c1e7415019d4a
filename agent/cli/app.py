"""The ``spine-agent`` command line."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from agent.cli.commands import demo, evaluate, phantom, predict, serve, train
from agent.cli.state import STATE, settings
from agent.errors import UserError
from agent.web.views import age, delivery_as_dict, job_as_dict
from config import ConfigError, Settings, example_toml, parse_toml, settings_from_mapping
from storage import IllegalTransition, JobState, Ledger, LedgerError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="spine-agent",
    help="DICOM-native PACS node agent: finds and labels every vertebra in CT series.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Check or print the configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Ledger database maintenance.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect and steer jobs in the ledger.", no_args_is_help=True)
deliveries_app = typer.Typer(help="Inspect and re-send result deliveries.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(jobs_app, name="jobs")
app.add_typer(deliveries_app, name="deliveries")

@app.callback()
def _root(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML configuration file (default: $SPINE_AGENT_CONFIG, else /etc/spine-agent/config.toml "
            "if present, else built-in defaults).",
        ),
    ] = None,
) -> None:
    STATE.config_path = config


def open_ledger(cfg: Settings) -> Ledger:
    """Open the ledger and bring its schema up to date."""
    ledger = Ledger(cfg.ledger.url, max_attempts=cfg.ledger.max_attempts)
    ledger.upgrade()
    return ledger


# --- version / config / db ---------------------------------------------------------------------------


@app.command()
def version() -> None:
    """Print the spine-agent version."""
    try:
        console.print(f"spine-agent {package_version('spine-agent')}")
    except PackageNotFoundError:
        console.print("spine-agent (not installed as a package)")


@config_app.command("example")
def config_example() -> None:
    """Print a commented TOML configuration with every key and its default."""
    sys.stdout.write(example_toml())


@config_app.command("check")
def config_check(
    file: Annotated[str, typer.Argument(help="TOML file to validate, or - for standard input.")],
) -> None:
    """Validate a configuration file (environment overrides included); exit 0 when valid."""
    if file == "-":
        text, origin = sys.stdin.read(), "<stdin>"
    else:
        path = Path(file)
        try:
            text, origin = path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    cfg = settings_from_mapping(parse_toml(text, origin), origin=origin)
    console.print(
        f"{origin}: valid (AE {cfg.dicom.ae_title} on port {cfg.dicom.port}, "
        f"{len(cfg.destinations)} destination(s))"
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the ledger schema to the newest version."""
    cfg = settings()
    ledger = open_ledger(cfg)
    from storage.migrate import current_revision

    console.print(f"ledger at revision {current_revision(ledger.engine)}")
    ledger.close()


# --- jobs ---------------------------------------------------------------------------------------------


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"--since {value!r}: expected a duration like 30m, 12h, 7d or an ISO date") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse_states(values: list[str] | None) -> list[JobState] | None:
    if not values:
        return None
    try:
        return [JobState(v.upper()) for v in values]
    except ValueError:
        allowed = ", ".join(s.value for s in JobState)
        raise UserError(f"--state {values}: expected one of {allowed}") from None


@jobs_app.command("list")
def jobs_list(
    state: Annotated[list[str] | None, typer.Option("--state", "-s", help="Only these states.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only jobs created since: a duration (30m, 12h, 7d) or ISO date.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List jobs, newest first."""
    ledger = open_ledger(settings())
    jobs = ledger.list_jobs(_parse_states(state), _parse_since(since), limit)
    if as_json:
        sys.stdout.write(json.dumps([job_as_dict(j) for j in jobs], indent=2) + "\n")
        return
    now = datetime.now(UTC)
    table = Table(title=f"{len(jobs)} job(s)")
    for column in ("id", "state", "series", "ver", "inst", "age", "attempts", "reason"):
        table.add_column(column)
    colours = {"SUCCEEDED": "green", "FAILED": "red", "RUNNING": "cyan", "QUEUED": "yellow"}
    for job in jobs:
        uid = job.series.series_instance_uid
        table.add_row(
            str(job.id),
            f"[{colours.get(job.state.value, 'white')}]{job.state.value}[/]",
            uid if len(uid) <= 28 else "…" + uid[-27:],
            str(job.series.version),
            str(job.series.instance_count),
            age(job.created_at, now),
            str(job.attempts),
            job.failure_reason or "",
        )
    console.print(table)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one job with its deliveries and event history."""
    ledger = open_ledger(settings())
    job = ledger.get_job(job_id)
    data = job_as_dict(job)
    data["events"] = [
        {"at": e.at.isoformat(), "kind": e.kind, "detail": e.detail} for e in ledger.events(job_id=job_id)
    ]
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    table = Table(show_header=False, title=f"job {job_id}")
    for key, value in data.items():
        if key in ("events", "deliveries"):
            continue
        table.add_row(key, "" if value is None else str(value))
    console.print(table)
    if data.get("deliveries"):
        dtable = Table(title="deliveries")
        for column in ("id", "destination", "state", "attempts", "last status", "last error"):
            dtable.add_column(column)
        for d in data["deliveries"]:
            dtable.add_row(
                str(d["id"]),
                d["destination"],
                d["state"],
                str(d["attempts"]),
                d["last_status"] or "",
                d["last_error"] or "",
            )
        console.print(dtable)
    etable = Table(title="events")
    for column in ("at", "kind", "detail"):
        etable.add_column(column)
    for e in data["events"]:
        etable.add_row(e["at"], e["kind"], e["detail"] or "")
    console.print(etable)


@jobs_app.command("retry")
def jobs_retry(job_id: Annotated[int, typer.Argument(help="Job id (FAILED or CANCELLED).")]) -> None:
    """Queue a FAILED or CANCELLED job again, with a fresh attempt budget."""
    job = open_ledger(settings()).retry_job(job_id)
    console.print(f"job {job.id} is {job.state.value}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[int, typer.Argument(help="Job id (QUEUED or RUNNING).")]) -> None:
    """Cancel a QUEUED or RUNNING job."""
    job = open_ledger(settings()).cancel_job(job_id)
    console.print(f"job {job.id} is {job.state.value}")


@deliveries_app.command("list")
def deliveries_list(
    job_id: Annotated[int | None, typer.Option("--job", help="Only this job's deliveries.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List deliveries (oldest first) with their state, attempts and last status."""
    rows = [delivery_as_dict(d) for d in open_ledger(settings()).list_deliveries(job_id)]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title=f"{len(rows)} deliver(ies)")
    for column in ("id", "job", "destination", "state", "attempts", "last status", "last error"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            *(str(r[key]) for key in ("id", "job_id", "destination", "state", "attempts")),
            str(r["last_status"] or ""),
            str(r["last_error"] or ""),
        )
    console.print(table)


@deliveries_app.command("retry")
def deliveries_retry(
    delivery_id: Annotated[int, typer.Argument(help="Delivery id (FAILED or CANCELLED).")],
) -> None:
    """Send a FAILED or CANCELLED delivery again (instances already stored there are not re-sent)."""
    delivery = open_ledger(settings()).retry_delivery(delivery_id)
    console.print(f"delivery {delivery.id} to {delivery.destination} is {delivery.state.value}")


# --- echo ---------------------------------------------------------------------------------------------


@app.command()
def echo(
    host: Annotated[str, typer.Argument(help="Peer host name or address.")],
    port: Annotated[int, typer.Argument(min=1, max=65535, help="Peer DICOM port.")],
    called_ae: Annotated[str, typer.Option("--called-ae", "-aec", help="Peer AE title.")] = "ANY-SCP",
    calling_ae: Annotated[
        str | None, typer.Option("--calling-ae", "-aet", help="Our AE title (default: dicom.ae_title).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the peer.")] = 10.0,
) -> None:
    """C-ECHO a DICOM peer (exit 0 when it answers Success)."""
    from agent.cli.dicom_echo import echo_peer

    ae = calling_ae or settings().dicom.ae_title
    status = echo_peer(host, port, called_ae=called_ae, calling_ae=ae, timeout=timeout)
    console.print(f"C-ECHO {called_ae}@{host}:{port}: Success (0x{status:04X})")


# The commands that live in their own modules (each has ``register(app)``; none imports this module).
for _commands in (serve, demo, train, evaluate, predict, phantom):
    _commands.register(app)

_EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    ConfigError,
    LedgerError,
    IllegalTransition,
    FileNotFoundError,
    PermissionError,
)


def main() -> None:
    """Console entry point: user-caused errors become one line on stderr and a non-zero exit."""
    try:
        app()
    except _EXPECTED_ERRORS as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("SPINE_AGENT_DEBUG"):
            raise
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            err_console.print(
                f"error: ledger database: {exc.__class__.__name__}: {str(exc).splitlines()[0]}",
                markup=False,
                highlight=False,
            )
            sys.exit(2)
        err_console.print(
            f"error: {exc.__class__.__name__}: {exc} (set SPINE_AGENT_DEBUG=1 for a traceback)",
            markup=False,
            highlight=False,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
