"""Start-up that fails fast with one line naming the key, and commands that do not invent a ledger."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli.state import config_error_line
from agent.service.scp import StorageSCP
from config import settings_from_mapping
from storage import Ledger
from storage.spool import Spool
from tests.agent.cli.test_cli import run_cli
from tests.conftest import free_port


def _config(tmp_path: Path, extra: str = "", *, ledger: str | None = None, spool: str | None = None) -> Path:
    path = tmp_path / "agent.toml"
    ledger = ledger or f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    spool = spool or str(tmp_path / "spool")
    storage = f'[storage]\nspool_dir = "{spool}"\ndisk_reserve_mb = 0\n'
    path.write_text(f'[ledger]\nurl = "{ledger}"\n' + storage + extra)
    return path


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize(
    ("ledger", "spool", "expected"),
    [
        ("sqlite:/tmp/x", None, "ledger.url = 'sqlite:/tmp/x': expected sqlite:///"),
        (None, "{FILE}", "storage.spool_dir = '{FILE}': is a file, not a folder"),
        ("sqlite:///{FILE}/ledger.sqlite3", None, "ledger.url folder = '{FILE}': is a file, not a folder"),
        ("sqlite:///{FILE}/sub/ledger.sqlite3", None, "cannot be created ({FILE} is a file)"),
    ],
)
def test_config_check_and_serve_refuse_the_same_thing_with_one_line(
    tmp_path: Path, ledger: str | None, spool: str | None, expected: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    fill = {"FILE": str(blocker)}
    config = _config(
        tmp_path,
        f"[dicom]\nport = {free_port()}\n[http]\nport = {free_port()}\n",
        ledger=ledger.format(**fill) if ledger else None,
        spool=spool.format(**fill) if spool else None,
    )
    check = run_cli("config", "check", str(config))
    assert check.returncode == 2 and expected.format(**fill) in _one_error_line(check.stderr)
    started = time.monotonic()
    serve = run_cli("serve", config=config)
    assert serve.returncode == 78 and expected.format(**fill) in _one_error_line(serve.stderr), serve.stderr
    assert time.monotonic() - started < 60
    assert not blocker.is_dir()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("key", ["http.port", "dicom.port"])
def test_serve_fails_on_a_busy_port_before_loading_the_engine(
    tmp_path: Path, busy_port: int, key: str
) -> None:
    ports = {"http.port": free_port(), "dicom.port": free_port(), key: busy_port}
    config = _config(
        tmp_path,
        f'[dicom]\nbind_address = "127.0.0.1"\nport = {ports["dicom.port"]}\n'
        f'[http]\nport = {ports["http.port"]}\n',
    )
    check = run_cli("config", "check", str(config))
    warning = f"warning: {key} = {busy_port}: 127.0.0.1:{busy_port} is in use"
    assert check.returncode == 0 and warning in check.stderr
    serve = run_cli("serve", config=config)
    line = _last(serve)
    assert serve.returncode == 2 and line == (
        f"error: {key}: cannot listen on 127.0.0.1:{busy_port}: Address already in use"
    ), serve.stderr
    assert "engine: loading" not in serve.stderr  # the ports come first


def _last(result: object) -> str:
    """The agent's last line (the log lines before it are the start-up INFO lines)."""
    return str(getattr(result, "stderr", "")).strip().splitlines()[-1]


def test_serve_logs_what_it_loaded_in_one_line_each(tmp_path: Path, busy_port: int) -> None:
    config = _config(
        tmp_path,
        f'[dicom]\nport = {free_port()}\n[http]\nport = {busy_port}\n'
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4242\n',
        ledger="postgresql+psycopg://spine:s3cret@127.0.0.1:1/spine",
    )
    serve = run_cli("serve", config=config)  # stops at the busy HTTP port, after logging what it read
    assert f"configuration: {config}" in serve.stderr
    assert "destination pacs: ORTHANC@127.0.0.1:4242" in serve.stderr
    assert "ledger: postgresql+psycopg://spine:***@127.0.0.1:1/spine" in serve.stderr
    assert "s3cret" not in serve.stderr


def test_commands_that_read_the_ledger_refuse_to_invent_one(tmp_path: Path) -> None:
    config = _config(tmp_path)
    for args in (["jobs", "list"], ["deliveries", "list"], ["jobs", "show", "1"]):
        result = run_cli(*args, config=config)
        assert result.returncode == 2, result.stdout
        line = _one_error_line(result.stderr)
        assert f"no ledger at {tmp_path / 'ledger.sqlite3'}" in line and str(config) in line
    assert not (tmp_path / "ledger.sqlite3").exists()
    # db upgrade creates it; then the same commands work
    assert run_cli("db", "upgrade", config=config).returncode == 0
    assert run_cli("jobs", "list", config=config).returncode == 0


@pytest.fixture
def our_scp(tmp_path: Path) -> Iterator[StorageSCP]:
    settings = settings_from_mapping(
        {
            "dicom": {"port": free_port(), "bind_address": "127.0.0.1", "allowed_calling_aes": ["PACS"]},
            "storage": {"spool_dir": str(tmp_path / "scp-spool"), "disk_reserve_mb": 0},
            "ledger": {"url": f"sqlite:///{tmp_path / 'scp.sqlite3'}"},
        }
    )
    ledger = Ledger(settings.ledger.url)
    ledger.upgrade()
    scp = StorageSCP(settings, ledger, spool=Spool(settings.storage.spool_dir))
    scp.start()
    yield scp
    scp.stop()
    ledger.close()


def test_echo_says_why_it_was_rejected_and_echoes_this_agent_as_an_allowed_pacs(
    tmp_path: Path, our_scp: StorageSCP
) -> None:
    port = our_scp.port
    rejected = run_cli("echo", "127.0.0.1", str(port), "--called-ae", "SPINEAGENT", "--timeout", "5")
    line = _one_error_line(rejected.stderr)
    assert rejected.returncode == 2
    assert "Calling AE title not recognised" in line and "--calling-ae" in line, line
    config = tmp_path / "echo.toml"
    config.write_text(f'[dicom]\nport = {port}\nbind_address = "127.0.0.1"\nallowed_calling_aes = ["PACS"]\n')
    ok = run_cli("echo", config=config)
    success = f"C-ECHO SPINEAGENT@127.0.0.1:{port} as PACS: Success"
    assert ok.returncode == 0 and success in ok.stdout, ok.stderr


def test_destinations_echo_calls_each_destination_as_the_sender_does(
    tmp_path: Path, our_scp: StorageSCP
) -> None:
    port = our_scp.port
    config = tmp_path / "dest.toml"
    destinations = (
        f'[[destinations]]\nname = "agent"\nae_title = "SPINEAGENT"\nhost = "127.0.0.1"\nport = {port}\n'
        f'[[destinations]]\nname = "down"\nae_title = "NOBODY"\nhost = "127.0.0.1"\nport = {free_port()}\n'
    )
    config.write_text('[delivery]\ncalling_ae_title = "PACS"\n' + destinations)
    one = run_cli("destinations", "echo", "agent", "--timeout", "5", config=config)
    assert one.returncode == 0, one.stdout + one.stderr
    success = rf"agent: Success \(0x0000\) SPINEAGENT@127\.0\.0\.1:{port} in \d+ ms"
    assert re.fullmatch(success, one.stdout.strip()), one.stdout
    both = run_cli("destinations", "echo", "--timeout", "5", config=config)
    assert both.returncode == 1
    assert "agent: Success" in both.stdout and "down: FAILED: C-ECHO NOBODY@127.0.0.1:" in both.stdout
    unknown = run_cli("destinations", "echo", "nope", config=config)
    assert unknown.returncode == 2 and "no destination 'nope'" in _one_error_line(unknown.stderr)
    assert "configured: agent, down" in unknown.stderr


def test_a_bad_value_from_the_environment_is_named_as_such(tmp_path: Path) -> None:
    """Walked on a booted Debian 12 (issue 17): SPINE_AGENT_ENGINE__DEVICE=gpu in the unit's
    spine-agent.env made serve say "config.toml: engine.device = 'gpu'", a value the file does not hold."""
    config = _config(tmp_path, f"[dicom]\nport = {free_port()}\n[http]\nport = {free_port()}\n")
    env = {"SPINE_AGENT_ENGINE__DEVICE": "gpu"}
    said = "engine.device = 'gpu': expected 'auto', 'cpu' or 'cuda' (set by the environment variable "
    check = run_cli("config", "check", str(config), env=env)
    assert check.returncode == 2 and f"{said}SPINE_AGENT_ENGINE__DEVICE" in _one_error_line(check.stderr)
    serve = run_cli("serve", config=config, env=env)
    assert serve.returncode == 78 and f"{said}SPINE_AGENT_ENGINE__DEVICE" in _one_error_line(serve.stderr)
    spool = tmp_path / "a-file"
    spool.write_text("not a folder")
    check = run_cli("config", "check", str(config), env={"SPINE_AGENT_STORAGE__SPOOL_DIR": str(spool)})
    said = "(set by the environment variable SPINE_AGENT_STORAGE__SPOOL_DIR, which overrides the file)"
    assert _one_error_line(check.stderr).endswith(said)


def test_a_bad_value_from_the_file_is_not_blamed_on_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    message = "/etc/spine-agent/config.toml: engine.device = 'gpu': expected 'auto', 'cpu' or 'cuda'"
    monkeypatch.setenv("SPINE_AGENT_ENGINE__WEIGHTS_DIR", "/opt/weights")
    monkeypatch.setenv("SPINE_AGENT_DICOM__PORT", "11112")
    monkeypatch.setenv("SPINE_AGENT_CONFIG", "/etc/spine-agent/config.toml")
    monkeypatch.delenv("SPINE_AGENT_ENGINE__DEVICE", raising=False)
    assert config_error_line(message) == message
    monkeypatch.setenv("SPINE_AGENT_ENGINE__DEVICE", "gpu")
    said = "(set by the environment variable SPINE_AGENT_ENGINE__DEVICE, which overrides the file)"
    assert config_error_line(message).endswith(said)
