"""The dashboard's echo button: POST /api/destinations/<name>/echo over real HTTP runs a real C-ECHO
(agent.service.dicom_client, as `spine-agent destinations echo`) to a pynetdicom echo SCP on loopback and
to a closed port; the system page shows the result."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from agent.service.dicom_client import destination_echo
from agent.service.service import AgentService
from agent.web.dashboard import Dashboard
from agent.web.http import HealthServer
from config import Destination, Settings, settings_from_mapping
from config.settings import LedgerSettings, StorageSettings
from storage import Ledger
from tests.agent.web.test_dashboard import TOKEN, _IdlePredictor, call
from tests.support import free_port


@pytest.fixture
def echo_scp() -> Iterator[int]:
    """A Verification SCP called ECHOSCP on a free loopback port; yields the port."""
    port = free_port()
    ae = AE(ae_title="ECHOSCP")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    yield port
    server.shutdown()


@pytest.fixture
def settings(tmp_path: Path, ledger_url: str, echo_scp: int) -> Settings:
    (tmp_path / "spool").mkdir()
    return Settings(
        storage=StorageSettings(spool_dir=tmp_path / "spool"),
        ledger=LedgerSettings(url=ledger_url),
        destinations=[
            Destination(name="up", ae_title="ECHOSCP", host="127.0.0.1", port=echo_scp),
            # A held port where nothing listens: the connection is refused.
            Destination(name="down", ae_title="NOBODY", host="127.0.0.1", port=free_port()),
        ],
    )


def _server(settings: Settings, ledger: Ledger, token: str | None) -> HealthServer:
    dashboard = Dashboard(ledger, admin_token=token)
    dashboard.echo_destination = destination_echo(settings, timeout=5)
    server = HealthServer(settings, ledger, model_loaded=lambda: True, port=0, dashboard=dashboard)
    server.start()
    return server


@pytest.fixture
def server(settings: Settings, ledger: Ledger) -> Iterator[HealthServer]:
    http = _server(settings, ledger, TOKEN)
    yield http
    http.stop()


def test_echo_a_destination_from_the_system_page(server: HealthServer, echo_scp: int) -> None:
    page = call(server, "/dashboard/system").body
    assert 'data-action="/api/destinations/up/echo"' in page
    assert 'data-action="/api/destinations/down/echo"' in page

    up = call(server, "/api/destinations/up/echo", "POST", token=TOKEN)
    assert up.status == 200
    data = up.json()
    assert data["ok"] is True and data["status"] == "0x0000" and data["tls"] is False
    assert isinstance(data["round_trip_ms"], float) and data["round_trip_ms"] >= 0
    assert re.fullmatch(rf"up: Success \(0x0000\) ECHOSCP@127\.0\.0\.1:{echo_scp} in \d+ ms", data["message"])

    down = call(server, "/api/destinations/down/echo", "POST", token=TOKEN)
    assert down.status == 200  # the action ran; the echo failed: ok false with the reason
    failed = down.json()
    assert failed["ok"] is False and failed["status"] is None
    assert failed["error"].startswith("C-ECHO NOBODY@127.0.0.1:") and "not established" in failed["error"]
    assert failed["message"] == f"down: FAILED: {failed['error']}"

    after = call(server, "/dashboard/system").body
    assert "up: Success (0x0000)" in after and "down: FAILED: C-ECHO NOBODY@127.0.0.1:" in after
    system = call(server, "/api/system").json()
    assert system["destinations"]["up"]["last_echo"] == data["message"]
    assert system["destinations"]["down"]["last_echo_at"] is not None


def test_echo_needs_the_admin_token_and_a_configured_destination(
    server: HealthServer, settings: Settings, ledger: Ledger
) -> None:
    assert call(server, "/api/destinations/up/echo", "POST").status == 401
    assert call(server, "/api/destinations/up/echo", "POST", token="wrong-token-0123456789").status == 401
    assert call(server, "/api/destinations/up/echo").status == 404  # GET: not an action
    unknown = call(server, "/api/destinations/nowhere/echo", "POST", token=TOKEN)
    assert unknown.status == 404 and "no destination 'nowhere'" in unknown.json()["error"]
    read_only = _server(settings, ledger, None)
    try:
        assert "/echo" not in call(read_only, "/dashboard/system").body  # no button without a token
        assert call(read_only, "/api/destinations/up/echo", "POST", token=TOKEN).status == 403
    finally:
        read_only.stop()


def test_serve_wires_the_echo_button_to_the_destinations(tmp_path: Path, echo_scp: int) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    settings = settings_from_mapping(
        {
            "dicom": {"port": free_port(), "bind_address": "127.0.0.1"},
            "storage": {"spool_dir": str(tmp_path / "spool"), "disk_reserve_mb": 0},
            "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"},
            "http": {"port": free_port(), "admin_token_file": str(token_file)},
            "destinations": [{"name": "pacs", "ae_title": "ECHOSCP", "host": "127.0.0.1", "port": echo_scp}],
        }
    )
    service = AgentService(settings, engine=_IdlePredictor())
    service.start()
    try:
        assert service.http is not None
        reply = call(service.http, "/api/destinations/pacs/echo", "POST", token=TOKEN).json()
        assert reply["ok"] is True and reply["message"].startswith("pacs: Success (0x0000) ECHOSCP@")
    finally:
        service.stop()
