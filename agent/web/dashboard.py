"""The admin dashboard over the ledger: HTML pages and a JSON API on the ``[http]`` port.

Pages (server-rendered, every ledger value HTML-escaped; a small script refreshes them in place):

* ``GET /dashboard``: counts by state (each one a filter, ``?state=FAILED``) and the newest jobs.
* ``GET /dashboard/jobs/<id>``: one job: timings, deliveries with their last status and error, events.
* ``GET /dashboard/deliveries``: the newest deliveries (``?state=``, ``?job=``).

JSON API: ``GET /api/jobs`` (``?state=``, ``?limit=``), ``GET /api/jobs/<id>``, ``GET /api/deliveries``
(``?job=``, ``?state=``, ``?limit=``). Actions, POST only, with ``Authorization: Bearer <admin token>``:
``/api/jobs/<id>/retry``, ``/api/jobs/<id>/cancel``, ``/api/deliveries/<id>/retry``.

Read-only unless an admin token is configured (``http.admin_token_file`` or
``SPINE_AGENT_HTTP__ADMIN_TOKEN``): then actions answer 403. A missing or wrong token is 401, an
illegal state move 409 with the ledger's message, an unknown id 404. The token travels in a header,
never in a cookie, so a cross-site page cannot make the browser send it (no CSRF); it is compared in
constant time and never logged. The ledger holds no patient data, and nothing here adds any.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlencode

from agent.web.views import age, delivery_as_dict, iso, job_as_dict
from config import ConfigError, HttpSettings
from storage import (
    Delivery,
    DeliveryState,
    IllegalTransition,
    Job,
    JobState,
    Ledger,
    NotFound,
    utcnow,
)

log = logging.getLogger(__name__)

#: Shortest admin token accepted (``openssl rand -hex 32`` gives 64 characters).
MIN_TOKEN_LENGTH = 16
#: Seconds between the page's in-place refreshes (the admin can pause them).
REFRESH_S = 10
#: Rows shown when ``?limit=`` is not given, and the most a request may ask for.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Events shown on a job's page (newest last).
EVENT_LIMIT = 200

STATIC = "/dashboard/static"

#: Sent with every dashboard answer. Scripts and styles only from our own files (no inline code), so even
#: a value that escaped escaping could not run; no framing, no forms, no referrer.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

_JOB_PAGE = re.compile(r"/dashboard/jobs/(\d{1,18})")
_API_JOB = re.compile(r"/api/jobs/(\d{1,18})")
_JOB_ACTION = re.compile(r"/api/jobs/(\d{1,18})/(retry|cancel)")
_DELIVERY_ACTION = re.compile(r"/api/deliveries/(\d{1,18})/retry")

#: Job states an admin may retry (-> QUEUED) or cancel, as in ``spine-agent jobs retry|cancel``.
RETRYABLE_JOBS = frozenset({JobState.FAILED, JobState.CANCELLED})
CANCELLABLE_JOBS = frozenset({JobState.QUEUED, JobState.RUNNING})
RETRYABLE_DELIVERIES = frozenset({DeliveryState.FAILED, DeliveryState.CANCELLED})


def load_admin_token(http: HttpSettings) -> str | None:
    """The admin token from ``http.admin_token`` (environment) or ``http.admin_token_file``; None if unset.

    Raises :class:`ConfigError` when the file cannot be read or the token is too short or has spaces.
    """
    if http.admin_token is not None and http.admin_token_file is not None:
        raise ConfigError("http.admin_token and http.admin_token_file are both set; keep one")
    if http.admin_token is not None:
        token, origin = http.admin_token.get_secret_value().strip(), "http.admin_token"
    elif http.admin_token_file is not None:
        path = http.admin_token_file
        origin = f"http.admin_token_file {path}"
        try:
            token = path.read_text(encoding="utf-8").strip()
            mode = path.stat().st_mode
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read: {exc.strerror or exc}") from None
        if mode & 0o007:  # group access is the usual root:spine-agent 0640; everyone is too many
            log.warning(
                "%s is accessible to every user (mode %03o); chmod 640 or 600 it", origin, mode & 0o777
            )
    else:
        return None
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ConfigError(
            f"{origin}: the admin token must be at least {MIN_TOKEN_LENGTH} characters without spaces "
            "(e.g. `openssl rand -hex 32`)"
        )
    return token


@dataclass(frozen=True)
class DashboardRequest:
    """What the dashboard needs of an HTTP request (the body of a POST is never read)."""

    method: str
    path: str
    query: str = ""
    authorization: str | None = None
    client: str = "-"


@dataclass(frozen=True)
class DashboardResponse:
    status: HTTPStatus
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


class _BadRequest(ValueError):
    """A query parameter that cannot be understood; answered 400 with the message."""


def _json(status: HTTPStatus, data: Any) -> DashboardResponse:
    body = json.dumps(data, indent=1).encode() + b"\n"
    return DashboardResponse(status, body, "application/json", dict(SECURITY_HEADERS))


def _error(status: HTTPStatus, message: str, **headers: str) -> DashboardResponse:
    response = _json(status, {"error": message})
    response.headers.update(headers)
    return response


# --- query parameters -----------------------------------------------------------------------------------


def _param(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _states(query: dict[str, list[str]], kind: type[JobState] | type[DeliveryState]) -> list[Any]:
    """``?state=FAILED&state=queued`` or ``?state=FAILED,QUEUED``; empty = all states."""
    names = [n.strip().upper() for v in query.get("state", []) for n in v.split(",") if n.strip()]
    try:
        return [kind(n) for n in names]
    except ValueError:
        allowed = ", ".join(s.value for s in kind)
        raise _BadRequest(f"state: expected one or more of {allowed}") from None


def _positive_int(query: dict[str, list[str]], name: str, default: int | None, most: int) -> int | None:
    value = _param(query, name)
    if value is None or value == "":
        return default
    if not value.isdigit() or not 1 <= int(value) <= most:
        raise _BadRequest(f"{name} = {value!r}: expected a whole number from 1 to {most}")
    return int(value)


# --- HTML -------------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    """HTML-escaped text (quotes included, so it is safe in attributes too); None -> empty."""
    return html.escape("" if value is None else str(value), quote=True)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _short_uid(uid: str) -> str:
    return uid if len(uid) <= 28 else "…" + uid[-27:]


def _badge(state: str) -> str:
    return f'<span class="state state-{_e(state.lower())}">{_e(state)}</span>'


def _table(headers: Sequence[str], rows: Sequence[str], empty: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(rows) or f'<tr><td colspan="{len(headers)}" class="empty">{_e(empty)}</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _seconds(value: object) -> str:
    return f"{value:.2f} s" if isinstance(value, int | float) else _e(value)


class Dashboard:
    """Serves the dashboard's pages, API and actions over one :class:`~storage.Ledger`.

    ``admin_token`` None makes it read-only. :meth:`handle` answers a request, or None when the path
    is not the dashboard's (the HTTP server then answers 404).
    """

    def __init__(self, ledger: Ledger, *, admin_token: str | None = None, refresh_s: int = REFRESH_S) -> None:
        if admin_token is not None and len(admin_token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the admin token must be at least {MIN_TOKEN_LENGTH} characters")
        self.ledger = ledger
        self._token = admin_token.encode() if admin_token is not None else None
        self.refresh_s = refresh_s

    @property
    def actions_enabled(self) -> bool:
        return self._token is not None

    def __repr__(self) -> str:  # never show the token
        return f"Dashboard(actions_enabled={self.actions_enabled})"

    # --- routing ------------------------------------------------------------------------------------

    def handle(self, request: DashboardRequest) -> DashboardResponse | None:
        path = request.path
        ours = path == "/" or path.startswith(("/dashboard", "/api/"))
        if not ours:
            return None
        query = parse_qs(request.query, keep_blank_values=True)
        try:
            if request.method == "POST":
                return self._post(request)
            if request.method == "GET":
                return self._get(path, query)
            return _error(
                HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not supported", Allow="GET, POST"
            )
        except _BadRequest as exc:
            if path.startswith("/api/"):
                return _error(HTTPStatus.BAD_REQUEST, str(exc))
            return self._html(
                HTTPStatus.BAD_REQUEST, "Bad request", "jobs", f'<p class="error">{_e(exc)}</p>'
            )

    def _get(self, path: str, query: dict[str, list[str]]) -> DashboardResponse:
        if path == "/":
            return DashboardResponse(HTTPStatus.FOUND, b"", "text/plain", {"Location": "/dashboard"})
        if path in ("/dashboard", "/dashboard/"):
            return self._jobs_page(query)
        if path == "/dashboard/deliveries":
            return self._deliveries_page(query)
        if path == f"{STATIC}/dashboard.js":
            return DashboardResponse(
                HTTPStatus.OK, SCRIPT.encode(), "text/javascript; charset=utf-8", dict(SECURITY_HEADERS)
            )
        if path == f"{STATIC}/dashboard.css":
            return DashboardResponse(
                HTTPStatus.OK, STYLE.encode(), "text/css; charset=utf-8", dict(SECURITY_HEADERS)
            )
        if match := _JOB_PAGE.fullmatch(path):
            return self._job_page(int(match[1]))
        if path == "/api/jobs":
            return self._api_jobs(query)
        if match := _API_JOB.fullmatch(path):
            return self._api_job(int(match[1]))
        if path == "/api/deliveries":
            return self._api_deliveries(query)
        if path.startswith("/api/"):
            return _error(HTTPStatus.NOT_FOUND, f"no such resource: {path}")
        return self._html(
            HTTPStatus.NOT_FOUND, "Not found", "", f'<p class="error">No page at {_e(path)}.</p>'
        )

    # --- actions ------------------------------------------------------------------------------------

    def _post(self, request: DashboardRequest) -> DashboardResponse:
        path = request.path
        run: Callable[[int], str]
        if match := _JOB_ACTION.fullmatch(path):
            target, run = int(match[1]), self._retry_job if match[2] == "retry" else self._cancel_job
        elif match := _DELIVERY_ACTION.fullmatch(path):
            target, run = int(match[1]), self._retry_delivery
        else:
            return _error(HTTPStatus.NOT_FOUND, f"no action at {path}")
        if self._token is None:
            return _error(
                HTTPStatus.FORBIDDEN,
                "the dashboard is read-only: no admin token is configured "
                "(set http.admin_token_file or SPINE_AGENT_HTTP__ADMIN_TOKEN)",
            )
        if not self._authorized(request.authorization):
            log.warning("dashboard: %s refused for %s: missing or wrong admin token", path, request.client)
            return _error(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong admin token (send Authorization: Bearer <token>)",
                **{"WWW-Authenticate": 'Bearer realm="spine-agent"'},
            )
        try:
            message = run(target)
        except NotFound as exc:
            return _error(HTTPStatus.NOT_FOUND, str(exc))
        except IllegalTransition as exc:
            return _error(HTTPStatus.CONFLICT, str(exc))
        log.info("dashboard: %s by an admin from %s", message, request.client)
        return _json(HTTPStatus.OK, {"ok": True, "message": message})

    def _authorized(self, header: str | None) -> bool:
        if self._token is None or header is None:
            return False
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self._token)

    def _retry_job(self, job_id: int) -> str:
        return f"job {job_id} is {self.ledger.retry_job(job_id).state.value}"

    def _cancel_job(self, job_id: int) -> str:
        return f"job {job_id} is {self.ledger.cancel_job(job_id).state.value}"

    def _retry_delivery(self, delivery_id: int) -> str:
        delivery = self.ledger.retry_delivery(delivery_id)
        return f"delivery {delivery.id} to {delivery.destination} is {delivery.state.value}"

    # --- JSON ---------------------------------------------------------------------------------------

    def _api_jobs(self, query: dict[str, list[str]]) -> DashboardResponse:
        states = _states(query, JobState)
        limit = _positive_int(query, "limit", DEFAULT_LIMIT, MAX_LIMIT) or DEFAULT_LIMIT
        jobs = self.ledger.list_jobs(states or None, None, limit)
        counts = {state.value: n for state, n in self.ledger.job_counts().items()}
        return _json(HTTPStatus.OK, {"counts": counts, "jobs": [job_as_dict(j) for j in jobs]})

    def _job_detail(self, job_id: int) -> dict[str, Any]:
        job = self.ledger.get_job(job_id)
        data = job_as_dict(job)
        data["purged_at"] = iso(job.purged_at)
        data["events"] = [
            {"at": e.at.isoformat(), "kind": e.kind, "detail": e.detail}
            for e in self.ledger.events(job_id=job_id, limit=EVENT_LIMIT)
        ]
        return data

    def _api_job(self, job_id: int) -> DashboardResponse:
        try:
            return _json(HTTPStatus.OK, self._job_detail(job_id))
        except NotFound as exc:
            return _error(HTTPStatus.NOT_FOUND, str(exc))

    def _deliveries(self, query: dict[str, list[str]]) -> list[Delivery]:
        """Newest first, filtered by ``?job=`` and ``?state=``, at most ``?limit=``."""
        job_id = _positive_int(query, "job", None, 10**18)
        states = set(_states(query, DeliveryState))
        limit = _positive_int(query, "limit", DEFAULT_LIMIT, MAX_LIMIT) or DEFAULT_LIMIT
        rows = [d for d in reversed(self.ledger.list_deliveries(job_id)) if not states or d.state in states]
        return rows[:limit]

    def _api_deliveries(self, query: dict[str, list[str]]) -> DashboardResponse:
        counts = {state.value: n for state, n in self.ledger.delivery_counts().items()}
        deliveries = [delivery_as_dict(d) for d in self._deliveries(query)]
        return _json(HTTPStatus.OK, {"counts": counts, "deliveries": deliveries})

    # --- pages --------------------------------------------------------------------------------------

    def _html(self, status: HTTPStatus, title: str, active: str, content: str) -> DashboardResponse:
        mode = (
            '<span class="mode mode-admin">actions need the admin token</span>'
            '<button type="button" id="forget-token" class="quiet">forget token</button>'
            if self.actions_enabled
            else '<span class="mode mode-readonly" title="configure http.admin_token_file to enable actions">'
            "read-only</span>"
        )
        nav = "".join(
            f'<a href="{href}"{" class=active" if name == active else ""}>{label}</a>'
            for name, href, label in (
                ("jobs", "/dashboard", "Jobs"),
                ("deliveries", "/dashboard/deliveries", "Deliveries"),
            )
        )
        page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} · spine-agent</title>
<link rel="stylesheet" href="{STATIC}/dashboard.css">
<script src="{STATIC}/dashboard.js" defer></script>
</head>
<body data-actions="{"enabled" if self.actions_enabled else "disabled"}" data-refresh-s="{self.refresh_s}">
<header>
<a class="brand" href="/dashboard">spine-agent</a>
<nav>{nav}</nav>
<div class="tools">{mode}
<label><input type="checkbox" id="auto-refresh" checked> auto-refresh</label>
<span id="updated" class="muted"></span>
</div>
</header>
<div id="flash" class="flash" role="status" hidden></div>
<main id="content">
{content}
</main>
<footer>Job ledger of this agent · no patient data ·
JSON: <a href="/api/jobs">/api/jobs</a> <a href="/api/deliveries">/api/deliveries</a> ·
<a href="/metrics">/metrics</a> · <a href="/readyz">/readyz</a></footer>
</body>
</html>
"""
        return DashboardResponse(status, page.encode(), "text/html; charset=utf-8", dict(SECURITY_HEADERS))

    def _button(self, url: str, label: str, confirm: str | None = None) -> str:
        if not self.actions_enabled:
            return ""
        extra = f' data-confirm="{_e(confirm)}"' if confirm else ""
        return f'<button type="button" class="action" data-action="{_e(url)}"{extra}>{_e(label)}</button>'

    def _job_buttons(self, job: Job) -> str:
        buttons = []
        if job.state in RETRYABLE_JOBS and job.purged_at is None:
            buttons.append(self._button(f"/api/jobs/{job.id}/retry", "Retry"))
        if job.state in CANCELLABLE_JOBS:
            buttons.append(self._button(f"/api/jobs/{job.id}/cancel", "Cancel", f"Cancel job {job.id}?"))
        return "".join(buttons)

    def _delivery_row(self, d: Delivery, *, with_job: bool) -> str:
        status = "" if d.last_status is None else f"0x{d.last_status:04X}"
        retry = (
            self._button(f"/api/deliveries/{d.id}/retry", "Retry") if d.state in RETRYABLE_DELIVERIES else ""
        )
        job_cell = f'<td><a href="/dashboard/jobs/{d.job_id}">{d.job_id}</a></td>' if with_job else ""
        return (
            f'<tr data-delivery-id="{d.id}" data-state="{_e(d.state.value)}">'
            f"<td>{d.id}</td>{job_cell}<td>{_e(d.destination)}</td>"
            f"<td>{_badge(d.state.value)}</td><td>{d.attempts}</td><td>{len(d.sent_instances)}</td>"
            f'<td>{_e(status)}</td><td class="reason">{_e(d.last_error)}</td>'
            f"<td>{_when(d.next_attempt_at if d.state == DeliveryState.PENDING else d.finished_at)}</td>"
            f'<td class="actions">{retry}</td></tr>'
        )

    def _filters(self, base: str, counts: dict[Any, int], selected: set[Any]) -> str:
        links = [
            f'<a href="{base}"{" class=active" if not selected else ""}>All <b>{sum(counts.values())}</b></a>'
        ]
        for state, n in counts.items():
            href = f"{base}?{urlencode({'state': state.value})}"
            css = f"state-{state.value.lower()}" + (" active" if state in selected else "")
            links.append(f'<a href="{_e(href)}" class="{css}">{_e(state.value)} <b>{n}</b></a>')
        return f'<nav class="filters" aria-label="filter by state">{"".join(links)}</nav>'

    def _jobs_page(self, query: dict[str, list[str]]) -> DashboardResponse:
        states = _states(query, JobState)
        limit = _positive_int(query, "limit", DEFAULT_LIMIT, MAX_LIMIT) or DEFAULT_LIMIT
        jobs = self.ledger.list_jobs(states or None, None, limit)
        counts = self.ledger.job_counts()
        now = utcnow()
        rows = []
        for job in jobs:
            uid = job.series.series_instance_uid
            reason = job.failure_reason or ""
            rows.append(
                f'<tr data-job-id="{job.id}" data-state="{_e(job.state.value)}">'
                f'<td><a href="/dashboard/jobs/{job.id}">{job.id}</a></td><td>{_badge(job.state.value)}</td>'
                f'<td class="uid" title="{_e(uid)}">{_e(_short_uid(uid))}</td><td>{job.series.version}</td>'
                f"<td>{job.series.instance_count}</td>"
                f'<td title="{_e(_when(job.created_at))}">{_e(age(job.created_at, now))}</td>'
                f"<td>{job.attempts}</td>"
                f'<td class="reason" title="{_e(reason)}">{_e(_clip(reason, 160))}</td>'
                f'<td class="actions">{self._job_buttons(job)}</td></tr>'
            )
        shown = ", ".join(s.value for s in states) or "all states"
        content = (
            f"<h1>Jobs</h1>{self._filters('/dashboard', counts, set(states))}"
            f'<p class="muted">Newest {len(jobs)} job(s), {_e(shown)}.</p>'
            + _table(
                ("id", "state", "series", "ver", "instances", "age", "attempts", "failure reason", ""),
                rows,
                "No jobs.",
            )
        )
        return self._html(HTTPStatus.OK, "Jobs", "jobs", content)

    def _job_page(self, job_id: int) -> DashboardResponse:
        try:
            job = self.ledger.get_job(job_id)
        except NotFound as exc:
            return self._html(HTTPStatus.NOT_FOUND, "Not found", "jobs", f'<p class="error">{_e(exc)}.</p>')
        events = self.ledger.events(job_id=job_id, limit=EVENT_LIMIT)
        now = utcnow()
        series = job.series
        duration = ""
        if job.started_at and job.finished_at and job.finished_at >= job.started_at:
            duration = f"{(job.finished_at - job.started_at).total_seconds():.1f} s"
        facts = [
            ("state", _badge(job.state.value)),
            ("series instance UID", _e(series.series_instance_uid)),
            ("study instance UID", _e(series.study_instance_uid)),
            ("series version", _e(series.version)),
            ("instances", f"{series.instance_count} ({series.byte_count / 1e6:.1f} MB)"),
            ("received", f"{_when(series.first_received_at)} … {_when(series.last_received_at)}"),
            ("attempts", _e(job.attempts)),
            ("model version", _e(job.model_version)),
            ("created", f"{_when(job.created_at)} ({_e(age(job.created_at, now))} ago)"),
            ("started", _when(job.started_at)),
            ("finished", _when(job.finished_at)),
            ("run time", duration),
            (
                "lease",
                _e(f"{job.lease_owner} until {_when(job.lease_expires_at)}" if job.lease_owner else ""),
            ),
            ("outputs", _e(job.output_path)),
            ("files purged", _when(job.purged_at)),
            ("failure reason", f'<span class="reason">{_e(job.failure_reason)}</span>'),
        ]
        facts_html = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in facts)
        timing_rows = [
            f"<tr><td>{_e(stage)}</td><td>{_seconds(s)}</td></tr>" for stage, s in job.timings.items()
        ]
        delivery_rows = [self._delivery_row(d, with_job=False) for d in job.deliveries]
        event_rows = [
            f'<tr><td>{_when(e.at)}</td><td>{_e(e.kind)}</td><td class="reason">{_e(e.detail)}</td></tr>'
            for e in events
        ]
        content = (
            f"<h1>Job {job.id} {_badge(job.state.value)} "
            f'<span class="actions">{self._job_buttons(job)}</span></h1>'
            f'<dl class="facts">{facts_html}</dl>'
            f"<h2>Timings</h2>{_table(('stage', 'seconds'), timing_rows, 'No timings recorded.')}"
            "<h2>Deliveries</h2>"
            + _table(
                (
                    "id",
                    "destination",
                    "state",
                    "attempts",
                    "sent",
                    "last status",
                    "last error",
                    "next / done",
                    "",
                ),
                delivery_rows,
                "No deliveries.",
            )
            + f"<h2>Events</h2>{_table(('at (UTC)', 'kind', 'detail'), event_rows, 'No events.')}"
        )
        return self._html(HTTPStatus.OK, f"Job {job.id}", "jobs", content)

    def _deliveries_page(self, query: dict[str, list[str]]) -> DashboardResponse:
        deliveries = self._deliveries(query)
        states = set(_states(query, DeliveryState))
        rows = [self._delivery_row(d, with_job=True) for d in deliveries]
        content = (
            "<h1>Deliveries</h1>"
            + self._filters("/dashboard/deliveries", self.ledger.delivery_counts(), states)
            + f'<p class="muted">Newest {len(deliveries)} deliver(ies).</p>'
            + _table(
                (
                    "id",
                    "job",
                    "destination",
                    "state",
                    "attempts",
                    "sent",
                    "last status",
                    "last error",
                    "next / done",
                    "",
                ),
                rows,
                "No deliveries.",
            )
        )
        return self._html(HTTPStatus.OK, "Deliveries", "deliveries", content)


# --- static files (served from these strings: no build step, no package data) ------------------------------

SCRIPT = r"""// spine-agent dashboard: in-place refresh and authenticated actions. No dependencies.
"use strict";
(function () {
  const TOKEN_KEY = "spine-agent.admin-token"; // sessionStorage only: gone when the tab closes
  const PAUSE_KEY = "spine-agent.refresh-paused";
  const refreshS = Number(document.body.dataset.refreshS) || 0;
  let busy = false;

  function flash(text, kind) {
    const box = document.getElementById("flash");
    box.textContent = text;
    box.className = "flash " + kind;
    box.hidden = false;
  }

  function stamp(text) {
    const el = document.getElementById("updated");
    if (el) el.textContent = text;
  }

  // Fetch this page again and swap its <main>; the server escaped every value, and DOMParser never
  // runs scripts.
  async function reload() {
    const response = await fetch(window.location.href, {cache: "no-store", headers: {Accept: "text/html"}});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.getElementById("content");
    const current = document.getElementById("content");
    if (fresh && current) current.replaceWith(document.adoptNode(fresh));
    stamp("updated " + new Date().toLocaleTimeString());
  }

  async function tick() {
    if (busy || document.hidden || sessionStorage.getItem(PAUSE_KEY) === "1") return;
    try {
      await reload();
    } catch (err) {
      stamp("refresh failed: " + err.message);
    }
  }

  async function act(button) {
    const question = button.dataset.confirm;
    if (question && !window.confirm(question)) return;
    let token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      token = (window.prompt("Admin token (kept in this browser tab only):") || "").trim();
      if (!token) return;
    }
    busy = true;
    button.disabled = true;
    try {
      const response = await fetch(button.dataset.action, {
        method: "POST",
        cache: "no-store",
        headers: {Authorization: "Bearer " + token},
      });
      let data = {};
      try {
        data = await response.json();
      } catch (err) {
        data = {};
      }
      if (response.ok) {
        sessionStorage.setItem(TOKEN_KEY, token);
        flash(data.message || "done", "ok");
      } else {
        if (response.status === 401) sessionStorage.removeItem(TOKEN_KEY);
        flash(data.error || "HTTP " + response.status, "error");
      }
    } catch (err) {
      flash("request failed: " + err.message, "error");
    } finally {
      busy = false;
      button.disabled = false;
    }
    try {
      await reload();
    } catch (err) {
      stamp("refresh failed: " + err.message);
    }
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-action]");
    if (button) {
      event.preventDefault();
      act(button);
    }
  });
  const auto = document.getElementById("auto-refresh");
  if (auto) {
    auto.checked = sessionStorage.getItem(PAUSE_KEY) !== "1";
    auto.addEventListener("change", function () {
      sessionStorage.setItem(PAUSE_KEY, auto.checked ? "0" : "1");
    });
  }
  const forget = document.getElementById("forget-token");
  if (forget) {
    forget.addEventListener("click", function () {
      sessionStorage.removeItem(TOKEN_KEY);
      flash("admin token forgotten", "ok");
    });
  }
  if (refreshS > 0) window.setInterval(tick, refreshS * 1000);
})();
"""

STYLE = """/* spine-agent dashboard */
:root { --fg: #1d2430; --muted: #667085; --line: #e3e7ee; --bg: #f7f8fa; --accent: #2456a6; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
  background: var(--bg); }
header { display: flex; gap: 1.5rem; align-items: center; padding: .6rem 1.2rem; background: #1d2430;
  color: #fff; }
header a { color: #cfd8e6; text-decoration: none; }
header a.active, header a:hover { color: #fff; }
.brand { font-weight: 700; color: #fff !important; font-size: 1.05rem; }
header nav { display: flex; gap: 1rem; }
.tools { margin-left: auto; display: flex; gap: .9rem; align-items: center; font-size: .85rem; }
.mode { padding: .1rem .5rem; border-radius: 3px; }
.mode-readonly { background: #4b5563; }
.mode-admin { background: #7c4a03; }
main { padding: .5rem 1.2rem 2rem; }
h1 { font-size: 1.35rem; display: flex; gap: .6rem; align-items: center; }
h2 { font-size: 1.05rem; margin-top: 1.6rem; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: .35rem .55rem; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: #eef1f6; font-weight: 600; font-size: .8rem; text-transform: uppercase; color: #475467; }
td.uid { font-family: ui-monospace, monospace; font-size: .82rem; }
td.reason, .reason { white-space: pre-wrap; word-break: break-word; max-width: 36rem; }
td.empty { color: var(--muted); text-align: center; }
a { color: var(--accent); }
.muted { color: var(--muted); }
.error { color: #b42318; }
.state { display: inline-block; padding: .05rem .45rem; border-radius: 3px; font-size: .75rem;
  font-weight: 600; letter-spacing: .02em; background: #e4e7ec; color: #344054; }
.state-succeeded, .state-delivered { background: #d1fadf; color: #05603a; }
.state-failed { background: #fee4e2; color: #b42318; }
.state-running { background: #d1e9ff; color: #175cd3; }
.state-queued, .state-pending { background: #fef0c7; color: #93370d; }
.state-cancelled { background: #eaecf0; color: #475467; }
.filters { display: flex; gap: .4rem; flex-wrap: wrap; margin: .4rem 0 .2rem; }
.filters a { padding: .25rem .6rem; border: 1px solid var(--line); border-radius: 4px; background: #fff;
  text-decoration: none; color: var(--fg); }
.filters a.active { border-color: var(--accent); box-shadow: inset 0 0 0 1px var(--accent); }
button { font: inherit; cursor: pointer; }
button.action { padding: .15rem .6rem; border: 1px solid #98a2b3; border-radius: 4px; background: #fff; }
button.action:hover { border-color: var(--accent); color: var(--accent); }
button.quiet { background: none; border: 0; color: #cfd8e6; text-decoration: underline; padding: 0; }
.actions { white-space: nowrap; }
span.actions { display: inline-flex; gap: .3rem; }
td.actions button + button { margin-left: .3rem; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1.2rem; background: #fff;
  border: 1px solid var(--line); padding: .8rem 1rem; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; word-break: break-all; }
.flash { margin: .6rem 1.2rem 0; padding: .5rem .8rem; border-radius: 4px; }
.flash.ok { background: #d1fadf; color: #05603a; }
.flash.error { background: #fee4e2; color: #b42318; }
footer { padding: 1rem 1.2rem; color: var(--muted); font-size: .8rem; }
"""
