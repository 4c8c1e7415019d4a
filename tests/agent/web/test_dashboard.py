"""The admin dashboard over real HTTP against a real SQLite ledger: pages, JSON API, authenticated actions."""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.service.service import AgentService
from agent.web.dashboard import Dashboard, load_admin_token
from agent.web.http import HealthServer
from config import ConfigError, Destination, HttpSettings, Settings, settings_from_mapping
from config.settings import LedgerSettings, StorageSettings
from dicom_io.result import Result
from dicom_io.volume import Volume
from storage import DeliveryState, JobState, Ledger
from tests.conftest import free_port
from tests.storage.scenario import queue, receive

TOKEN = "s3cret-admin-token-0123456789abcdef"
XSS = '<script>alert("xss")</script> & <img src=x onerror=alert(1)>'


@dataclass(frozen=True)
class Jobs:
    """Ids of the scenario: one SUCCEEDED job (deliveries: pacs DELIVERED, backup FAILED), one FAILED
    job whose reason is an XSS attempt, one QUEUED job."""

    succeeded: int
    failed: int
    queued: int
    delivered: int
    failed_delivery: int


def build_scenario(ledger: Ledger, spool: Path) -> Jobs:
    now = datetime.now(UTC)
    t0 = now - timedelta(minutes=30)
    receive(ledger, spool, "1.2.3", "1.2.3.1", ["a", "b", "c"], t0)
    succeeded = queue(ledger, t0 + timedelta(minutes=1))
    receive(ledger, spool, "1.2.3", "1.2.3.2", ["d", "e"], t0 + timedelta(minutes=2))
    failed = queue(ledger, t0 + timedelta(minutes=3))
    receive(ledger, spool, "1.2.3", "1.2.3.3", ["f"], t0 + timedelta(minutes=4))
    queued = queue(ledger, t0 + timedelta(minutes=5))

    ledger.claim_job("test-worker", lease_s=10**6, now=t0 + timedelta(minutes=5, seconds=30))
    ledger.succeed_job(
        succeeded,
        owner="test-worker",
        timings={"load": 1.25, "stage1": 3.5, "stage2": 5.0},
        model_version="test",
        output_path=f"outgoing/{succeeded}",
        destinations=["pacs", "backup"],
        now=t0 + timedelta(minutes=6),
    )
    by_name = {d.destination: d.id for d in ledger.list_deliveries(succeeded)}
    ledger.record_delivery_attempt(
        by_name["pacs"],
        sent_instances=["9.9.1", "9.9.2"],
        status=0,
        error=None,
        outcome=DeliveryState.DELIVERED,
        now=t0 + timedelta(minutes=6, seconds=30),
    )
    ledger.record_delivery_attempt(
        by_name["backup"],
        sent_instances=[],
        status=0xA700,
        error="Out of Resources <b>full</b>",
        outcome=DeliveryState.FAILED,
        now=t0 + timedelta(minutes=7),
    )
    ledger.claim_job("test-worker", lease_s=10**6, now=t0 + timedelta(minutes=8))
    ledger.fail_job(failed, XSS, owner="test-worker", now=t0 + timedelta(minutes=9))
    return Jobs(succeeded, failed, queued, by_name["pacs"], by_name["backup"])


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def settings(spool: Path, ledger_url: str) -> Settings:
    return Settings(storage=StorageSettings(spool_dir=spool), ledger=LedgerSettings(url=ledger_url))


@pytest.fixture
def jobs(ledger: Ledger, spool: Path) -> Jobs:
    return build_scenario(ledger, spool)


def start_server(settings: Settings, ledger: Ledger, token: str | None) -> HealthServer:
    server = HealthServer(
        settings, ledger, model_loaded=lambda: True, port=0, dashboard=Dashboard(ledger, admin_token=token)
    )
    server.start()
    return server


@pytest.fixture
def server(settings: Settings, ledger: Ledger, jobs: Jobs) -> Iterator[HealthServer]:
    http = start_server(settings, ledger, TOKEN)
    yield http
    http.stop()


@pytest.fixture
def read_only(settings: Settings, ledger: Ledger, jobs: Jobs) -> Iterator[HealthServer]:
    http = start_server(settings, ledger, None)
    yield http
    http.stop()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> str:
        return self.raw.decode()

    def json(self) -> dict:
        assert self.headers["Content-Type"] == "application/json"
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


def call(
    server: HealthServer, path: str, method: str = "GET", token: str | None = None, **headers: str
) -> Reply:
    """One real HTTP request; error statuses are returned, redirects are not followed."""
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(server.url + path, method=method, headers=headers)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read())


# --- pages ----------------------------------------------------------------------------------------------


def test_root_redirects_to_the_dashboard(server: HealthServer) -> None:
    reply = call(server, "/")
    assert (reply.status, reply.headers["Location"]) == (302, "/dashboard")


def test_the_jobs_page_lists_every_job_with_counts(server: HealthServer, jobs: Jobs) -> None:
    reply = call(server, "/dashboard")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    rows = re.findall(r'<tr data-job-id="(\d+)" data-state="(\w+)">', reply.body)
    assert rows == [
        (str(jobs.queued), "QUEUED"),
        (str(jobs.failed), "FAILED"),
        (str(jobs.succeeded), "SUCCEEDED"),
    ]
    assert "All <b>3</b>" in reply.body
    assert "FAILED <b>1</b>" in reply.body and "RUNNING <b>0</b>" in reply.body
    assert ">1.2.3.2<" in reply.body  # the series UID
    # Actions offered only where the ledger allows them.
    assert f'data-action="/api/jobs/{jobs.failed}/retry"' in reply.body
    assert f'data-action="/api/jobs/{jobs.queued}/cancel"' in reply.body
    assert f'data-action="/api/jobs/{jobs.succeeded}/' not in reply.body


def test_every_rendered_value_is_escaped(server: HealthServer, jobs: Jobs) -> None:
    for path in ("/dashboard", f"/dashboard/jobs/{jobs.failed}"):
        body = call(server, path).body
        assert "&lt;script&gt;alert(&quot;xss&quot;)&lt;/script&gt; &amp; &lt;img src=x" in body
        assert "<script>alert" not in body and "<img" not in body
        # The only script is our own file, and the policy forbids inline code anyway.
        assert re.findall(r"<script[^>]*>", body) == ['<script src="/dashboard/static/dashboard.js" defer>']
    body = call(server, f"/dashboard/jobs/{jobs.succeeded}").body
    assert "Out of Resources &lt;b&gt;full&lt;/b&gt;" in body


def test_pages_send_a_strict_content_security_policy(server: HealthServer) -> None:
    headers = call(server, "/dashboard").headers
    assert "script-src 'self';" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"


def test_the_state_filter(server: HealthServer, jobs: Jobs) -> None:
    body = call(server, "/dashboard?state=FAILED").body
    assert re.findall(r'data-job-id="(\d+)"', body) == [str(jobs.failed)]
    body = call(server, "/dashboard?state=queued,succeeded").body
    assert re.findall(r'data-job-id="(\d+)"', body) == [str(jobs.queued), str(jobs.succeeded)]
    reply = call(server, "/dashboard?state=<b>")
    assert reply.status == 400 and "expected one or more of QUEUED" in reply.body and "<b>" not in reply.body


def test_the_job_page_shows_timings_deliveries_and_events(server: HealthServer, jobs: Jobs) -> None:
    reply = call(server, f"/dashboard/jobs/{jobs.succeeded}")
    assert reply.status == 200
    assert "1.2.3.1" in reply.body
    assert "<td>stage1</td><td>3.50 s</td>" in reply.body and "30.0 s" in reply.body  # a timing, the run time
    deliveries = dict(re.findall(r'<tr data-delivery-id="(\d+)" data-state="(\w+)">', reply.body))
    assert deliveries == {str(jobs.delivered): "DELIVERED", str(jobs.failed_delivery): "FAILED"}
    assert "0xA700" in reply.body
    assert f'data-action="/api/deliveries/{jobs.failed_delivery}/retry"' in reply.body
    assert f'data-action="/api/deliveries/{jobs.delivered}/retry"' not in reply.body
    for kind in ("job.queued", "job.running", "job.succeeded", "delivery.delivered", "delivery.failed"):
        assert f"<td>{kind}</td>" in reply.body


def test_the_deliveries_page(server: HealthServer, jobs: Jobs) -> None:
    body = call(server, "/dashboard/deliveries?state=FAILED").body
    assert re.findall(r'data-delivery-id="(\d+)"', body) == [str(jobs.failed_delivery)]
    assert "FAILED <b>1</b>" in body and "DELIVERED <b>1</b>" in body


def test_unknown_pages_are_404(server: HealthServer) -> None:
    assert call(server, "/dashboard/jobs/999").status == 404
    assert call(server, "/dashboard/nope").status == 404
    assert call(server, "/nope").status == 404
    assert call(server, "/healthz").body == "ok\n"  # the health endpoint is untouched


def test_the_static_files(server: HealthServer) -> None:
    js = call(server, "/dashboard/static/dashboard.js")
    assert js.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert "sessionStorage" in js.body and "localStorage" not in js.body
    css = call(server, "/dashboard/static/dashboard.css")
    assert css.headers["Content-Type"] == "text/css; charset=utf-8"


# --- JSON API -------------------------------------------------------------------------------------------


def test_api_jobs(server: HealthServer, jobs: Jobs) -> None:
    data = call(server, "/api/jobs").json()
    assert data["counts"] == {
        "QUEUED": 1,
        "RUNNING": 0,
        "SUCCEEDED": 1,
        "FAILED": 1,
        "CANCELLED": 0,
        "SKIPPED": 0,
    }
    assert [j["id"] for j in data["jobs"]] == [jobs.queued, jobs.failed, jobs.succeeded]
    failed = data["jobs"][1]
    assert failed["failure_reason"] == XSS
    assert (failed["series_instance_uid"], failed["series_version"], failed["instances"]) == ("1.2.3.2", 1, 2)
    assert [j["id"] for j in call(server, "/api/jobs?state=FAILED&state=QUEUED").json()["jobs"]] == [
        jobs.queued,
        jobs.failed,
    ]
    assert len(call(server, "/api/jobs?limit=1").json()["jobs"]) == 1
    for bad in ("state=DONE", "limit=0", "limit=x", "limit=100000"):
        reply = call(server, f"/api/jobs?{bad}")
        assert reply.status == 400, bad
        assert reply.json()["error"]


def test_api_job(server: HealthServer, jobs: Jobs) -> None:
    data = call(server, f"/api/jobs/{jobs.succeeded}").json()
    assert data["state"] == "SUCCEEDED" and data["model_version"] == "test"
    assert {d["destination"]: d["state"] for d in data["deliveries"]} == {
        "pacs": "DELIVERED",
        "backup": "FAILED",
    }
    assert [e["kind"] for e in data["events"]][:2] == ["job.queued", "job.running"]
    missing = call(server, "/api/jobs/999")
    assert (missing.status, missing.json()) == (404, {"error": "job 999 does not exist"})
    assert call(server, "/api/jobs/abc").status == 404


def test_api_deliveries(server: HealthServer, jobs: Jobs) -> None:
    data = call(server, "/api/deliveries").json()
    assert [d["id"] for d in data["deliveries"]] == [jobs.failed_delivery, jobs.delivered]
    assert data["counts"]["FAILED"] == 1
    failed = data["deliveries"][0]
    assert (failed["job_id"], failed["last_status"], failed["last_error"]) == (
        jobs.succeeded,
        "0xA700",
        "Out of Resources <b>full</b>",
    )
    assert call(server, f"/api/deliveries?job={jobs.failed}").json()["deliveries"] == []
    assert [d["id"] for d in call(server, "/api/deliveries?state=DELIVERED").json()["deliveries"]] == [
        jobs.delivered
    ]


# --- actions --------------------------------------------------------------------------------------------


def test_read_only_dashboard_refuses_actions_with_403(
    read_only: HealthServer, ledger: Ledger, jobs: Jobs
) -> None:
    reply = call(read_only, f"/api/jobs/{jobs.failed}/retry", "POST", token=TOKEN)
    assert reply.status == 403
    assert "read-only" in reply.json()["error"] and "admin_token_file" in reply.json()["error"]
    assert ledger.get_job(jobs.failed).state == JobState.FAILED
    page = call(read_only, "/dashboard").body
    assert "data-action=" not in page and "read-only" in page


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-0123456789abcdef", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "],
)
def test_missing_or_wrong_token_is_401(
    server: HealthServer, ledger: Ledger, jobs: Jobs, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    reply = call(server, f"/api/jobs/{jobs.failed}/retry", "POST", **headers)
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="spine-agent"'
    assert "admin token" in reply.json()["error"]
    assert ledger.get_job(jobs.failed).state == JobState.FAILED


def test_retry_with_the_token_queues_the_failed_job(server: HealthServer, ledger: Ledger, jobs: Jobs) -> None:
    reply = call(server, f"/api/jobs/{jobs.failed}/retry", "POST", token=TOKEN)
    assert (reply.status, reply.json()) == (200, {"ok": True, "message": f"job {jobs.failed} is QUEUED"})
    job = ledger.get_job(jobs.failed)
    assert (job.state, job.attempts, job.failure_reason) == (JobState.QUEUED, 0, None)
    assert ledger.events(job_id=jobs.failed)[-1].detail == "retried by an admin"


def test_cancel_with_the_token(server: HealthServer, ledger: Ledger, jobs: Jobs) -> None:
    reply = call(server, f"/api/jobs/{jobs.queued}/cancel", "POST", token=TOKEN)
    assert reply.status == 200
    assert ledger.get_job(jobs.queued).state == JobState.CANCELLED


def test_retry_a_delivery_with_the_token(server: HealthServer, ledger: Ledger, jobs: Jobs) -> None:
    reply = call(server, f"/api/deliveries/{jobs.failed_delivery}/retry", "POST", token=TOKEN)
    assert reply.json()["message"] == f"delivery {jobs.failed_delivery} to backup is PENDING"
    states = {d.id: d.state for d in ledger.list_deliveries(jobs.succeeded)}
    assert states == {jobs.delivered: DeliveryState.DELIVERED, jobs.failed_delivery: DeliveryState.PENDING}


def test_illegal_moves_are_409_with_the_ledgers_message(
    server: HealthServer, ledger: Ledger, jobs: Jobs
) -> None:
    reply = call(server, f"/api/jobs/{jobs.succeeded}/retry", "POST", token=TOKEN)
    assert (reply.status, reply.json()["error"]) == (
        409,
        f"job {jobs.succeeded}: cannot go from SUCCEEDED to QUEUED",
    )
    reply = call(server, f"/api/jobs/{jobs.failed}/cancel", "POST", token=TOKEN)
    assert (reply.status, reply.json()["error"]) == (
        409,
        f"job {jobs.failed}: cannot go from FAILED to CANCELLED",
    )
    reply = call(server, f"/api/deliveries/{jobs.delivered}/retry", "POST", token=TOKEN)
    assert reply.status == 409 and "cannot go from DELIVERED to PENDING" in reply.json()["error"]
    assert ledger.get_job(jobs.succeeded).state == JobState.SUCCEEDED
    assert ledger.get_job(jobs.failed).state == JobState.FAILED


def test_unknown_ids_and_actions_are_404(server: HealthServer) -> None:
    assert call(server, "/api/jobs/999/retry", "POST", token=TOKEN).json() == {
        "error": "job 999 does not exist"
    }
    assert call(server, "/api/deliveries/999/retry", "POST", token=TOKEN).status == 404
    assert call(server, "/api/jobs/1/delete", "POST", token=TOKEN).status == 404
    assert call(server, "/api/deliveries/1/cancel", "POST", token=TOKEN).status == 404
    assert call(server, "/healthz", "POST", token=TOKEN).status == 404


def test_actions_need_post(server: HealthServer, ledger: Ledger, jobs: Jobs) -> None:
    assert call(server, f"/api/jobs/{jobs.failed}/retry", token=TOKEN).status == 404
    assert call(server, f"/api/jobs/{jobs.failed}/retry", "PUT", token=TOKEN).status in (404, 501)
    assert ledger.get_job(jobs.failed).state == JobState.FAILED


def test_the_token_is_never_logged(
    server: HealthServer, jobs: Jobs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    call(server, f"/api/jobs/{jobs.failed}/retry", "POST", token=TOKEN + "x")
    call(server, f"/api/jobs/{jobs.failed}/retry", "POST", token=TOKEN)
    messages = [r.getMessage() for r in caplog.records]
    assert any("refused" in m for m in messages) and any(
        f"job {jobs.failed} is QUEUED" in m for m in messages
    )
    assert not any(TOKEN in m for m in messages)
    assert TOKEN not in repr(server.dashboard)


# --- the token's configuration ---------------------------------------------------------------------------


def test_the_token_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    assert load_admin_token(HttpSettings(admin_token_file=path)) == TOKEN
    assert load_admin_token(HttpSettings()) is None


def test_the_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINE_AGENT_HTTP__ADMIN_TOKEN", TOKEN)
    settings = settings_from_mapping({})
    assert load_admin_token(settings.http) == TOKEN
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())


def test_a_world_readable_token_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "admin-token"
    path.write_text(TOKEN)
    path.chmod(0o644)
    assert load_admin_token(HttpSettings(admin_token_file=path)) == TOKEN
    assert "chmod 640 or 600" in caplog.text and TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("http", "message"),
    [
        ({"admin_token": "short"}, "at least 16 characters"),
        ({"admin_token": "has a space in the middle"}, "without spaces"),
        ({"admin_token_file": "/nonexistent/admin-token"}, "cannot read: No such file or directory"),
        ({"admin_token": TOKEN, "admin_token_file": "/x"}, "both set"),
    ],
)
def test_bad_token_configuration_is_a_clear_error(http: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_admin_token(HttpSettings(**http))


def test_the_dashboard_can_be_turned_off(settings: Settings, ledger: Ledger) -> None:
    assert settings_from_mapping({"http": {"dashboard": False}}).http.dashboard is False
    http = HealthServer(settings, ledger, model_loaded=lambda: True, port=0)
    http.start()
    try:
        assert call(http, "/dashboard").status == 404
        assert call(http, "/api/jobs").status == 404
        assert call(http, "/").status == 404
    finally:
        http.stop()


# --- wired into the service ------------------------------------------------------------------------------


class _IdlePredictor:
    """Never called: no series arrives in these tests."""

    def predict(self, volume: Volume) -> Result:
        raise AssertionError("no job should run")


def _service_settings(tmp_path: Path, **http: object) -> Settings:
    return settings_from_mapping(
        {
            "dicom": {"port": free_port(), "bind_address": "127.0.0.1"},
            "storage": {"spool_dir": str(tmp_path / "spool"), "disk_reserve_mb": 0},
            "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"},
            "http": {"port": free_port(), **http},
        }
    )


def test_serve_offers_the_dashboard_with_the_token_from_its_file(tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    service = AgentService(
        _service_settings(tmp_path, admin_token_file=str(token_file)),
        engine=_IdlePredictor(),
    )
    service.start()
    try:
        assert service.http is not None
        assert call(service.http, "/dashboard").status == 200
        assert call(service.http, "/api/jobs/1/retry", "POST", token="wrong-token-0123456789").status == 401
        assert call(service.http, "/api/jobs/1/retry", "POST", token=TOKEN).json() == {
            "error": "job 1 does not exist"
        }
    finally:
        service.stop()


def test_serve_stops_before_listening_when_the_token_file_is_missing(tmp_path: Path) -> None:
    settings = _service_settings(tmp_path, admin_token_file=str(tmp_path / "missing"))
    # Refused before anything is built (agent/service/preflight.py): nothing listens, nothing to stop.
    with pytest.raises(ConfigError, match="admin_token_file .*missing: cannot read"):
        AgentService(settings, engine=_IdlePredictor())


# --- re-send, send to a destination, system page (issue 17) ---------------------------------------------


@pytest.fixture
def with_destinations(settings: Settings, ledger: Ledger, jobs: Jobs) -> Iterator[HealthServer]:
    configured = settings.model_copy(
        update={
            "destinations": [
                Destination(name=n, ae_title="PACS", host="127.0.0.1", port=104)
                for n in ("pacs", "backup", "archive", "never-tried")
            ]
        }
    )
    http = start_server(configured, ledger, TOKEN)
    yield http
    http.stop()


def test_resend_a_delivered_delivery_from_the_dashboard(
    with_destinations: HealthServer, ledger: Ledger, jobs: Jobs
) -> None:
    page = call(with_destinations, f"/dashboard/jobs/{jobs.succeeded}").body
    assert f'data-action="/api/deliveries/{jobs.delivered}/resend"' in page
    assert f'data-action="/api/deliveries/{jobs.failed_delivery}/resend"' not in page
    reply = call(with_destinations, f"/api/deliveries/{jobs.delivered}/resend", "POST", token=TOKEN)
    assert reply.json()["message"] == f"delivery {jobs.delivered} to pacs is PENDING (every instance again)"
    (resent,) = [d for d in ledger.list_deliveries(jobs.succeeded) if d.id == jobs.delivered]
    assert resent.state == DeliveryState.PENDING and resent.sent_instances == []
    last_event = ledger.events(job_id=jobs.succeeded)[-1].detail
    assert last_event == "re-send of every instance requested by an admin"
    again = call(with_destinations, f"/api/deliveries/{jobs.delivered}/resend", "POST", token=TOKEN)
    assert again.status == 409 and "cannot go from PENDING to PENDING" in again.json()["error"]


def test_send_a_job_to_another_destination_from_the_dashboard(
    with_destinations: HealthServer, ledger: Ledger, jobs: Jobs
) -> None:
    page = call(with_destinations, f"/dashboard/jobs/{jobs.succeeded}").body
    for name in ("pacs", "backup", "archive", "never-tried"):
        assert f'data-action="/api/jobs/{jobs.succeeded}/send/{name}"' in page
    assert "/send/" not in call(with_destinations, f"/dashboard/jobs/{jobs.failed}").body
    reply = call(with_destinations, f"/api/jobs/{jobs.succeeded}/send/archive", "POST", token=TOKEN)
    assert reply.status == 200 and reply.json()["message"].endswith("to archive is PENDING")
    destinations = sorted(d.destination for d in ledger.list_deliveries(jobs.succeeded))
    assert destinations == ["archive", "backup", "pacs"]
    assert ledger.events(job_id=jobs.succeeded)[-1].detail == "sent to archive by an admin"
    unknown = call(with_destinations, f"/api/jobs/{jobs.succeeded}/send/nowhere", "POST", token=TOKEN)
    assert unknown.status == 404 and "no destination 'nowhere'" in unknown.json()["error"]
    failed = call(with_destinations, f"/api/jobs/{jobs.failed}/send/pacs", "POST", token=TOKEN)
    assert failed.status == 409 and "no results to send" in failed.json()["error"]
    assert call(with_destinations, f"/api/jobs/{jobs.succeeded}/send/pacs", "POST").status == 401


def test_the_system_page_shows_checks_weights_disk_and_destinations(with_destinations: HealthServer) -> None:
    from agent.web import metrics

    metrics.MODEL_INFO.clear()  # earlier tests in this process loaded other engines
    metrics.MODEL_INFO.labels(version="v9.9.9-test").set(1)
    metrics.note_delivery_attempt("backup", "pending", "connection refused", datetime(2026, 3, 1, tzinfo=UTC))
    try:
        data = call(with_destinations, "/api/system").json()
        page = call(with_destinations, "/dashboard/system")
    finally:
        metrics.MODEL_INFO.remove("v9.9.9-test")
    assert data["weights_version"] == "v9.9.9-test"
    assert set(data["checks"]) >= {"ledger", "spool", "model", "disk"}
    assert data["destinations"]["backup"]["last_error"] == "connection refused"
    # The status is this process's (other tests in this process sent to "archive" for real).
    assert data["destinations"]["never-tried"]["last_attempt_at"] is None
    assert page.status == 200
    for text in ("v9.9.9-test", "GiB", "connection refused", "never-tried", "Readiness checks"):
        assert text in page.body, text
