"""The admin dashboard over the ledger: HTML pages and a JSON API on the ``[http]`` port.

Pages (server-rendered, every ledger value HTML-escaped; a small script refreshes them in place):

* ``GET /dashboard``: counts by state (each one a filter, ``?state=FAILED``) and the newest jobs.
* ``GET /dashboard/jobs/<id>``: one job: timings, deliveries with their last status and error, events.
* ``GET /dashboard/deliveries``: the newest deliveries (``?state=``, ``?job=``).

* a SUCCEEDED job's page also lists its landmarks (name, LPS position to 0.1 mm, certainty) and shows
  ``GET /api/jobs/<id>/preview.png``, a small sagittal preview of the series with the landmarks drawn
  (:mod:`agent.web.preview`; 404 with the reason when the job has no results or its files are gone).

JSON API: ``GET /api/jobs`` (``?state=``, ``?limit=``), ``GET /api/jobs/<id>`` (with ``landmarks``),
``GET /api/deliveries`` (``?job=``, ``?state=``, ``?limit=``). Actions, POST only, with
``Authorization: Bearer <admin token>``:
``/api/jobs/<id>/retry``, ``/api/jobs/<id>/cancel``, ``/api/deliveries/<id>/retry``,
``/api/deliveries/<id>/resend``, ``/api/jobs/<id>/send/<destination>``, and
``/api/destinations/<name>/echo`` (a C-ECHO to the destination as the sender calls it, the same code as
``spine-agent destinations echo``; the answer says ``"ok"`` true with the round trip, or false with the
reason).

Read-only unless an admin token is configured (``http.admin_token_file`` or
``SPINE_AGENT_HTTP__ADMIN_TOKEN``): then actions answer 403. A missing or wrong token is 401, an
illegal state move 409 with the ledger's message, an unknown id 404. The token travels in a header,
never in a cookie, so a cross-site page cannot make the browser send it (no CSRF); it is compared in
constant time and never logged.

Patient data: the ledger holds none. Only with ``http.show_patient_data`` on do the pages and the API
show each series' Accession Number and Series Description (read from the spooled headers,
:mod:`agent.web.patient_data`) instead of UID fragments; with it off they are never read. The preview
holds pixels only (no header text, no PNG metadata).
"""

from __future__ import annotations

import functools
import hmac
import html
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from markupsafe import Markup

from agent.web.patient_data import SeriesDetails, SeriesDetailsCache, in_spool
from agent.web.preview import LandmarkRow, PreviewUnavailable, read_landmarks, render_preview
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
#: Rendered previews kept in memory (each well under 200 kB).
PREVIEW_CACHE = 32
#: How long a browser may keep a preview (a finished job's results do not change).
PREVIEW_MAX_AGE_S = 300

STATIC = "/dashboard/static"
#: The package files under ``agent/web/static`` served at ``STATIC``: name -> (file, content type).
STATIC_FILES: dict[str, tuple[str, str]] = {
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


@functools.cache
def _static_bytes(name: str) -> bytes:
    """A file of ``agent/web/static`` (package data), read once."""
    return resources.files("agent.web").joinpath("static", name).read_bytes()


def _escaped(value: object) -> Markup:
    """Every value a template prints: HTML-escaped (quotes too, so safe in attributes); None -> empty."""
    if isinstance(value, Markup):  # a macro's output, already escaped
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def _templates() -> jinja2.Environment:
    """The page templates of ``agent/web/templates`` (package data), escaping every value they print."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("agent.web", "templates"),
        autoescape=True,
        finalize=_escaped,
        undefined=jinja2.StrictUndefined,
    )

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
_PREVIEW = re.compile(r"/api/jobs/(\d{1,18})/preview\.png")
_JOB_ACTION = re.compile(r"/api/jobs/(\d{1,18})/(retry|cancel)")
_DELIVERY_ACTION = re.compile(r"/api/deliveries/(\d{1,18})/(retry|resend)")
_JOB_SEND = re.compile(r"/api/jobs/(\d{1,18})/send/([A-Za-z0-9_.-]{1,64})")
_DESTINATION_ECHO = re.compile(r"/api/destinations/([A-Za-z0-9_.-]{1,64})/echo")

#: Runs a C-ECHO to a configured destination by name; returns the outcome as JSON (``ok``, ``message``,
#: ``round_trip_ms``, ``error``, ...). The service sets it (agent.service.dicom_client.echo_destination).
DestinationEcho = Callable[[str], dict[str, Any]]

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


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _short_uid(uid: str) -> str:
    return uid if len(uid) <= 28 else "…" + uid[-27:]


def _seconds(value: object) -> str:
    return f"{value:.2f} s" if isinstance(value, int | float) else str(value)


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
        self._templates = _templates()
        #: The configured destination names (a job can be sent to each); set by the HTTP server.
        self.destinations: list[str] = []
        #: What the system page shows (readiness checks, disk, weights, destinations); set by the HTTP
        #: server, which owns those checks. None: the page says it is not available.
        self.system_status: Callable[[], dict[str, Any]] | None = None
        #: The echo button's C-ECHO (see :data:`DestinationEcho`); set by the service. None: no button.
        self.echo_destination: DestinationEcho | None = None
        #: The spool root (``storage.spool_dir``), where landmarks, previews and (with
        #: :attr:`show_patient_data`) the series' details are read; set by the HTTP server. None: none shown.
        self.spool_dir: Path | None = None
        #: ``http.show_patient_data``: Accession Number and Series Description instead of UID fragments.
        self.show_patient_data = False
        self._details = SeriesDetailsCache()
        self._previews: OrderedDict[int, bytes] = OrderedDict()
        self._preview_lock = threading.Lock()  # one preview drawn at a time: bounded memory and CPU

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
            return self._message(HTTPStatus.BAD_REQUEST, "Bad request", "jobs", str(exc))

    def _get(self, path: str, query: dict[str, list[str]]) -> DashboardResponse:
        if path == "/":
            return DashboardResponse(HTTPStatus.FOUND, b"", "text/plain", {"Location": "/dashboard"})
        if path in ("/dashboard", "/dashboard/"):
            return self._jobs_page(query)
        if path == "/dashboard/deliveries":
            return self._deliveries_page(query)
        if path == "/dashboard/system":
            return self._system_page()
        if path == "/api/system":
            return _json(HTTPStatus.OK, self._system())
        if path.startswith(f"{STATIC}/") and (static := STATIC_FILES.get(path.removeprefix(f"{STATIC}/"))):
            name, content_type = static
            return DashboardResponse(HTTPStatus.OK, _static_bytes(name), content_type, dict(SECURITY_HEADERS))
        if match := _JOB_PAGE.fullmatch(path):
            return self._job_page(int(match[1]))
        if path == "/api/jobs":
            return self._api_jobs(query)
        if match := _API_JOB.fullmatch(path):
            return self._api_job(int(match[1]))
        if match := _PREVIEW.fullmatch(path):
            return self._preview(int(match[1]))
        if path == "/api/deliveries":
            return self._api_deliveries(query)
        if path.startswith("/api/"):
            return _error(HTTPStatus.NOT_FOUND, f"no such resource: {path}")
        return self._message(HTTPStatus.NOT_FOUND, "Not found", "", f"No page at {path}.")

    # --- actions ------------------------------------------------------------------------------------

    def _post(self, request: DashboardRequest) -> DashboardResponse:
        path = request.path
        run: Callable[[int], str | dict[str, Any]]
        if match := _JOB_ACTION.fullmatch(path):
            target, run = int(match[1]), self._retry_job if match[2] == "retry" else self._cancel_job
        elif match := _DELIVERY_ACTION.fullmatch(path):
            target = int(match[1])
            run = self._retry_delivery if match[2] == "retry" else self._resend_delivery
        elif match := _JOB_SEND.fullmatch(path):
            destination = match[2]
            if destination not in self.destinations:
                return _error(HTTPStatus.NOT_FOUND, f"no destination {destination!r} is configured")
            target, run = int(match[1]), lambda job_id: self._send_job(job_id, destination)
        elif (match := _DESTINATION_ECHO.fullmatch(path)) and self.echo_destination is not None:
            name = match[1]
            if name not in self.destinations:
                return _error(HTTPStatus.NOT_FOUND, f"no destination {name!r} is configured")
            target, run = 0, lambda _: self._echo(name)
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
            result = run(target)
        except NotFound as exc:
            return _error(HTTPStatus.NOT_FOUND, str(exc))
        except IllegalTransition as exc:
            return _error(HTTPStatus.CONFLICT, str(exc))
        answer = result if isinstance(result, dict) else {"ok": True, "message": result}
        log.info("dashboard: %s by an admin from %s", answer["message"], request.client)
        return _json(HTTPStatus.OK, answer)

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

    def _resend_delivery(self, delivery_id: int) -> str:
        delivery = self.ledger.resend_delivery(delivery_id)
        state = delivery.state.value
        return f"delivery {delivery.id} to {delivery.destination} is {state} (every instance again)"

    def _send_job(self, job_id: int, destination: str) -> str:
        delivery = self.ledger.send_job_to(job_id, destination)
        return f"job {job_id}: delivery {delivery.id} to {destination} is {delivery.state.value}"

    def _echo(self, destination: str) -> dict[str, Any]:
        """C-ECHO one destination; a failed echo is an answer (``ok`` false, the reason), not an error."""
        assert self.echo_destination is not None
        outcome = dict(self.echo_destination(destination))
        outcome.setdefault("message", f"{destination}: echo done")
        return outcome

    def _retry_delivery(self, delivery_id: int) -> str:
        delivery = self.ledger.retry_delivery(delivery_id)
        return f"delivery {delivery.id} to {delivery.destination} is {delivery.state.value}"

    # --- JSON ---------------------------------------------------------------------------------------

    def _api_jobs(self, query: dict[str, list[str]]) -> DashboardResponse:
        states = _states(query, JobState)
        limit = _positive_int(query, "limit", DEFAULT_LIMIT, MAX_LIMIT) or DEFAULT_LIMIT
        jobs = self.ledger.list_jobs(states or None, None, limit)
        counts = {state.value: n for state, n in self.ledger.job_counts().items()}
        return _json(HTTPStatus.OK, {"counts": counts, "jobs": [self._job_json(j) for j in jobs]})

    def _job_json(self, job: Job) -> dict[str, Any]:
        """:func:`job_as_dict`, plus ``accession_number`` and ``series_description`` only when enabled."""
        data = job_as_dict(job)
        if self.show_patient_data:
            details = self._series_details(job)
            data["accession_number"] = details.accession_number if details else None
            data["series_description"] = details.series_description if details else None
        return data

    def _job_detail(self, job_id: int) -> dict[str, Any]:
        job = self.ledger.get_job(job_id)
        data = self._job_json(job)
        data["purged_at"] = iso(job.purged_at)
        landmarks = self._landmarks(job)
        data["landmarks"] = None if landmarks is None else [lm.as_json() for lm in landmarks]
        data["preview"] = f"/api/jobs/{job.id}/preview.png" if landmarks else None
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

    def _html(
        self, status: HTTPStatus, template: str, title: str, active: str, **values: Any
    ) -> DashboardResponse:
        page = self._templates.get_template(template).render(
            title=title,
            active=active,
            static=STATIC,
            actions_enabled=self.actions_enabled,
            refresh_s=self.refresh_s,
            **values,
        )
        return DashboardResponse(status, page.encode(), "text/html; charset=utf-8", dict(SECURITY_HEADERS))

    def _message(self, status: HTTPStatus, title: str, active: str, message: str) -> DashboardResponse:
        return self._html(status, "message.html", title, active, message=message)

    def _job_view(self, job: Job, now: datetime) -> dict[str, Any]:
        uid = job.series.series_instance_uid
        reason = job.failure_reason or ""
        details = self._series_details(job) if self.show_patient_data else None
        return {
            "id": job.id,
            "state": job.state.value,
            "uid": uid,
            "short_uid": _short_uid(uid),
            "series_label": (details.label if details else "") or _short_uid(uid),
            "version": job.series.version,
            "instances": job.series.instance_count,
            "created": _when(job.created_at),
            "age": age(job.created_at, now),
            "attempts": job.attempts,
            "reason": reason,
            "reason_clipped": _clip(reason, 160),
            "retryable": job.state in RETRYABLE_JOBS and job.purged_at is None,
            "cancellable": job.state in CANCELLABLE_JOBS,
        }

    @staticmethod
    def _delivery_view(d: Delivery) -> dict[str, Any]:
        return {
            "id": d.id,
            "job_id": d.job_id,
            "destination": d.destination,
            "state": d.state.value,
            "attempts": d.attempts,
            "sent": len(d.sent_instances),
            "status": "" if d.last_status is None else f"0x{d.last_status:04X}",
            "last_error": d.last_error,
            "when": _when(d.next_attempt_at if d.state == DeliveryState.PENDING else d.finished_at),
            "retryable": d.state in RETRYABLE_DELIVERIES,
            "resendable": d.state == DeliveryState.DELIVERED,
        }

    @staticmethod
    def _filter_links(base: str, counts: dict[Any, int], selected: set[Any]) -> list[dict[str, Any]]:
        links = [{"href": base, "css": "active" if not selected else "", "label": "All",
                  "count": sum(counts.values())}]
        for state, n in counts.items():
            css = f"state-{state.value.lower()}" + (" active" if state in selected else "")
            links.append({"href": f"{base}?{urlencode({'state': state.value})}", "css": css,
                          "label": state.value, "count": n})
        return links

    def _jobs_page(self, query: dict[str, list[str]]) -> DashboardResponse:
        states = _states(query, JobState)
        limit = _positive_int(query, "limit", DEFAULT_LIMIT, MAX_LIMIT) or DEFAULT_LIMIT
        jobs = self.ledger.list_jobs(states or None, None, limit)
        counts = self.ledger.job_counts()
        now = utcnow()
        return self._html(
            HTTPStatus.OK,
            "jobs.html",
            "Jobs",
            "jobs",
            jobs=[self._job_view(job, now) for job in jobs],
            links=self._filter_links("/dashboard", counts, set(states)),
            shown=", ".join(s.value for s in states) or "all states",
        )

    def _job_page(self, job_id: int) -> DashboardResponse:
        try:
            job = self.ledger.get_job(job_id)
        except NotFound as exc:
            return self._message(HTTPStatus.NOT_FOUND, "Not found", "jobs", f"{exc}.")
        events = self.ledger.events(job_id=job_id, limit=EVENT_LIMIT)
        now = utcnow()
        series = job.series
        duration = ""
        if job.started_at and job.finished_at and job.finished_at >= job.started_at:
            duration = f"{(job.finished_at - job.started_at).total_seconds():.1f} s"
        facts = [
            ("state", job.state.value),
            ("series instance UID", series.series_instance_uid),
            ("study instance UID", series.study_instance_uid),
            *self._details_facts(job),
            ("series version", series.version),
            ("instances", f"{series.instance_count} ({series.byte_count / 1e6:.1f} MB)"),
            ("received", f"{_when(series.first_received_at)} … {_when(series.last_received_at)}"),
            ("attempts", job.attempts),
            ("model version", job.model_version or ""),
            ("created", f"{_when(job.created_at)} ({age(job.created_at, now)} ago)"),
            ("started", _when(job.started_at)),
            ("finished", _when(job.finished_at)),
            ("run time", duration),
            ("lease", f"{job.lease_owner} until {_when(job.lease_expires_at)}" if job.lease_owner else ""),
            ("outputs", job.output_path or ""),
            ("files purged", _when(job.purged_at)),
            ("skip reason" if job.state == JobState.SKIPPED else "failure reason", job.failure_reason or ""),
        ]
        landmarks = self._landmarks(job)
        return self._html(
            HTTPStatus.OK,
            "job.html",
            f"Job {job.id}",
            "jobs",
            job=self._job_view(job, now),
            landmarks=landmarks,
            preview=f"/api/jobs/{job.id}/preview.png" if landmarks else None,
            facts=facts,
            timings=[(stage, _seconds(s)) for stage, s in job.timings.items()],
            deliveries=[self._delivery_view(d) for d in job.deliveries],
            send_to=self.destinations if job.state == JobState.SUCCEEDED and job.purged_at is None else [],
            events=[{"at": _when(e.at), "kind": e.kind, "detail": e.detail or ""} for e in events],
        )

    # --- results and patient data (spool files) -----------------------------------------------------

    def _spool_path(self, relpath: str | None) -> Path | None:
        """A ledger path inside the spool (the ledger's own values; a path leaving the spool is None)."""
        return None if self.spool_dir is None else in_spool(self.spool_dir, relpath)

    def _series_details(self, job: Job) -> SeriesDetails | None:
        folder = self._spool_path(job.series.spool_path)
        return None if folder is None else self._details.get(job.series.id, folder)

    def _details_facts(self, job: Job) -> list[tuple[str, str]]:
        if not self.show_patient_data:
            return []
        details = self._series_details(job)
        if details is None:
            return [("accession number", "(series no longer in the spool)")]
        return [
            ("accession number", details.accession_number),
            ("series description", details.series_description),
        ]

    def _landmarks(self, job: Job) -> list[LandmarkRow] | None:
        """A SUCCEEDED job's landmarks while its files are in the spool; otherwise None."""
        if job.state != JobState.SUCCEEDED or job.purged_at is not None:
            return None
        out_dir = self._spool_path(job.output_path)
        return None if out_dir is None else read_landmarks(out_dir)

    def _preview(self, job_id: int) -> DashboardResponse:
        try:
            job = self.ledger.get_job(job_id)
        except NotFound as exc:
            return _error(HTTPStatus.NOT_FOUND, str(exc))
        landmarks = self._landmarks(job)
        series_dir = self._spool_path(job.series.spool_path)
        if landmarks is None or series_dir is None:
            why = "its files were removed" if job.purged_at else f"it is {job.state.value}, with no results"
            return _error(HTTPStatus.NOT_FOUND, f"job {job_id} has no preview: {why}")
        with self._preview_lock:
            png = self._previews.get(job_id)
            if png is None:
                try:
                    png = render_preview(series_dir, landmarks)
                except PreviewUnavailable as exc:
                    return _error(HTTPStatus.NOT_FOUND, f"job {job_id} has no preview: {exc}")
                self._previews[job_id] = png
                while len(self._previews) > PREVIEW_CACHE:
                    self._previews.popitem(last=False)
            else:
                self._previews.move_to_end(job_id)
        headers = dict(SECURITY_HEADERS)
        headers["Cache-Control"] = f"private, max-age={PREVIEW_MAX_AGE_S}"
        return DashboardResponse(HTTPStatus.OK, png, "image/png", headers)

    def _system(self) -> dict[str, Any]:
        return self.system_status() if self.system_status is not None else {"available": False}

    def _system_page(self) -> DashboardResponse:
        status = self._system()
        if not status.get("available", True):
            return self._message(HTTPStatus.OK, "System", "system", "System status is not available here.")
        echo = self.echo_destination is not None
        return self._html(HTTPStatus.OK, "system.html", "System", "system", system=status, echo=echo)

    def _deliveries_page(self, query: dict[str, list[str]]) -> DashboardResponse:
        deliveries = self._deliveries(query)
        states = set(_states(query, DeliveryState))
        return self._html(
            HTTPStatus.OK,
            "deliveries.html",
            "Deliveries",
            "deliveries",
            deliveries=[self._delivery_view(d) for d in deliveries],
            links=self._filter_links("/dashboard/deliveries", self.ledger.delivery_counts(), states),
        )
