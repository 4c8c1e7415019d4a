"""The health and metrics endpoint, over real HTTP against a real SQLite ledger."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.web.http import MIB, DiskUsage, HealthServer
from config.settings import HttpSettings, LedgerSettings, Settings, StorageSettings
from storage import DeliveryState, JobState, Ledger
from tests.storage.scenario import finish, queue, receive
from tests.storage.test_retention import NOW


class Agent:
    """What the service would pass in: a model flag and a disk probe the test can turn."""

    def __init__(self) -> None:
        self.model_loaded = True
        self.free_bytes = 50_000 * MIB

    def probe(self, _path: Path) -> DiskUsage:
        return DiskUsage(total=100_000 * MIB, used=100_000 * MIB - self.free_bytes, free=self.free_bytes)


@pytest.fixture
def agent() -> Agent:
    return Agent()


@pytest.fixture
def settings(tmp_path: Path, ledger_url: str) -> Settings:
    spool = tmp_path / "spool"
    spool.mkdir()
    return Settings(
        storage=StorageSettings(spool_dir=spool, disk_reserve_mb=2048),
        ledger=LedgerSettings(url=ledger_url),
        http=HttpSettings(bind_address="127.0.0.1", port=8080),
    )


@pytest.fixture
def server(settings: Settings, ledger: Ledger, agent: Agent) -> Iterator[HealthServer]:
    http = HealthServer(
        settings, ledger, model_loaded=lambda: agent.model_loaded, port=0, disk_probe=agent.probe
    )
    http.start()
    yield http
    http.stop()


def get(server: HealthServer, path: str) -> tuple[int, str, str]:
    """Status, content type and body of a GET (error statuses included)."""
    try:
        with urllib.request.urlopen(server.url + path, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_healthz_answers_ok(server: HealthServer) -> None:
    assert server.port not in (0, 8080)  # the explicit port=0 overrode the configuration
    assert get(server, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")


def test_unknown_paths_are_404(server: HealthServer) -> None:
    assert get(server, "/nope")[0] == 404
    assert get(server, "/healthz/extra")[0] == 404


def test_readyz_is_200_when_every_check_passes(server: HealthServer) -> None:
    status, content_type, body = get(server, "/readyz")
    assert (status, content_type) == (200, "application/json")
    data = json.loads(body)
    assert data["ready"] is True
    assert set(data["checks"]) == {"ledger", "spool", "model", "disk"}
    assert all(check["ok"] for check in data["checks"].values())
    assert data["checks"]["disk"]["detail"] == "50000 MiB free, reserve 2048 MiB"


def _failed_checks(server: HealthServer) -> dict[str, str]:
    status, _type, body = get(server, "/readyz")
    assert status == 503
    data = json.loads(body)
    assert data["ready"] is False
    return {name: check["detail"] for name, check in data["checks"].items() if not check["ok"]}


def test_readyz_is_503_while_the_model_is_not_loaded(server: HealthServer, agent: Agent) -> None:
    agent.model_loaded = False
    assert _failed_checks(server) == {"model": "not loaded"}
    agent.model_loaded = True
    assert get(server, "/readyz")[0] == 200


def test_readyz_is_503_when_the_spool_is_not_writable(
    server: HealthServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*_args: object, **_kwargs: object) -> tuple[int, str]:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("agent.web.http.tempfile.mkstemp", read_only)
    assert _failed_checks(server) == {"spool": "not writable: Read-only file system"}
    monkeypatch.undo()
    spool = settings.storage.spool_dir
    spool.rmdir()
    spool.write_text("a file where the spool folder should be")
    assert _failed_checks(server) == {"spool": f"{spool} is not a directory"}


def test_the_spool_check_leaves_no_file_behind(server: HealthServer, settings: Settings) -> None:
    assert get(server, "/readyz")[0] == 200
    assert list(settings.storage.spool_dir.iterdir()) == []


def test_readyz_is_503_when_free_disk_is_below_the_reserve(server: HealthServer, agent: Agent) -> None:
    agent.free_bytes = 100 * MIB
    assert _failed_checks(server) == {"disk": "100 MiB free, reserve 2048 MiB"}


def test_readyz_is_503_when_the_ledger_is_unreachable(
    server: HealthServer, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down() -> None:
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(ledger, "ping", down)
    assert _failed_checks(server) == {"ledger": "unreachable: ConnectionRefusedError: connection refused"}


def test_extra_checks_take_part(settings: Settings, ledger: Ledger, agent: Agent) -> None:
    from agent.web.http import CheckResult

    http = HealthServer(
        settings,
        ledger,
        model_loaded=lambda: True,
        extra_checks={"scp": lambda: CheckResult(False, "not listening")},
        port=0,
        disk_probe=agent.probe,
    )
    http.start()
    try:
        assert _failed_checks(http) == {"scp": "not listening"}
    finally:
        http.stop()
    http.stop()  # idempotent


def test_metrics_mirror_the_ledger_at_scrape_time(
    server: HealthServer, ledger: Ledger, settings: Settings, agent: Agent
) -> None:
    spool = settings.storage.spool_dir
    for index, (state, deliveries) in enumerate(
        [
            (JobState.SUCCEEDED, {"pacs": DeliveryState.DELIVERED, "archive": DeliveryState.PENDING}),
            (JobState.SUCCEEDED, {"pacs": DeliveryState.FAILED}),
            (JobState.FAILED, {}),
            (JobState.RUNNING, {}),
            (JobState.QUEUED, {}),
            (JobState.QUEUED, {}),
        ]
    ):
        at = NOW + timedelta(minutes=10 * index)
        receive(ledger, spool, "1.2.3", f"1.{index}", ["1"], at)
        job_id = queue(ledger, at + timedelta(minutes=1))
        finish(ledger, spool, job_id, state, at + timedelta(minutes=2), deliveries=deliveries)
    # A series the routing rules left out: a SKIPPED job, counted under its own state.
    at = NOW + timedelta(hours=2)
    receive(ledger, spool, "1.2.3", "1.9", ["1"], at)
    (skipped,) = ledger.close_quiet_series(30, at + timedelta(minutes=1), route=lambda s: "skipped: test")
    assert skipped.state == JobState.SKIPPED

    status, content_type, body = get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=")
    families = {family.name: family for family in text_string_to_metric_families(body)}

    jobs = {s.labels["state"]: s.value for s in families["spine_agent_jobs"].samples}
    assert jobs == {state.value: float(n) for state, n in ledger.job_counts().items()}
    assert jobs == {
        "QUEUED": 2.0,
        "RUNNING": 1.0,
        "SUCCEEDED": 2.0,
        "FAILED": 1.0,
        "CANCELLED": 0.0,
        "SKIPPED": 1.0,
    }
    assert families["spine_agent_queue_depth"].samples[0].value == 2.0
    delivery_gauges = {s.labels["state"]: s.value for s in families["spine_agent_deliveries"].samples}
    assert delivery_gauges == {"PENDING": 1.0, "DELIVERED": 1.0, "FAILED": 1.0, "CANCELLED": 0.0}
    assert families["spine_agent_disk_free_bytes"].samples[0].value == 50_000 * MIB

    # The gauges follow the ledger at the next scrape.
    ledger.cancel_job(ledger.list_jobs(states=[JobState.QUEUED])[0].id)
    families = {f.name: f for f in text_string_to_metric_families(get(server, "/metrics")[2])}
    jobs = {s.labels["state"]: s.value for s in families["spine_agent_jobs"].samples}
    assert jobs["QUEUED"] == 1.0 and jobs["CANCELLED"] == 1.0
    assert families["spine_agent_queue_depth"].samples[0].value == 1.0
