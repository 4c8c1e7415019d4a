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
from rich.markup import escape
from rich.table import Table

from agent.cli.commands import demo, evaluate, phantom, predict, serve, train
from agent.cli.state import STATE, config_error_line, config_origin, settings
from agent.errors import UserError
from agent.web.patient_data import SeriesDetails, in_spool, read_series_details
from agent.web.views import age, delivery_as_dict, job_as_dict
from config import ConfigError, Settings, example_toml, parse_toml, settings_from_mapping
from dicom_io.uids import uid_digest
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
destinations_app = typer.Typer(help="The configured result destinations.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(jobs_app, name="jobs")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(destinations_app, name="destinations")

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


def open_ledger(cfg: Settings, *, create: bool = False, migrate: bool = True) -> Ledger:
    """Open the ledger and bring its schema up to date (unless not ``migrate``: ``db downgrade``).

    A SQLite file that does not exist is an error (usually a missing ``--config``), not an empty ledger,
    unless ``create`` (``db upgrade``)."""
    from agent.service.preflight import sqlite_path

    path = sqlite_path(cfg.ledger.url)
    if not create and path is not None and not path.expanduser().exists():
        raise UserError(
            f"no ledger at {path.expanduser().absolute()} (ledger.url of {config_origin()}); "
            "pass --config FILE or set SPINE_AGENT_CONFIG, or create it with `spine-agent db upgrade`"
        )
    ledger = Ledger(cfg.ledger.url, max_attempts=cfg.ledger.max_attempts)
    if migrate:
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
    from agent.service.preflight import port_in_use, startup_problems

    problems = startup_problems(cfg)
    for problem in problems:
        err_console.print(
            f"error: {config_error_line(f'{origin}: {problem}')}", markup=False, highlight=False
        )
    if problems:
        raise typer.Exit(2)
    ports = [("dicom.port", cfg.dicom.bind_address, cfg.dicom.port)]
    if cfg.http.port:
        ports.append(("http.port", cfg.http.bind_address, cfg.http.port))
    for key, host, port in ports:
        if port_in_use(host, port):
            err_console.print(
                f"warning: {key} = {port}: {host}:{port} is in use now (by a running agent?); "
                "serve would fail unless it is freed",
                markup=False,
                highlight=False,
            )
    if not cfg.destinations:
        err_console.print(
            "warning: no [[destinations]]: results would be sent nowhere", markup=False, highlight=False
        )
    console.print(
        f"{origin}: valid (AE {cfg.dicom.ae_title} on port {cfg.dicom.port}, "
        f"{_count(len(cfg.destinations), 'destination')})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the ledger schema to the newest version."""
    cfg = settings()
    ledger = open_ledger(cfg, create=True)
    from storage.migrate import current_revision

    console.print(f"ledger at revision {current_revision(ledger.engine)}")
    ledger.close()


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="the revision to go back to (see `db upgrade`), or base")],
) -> None:
    """Undo the ledger migrations above REVISION, for rolling back to an older spine-agent (stop the agent
    and back up the ledger first)."""
    cfg = settings()
    from storage.migrate import current_revision, downgrade_to

    ledger = open_ledger(cfg, migrate=False)
    try:
        downgrade_to(ledger.engine, revision)
        console.print(f"ledger at revision {current_revision(ledger.engine) or 'base'}")
    except ValueError as exc:
        raise UserError(f"db downgrade: {exc}") from None
    finally:
        ledger.close()


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 job``, ``2 jobs``, ``3 deliveries``."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


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
    cfg = settings()
    ledger = open_ledger(cfg)
    jobs = ledger.list_jobs(_parse_states(state), _parse_since(since), limit)
    # http.show_patient_data: Accession Number and Series Description from the spooled headers.
    details: dict[int, SeriesDetails | None] = {}
    if cfg.http.show_patient_data:
        for job in jobs:
            folder = in_spool(Path(cfg.storage.spool_dir), job.series.spool_path)
            details[job.id] = None if folder is None else read_series_details(folder)
    if as_json:
        rows = [job_as_dict(j) for j in jobs]
        if cfg.http.show_patient_data:
            for row in rows:
                found = details[row["id"]]
                row["accession_number"] = found.accession_number if found else None
                row["series_description"] = found.series_description if found else None
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    now = datetime.now(UTC)
    # Fits 80 columns: the series by the digest the log uses (`jobs show ID` gives the full UIDs).
    caption = "series: digest of the Series UID, as in the log"
    if cfg.http.show_patient_data:
        caption = "series: accession number · series description (digest once the files are gone)"
    table = Table(title=_count(len(jobs), "job"), caption=caption)
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("series", no_wrap=not cfg.http.show_patient_data, overflow="fold")
    table.add_column("v", justify="right", no_wrap=True)
    table.add_column("inst", justify="right", no_wrap=True)
    table.add_column("age", justify="right", no_wrap=True)
    table.add_column("try", justify="right", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for job in jobs:
        table.add_row(
            str(job.id),
            f"[{_COLOURS.get(job.state.value, 'white')}]{job.state.value}[/]",
            escape(_series_label(details.get(job.id)) or uid_digest(job.series.series_instance_uid)),
            str(job.series.version),
            str(job.series.instance_count),
            age(job.created_at, now),
            str(job.attempts),
            escape(job.failure_reason or ""),
        )
    console.print(table)


def _series_label(details: SeriesDetails | None) -> str:
    return details.label if details is not None else ""


_COLOURS = {"SUCCEEDED": "green", "FAILED": "red", "RUNNING": "cyan", "QUEUED": "yellow", "SKIPPED": "blue"}


def _when(value: str | None) -> str:
    """An ISO time as ``2026-11-29 19:53:21`` (UTC), or ``-``."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _timings(timings: dict[str, float] | None) -> str:
    """``load 0.42 s, stage1 2.10 s, ...`` instead of a Python dict."""
    if not timings:
        return "-"
    return ", ".join(
        f"{k} {v:.2f} s" if isinstance(v, int | float) else f"{k} {v}" for k, v in timings.items()
    )


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
    # Label: value lines (full UIDs, never cut; a long value wraps at the terminal's edge).
    state = data["state"]
    colour = _COLOURS.get(state, "white")
    console.print(f"[bold]job {job_id}[/]  [{colour}]{state}[/]  attempts {data['attempts']}")
    series_uid = data["series_instance_uid"]
    rows = [
        ("series", f"{series_uid}  (log digest {uid_digest(series_uid)})"),
        ("study", data["study_instance_uid"]),
        ("version", f"{data['series_version']}, {_count(data['instances'], 'instance')}"),
        ("created", _when(data["created_at"])),
        ("started", _when(data["started_at"])),
        ("finished", _when(data["finished_at"])),
        ("model", data["model_version"] or "-"),
        ("timings", _timings(data["timings"])),
        ("output", data["output_path"] or "-"),
        ("lease", data["lease_owner"] or "-"),
    ]
    if data["failure_reason"]:
        rows.append(("reason", data["failure_reason"]))
    for label, value in rows:
        console.print(f"  {label:<9}{escape(str(value))}", highlight=False)
    if data.get("deliveries"):
        dtable = Table(title="deliveries")
        for column in ("id", "destination", "state", "try", "status"):
            dtable.add_column(column, no_wrap=True)
        dtable.add_column("last error", overflow="fold")
        for d in data["deliveries"]:
            dtable.add_row(
                str(d["id"]),
                d["destination"],
                d["state"],
                str(d["attempts"]),
                d["last_status"] or "",
                escape(d["last_error"] or ""),
            )
        console.print(dtable)
    etable = Table(title="events (UTC)")
    etable.add_column("at", no_wrap=True)
    etable.add_column("kind", no_wrap=True)
    etable.add_column("detail", overflow="fold")
    for e in data["events"]:
        etable.add_row(_when(e["at"]), e["kind"], escape(e["detail"] or ""))
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
    table = Table(title=_count(len(rows), "delivery", "deliveries"))
    for column in ("id", "job", "destination", "state", "try", "status"):
        table.add_column(column, no_wrap=True)
    table.add_column("last error", overflow="fold")
    for r in rows:
        table.add_row(
            *(str(r[key]) for key in ("id", "job_id", "destination", "state", "attempts")),
            str(r["last_status"] or ""),
            escape(str(r["last_error"] or "")),
        )
    console.print(table)


@deliveries_app.command("retry")
def deliveries_retry(
    delivery_id: Annotated[int, typer.Argument(help="Delivery id (FAILED or CANCELLED).")],
) -> None:
    """Send a FAILED or CANCELLED delivery again (instances already stored there are not re-sent)."""
    delivery = open_ledger(settings()).retry_delivery(delivery_id)
    console.print(f"delivery {delivery.id} to {delivery.destination} is {delivery.state.value}")


@deliveries_app.command("resend")
def deliveries_resend(
    delivery_id: Annotated[int, typer.Argument(help="Delivery id (DELIVERED, FAILED or CANCELLED).")],
) -> None:
    """Send every instance of a delivery again, even one already DELIVERED (e.g. the PACS lost it)."""
    delivery = open_ledger(settings()).resend_delivery(delivery_id)
    state = delivery.state.value
    console.print(f"delivery {delivery.id} to {delivery.destination} is {state} (every instance again)")


@jobs_app.command("send")
def jobs_send(
    job_id: Annotated[int, typer.Argument(help="Job id (SUCCEEDED).")],
    destination: Annotated[str, typer.Argument(help="Destination name (`spine-agent destinations list`).")],
) -> None:
    """Send a job's results to a destination (a new delivery, or the existing one re-sent in full)."""
    cfg = settings()
    names = [d.name for d in cfg.destinations]
    if destination not in names:
        raise UserError(
            f"no destination {destination!r} in {config_origin()} (configured: {', '.join(names) or 'none'})"
        )
    delivery = open_ledger(cfg).send_job_to(job_id, destination)
    console.print(f"job {job_id}: delivery {delivery.id} to {destination} is {delivery.state.value}")


# --- echo ---------------------------------------------------------------------------------------------


@app.command()
def echo(
    host: Annotated[
        str | None, typer.Argument(help="Peer host name or address (default: this agent, on 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Argument(min=1, max=65535, help="Peer DICOM port (default: dicom.port).")
    ] = None,
    called_ae: Annotated[
        str | None,
        typer.Option("--called-ae", "-aec", help="Peer AE title (default: ANY-SCP; dicom.ae_title for us)."),
    ] = None,
    calling_ae: Annotated[
        str | None,
        typer.Option(
            "--calling-ae",
            "-aet",
            help="Our AE title (default: dicom.ae_title; for this agent, the first allowed calling AE).",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the peer.")] = 10.0,
) -> None:
    """C-ECHO a DICOM peer, or without HOST PORT this agent itself (exit 0 when it answers Success)."""
    from agent.service.dicom_client import echo_peer

    cfg = settings()
    if host is None:
        # Ourselves, as a PACS the configuration allows would call us.
        dicom = cfg.dicom
        host = dicom.bind_address if dicom.bind_address not in ("0.0.0.0", "::", "") else "127.0.0.1"
        port = port or dicom.port
        called_ae = called_ae or dicom.ae_title
        calling_ae = calling_ae or (dicom.allowed_calling_aes[0] if dicom.allowed_calling_aes else None)
    if port is None:
        raise UserError("echo HOST PORT: give the port too (or neither, to echo this agent)")
    called = called_ae or "ANY-SCP"
    ae = calling_ae or cfg.dicom.ae_title
    status = echo_peer(host, port, called_ae=called, calling_ae=ae, timeout=timeout)
    console.print(f"C-ECHO {called}@{host}:{port} as {ae}: Success (0x{status:04X})", soft_wrap=True)


@destinations_app.command("list")
def destinations_list() -> None:
    """The configured destinations: name, AE title, host and port."""
    cfg = settings()
    if not cfg.destinations:
        console.print(f"no destinations in {config_origin()}", markup=False, highlight=False)
        return
    for d in cfg.destinations:
        tls = " (TLS)" if d.tls else ""
        console.print(f"{d.name}  {d.ae_title}@{d.host}:{d.port}{tls}", markup=False, highlight=False)


@destinations_app.command("echo")
def destinations_echo(
    name: Annotated[str | None, typer.Argument(help="Destination name (default: every destination).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each peer.")] = 10.0,
) -> None:
    """C-ECHO the destinations as the sender calls them (calling AE, TLS); exit 1 if one fails."""
    from agent.service.dicom_client import echo_destination

    cfg = settings()
    chosen = [d for d in cfg.destinations if name is None or d.name == name]
    if not chosen:
        known = ", ".join(d.name for d in cfg.destinations) or "none"
        raise UserError(f"no destination {name!r} in {config_origin()} (configured: {known})")
    failed = 0
    for d in chosen:
        outcome = echo_destination(d, calling_ae=cfg.delivery.calling_ae_title, timeout=timeout)
        failed += not outcome.ok
        console.print(outcome.message, markup=False, highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


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
        line = config_error_line(str(exc)) if isinstance(exc, ConfigError) else str(exc)
        err_console.print(f"error: {line}", markup=False, highlight=False)
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
