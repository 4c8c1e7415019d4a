"""The systemd units: ``systemd-analyze verify`` accepts them and they keep the hardening we document."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from config.settings import Settings, settings_from_mapping
from tests.conftest import require_tool

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD / "spine-agent.service"
DROP_IN = SYSTEMD / "spine-agent.service.d" / "port-104.conf.example"
EXEC_START = "/opt/spine-agent/venv/bin/spine-agent --config /etc/spine-agent/config.toml serve"
STATE_DIR = "/var/lib/spine-agent"


def directives(path: Path) -> dict[str, list[str]]:
    """``Key -> [values]`` of a unit file (repeated keys kept in order; sections merged)."""
    found: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def _verify(unit_dir: Path, unit_name: str) -> subprocess.CompletedProcess[str]:
    analyze = require_tool("systemd-analyze")
    # SYSTEMD_UNIT_PATH puts our folder first (its drop-ins included); the trailing ":" keeps the
    # system's units so network-online.target and multi-user.target resolve.
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"}
    return subprocess.run(
        [analyze, "verify", str(unit_dir / unit_name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _installable_copy(tmp_path: Path) -> Path:
    """The unit in a temporary folder, ExecStart's binary swapped for an executable that exists here.

    ``systemd-analyze verify`` checks that the binary exists; /opt/spine-agent is not installed on a
    test machine. Only the binary path changes, its arguments stay.
    """
    fake = tmp_path / "bin" / "spine-agent"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    text = UNIT.read_text()
    assert text.count("/opt/spine-agent/venv/bin/spine-agent ") == 1
    (unit_dir / UNIT.name).write_text(text.replace("/opt/spine-agent/venv/bin/spine-agent ", f"{fake} "))
    return unit_dir


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit_dir = _installable_copy(tmp_path)
    result = _verify(unit_dir, UNIT.name)
    # Strict: systemd only warns (exit 0) about unknown keys or misplaced directives; we want none.
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_the_unit_with_the_port_104_drop_in_passes_verify(tmp_path: Path) -> None:
    unit_dir = _installable_copy(tmp_path)
    drop_in_dir = unit_dir / f"{UNIT.name}.d"
    drop_in_dir.mkdir()
    shutil.copy(DROP_IN, drop_in_dir / "port-104.conf")
    result = _verify(unit_dir, UNIT.name)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    assert directives(DROP_IN)["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert directives(DROP_IN)["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]


def test_the_unit_keeps_its_hardening() -> None:
    unit = directives(UNIT)
    expected = {
        "ExecStart": EXEC_START,
        "User": "spine-agent",
        "Group": "spine-agent",
        "Restart": "on-failure",
        "Type": "notify",
        "RestartPreventExitStatus": "78",
        "EnvironmentFile": "-/etc/spine-agent/spine-agent.env",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": STATE_DIR,
        "StateDirectory": "spine-agent",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "KillSignal": "SIGTERM",
    }
    assert {key: unit.get(key, [None])[-1] for key in expected} == expected
    # The stop bound must leave room for the service's own grace period (serve --grace, 20 s).
    (timeout,) = unit["TimeoutStopSec"]
    match = re.fullmatch(r"(\d+)s", timeout)
    assert match is not None and 30 <= int(match.group(1)) <= 300


def test_the_service_config_example_is_valid_and_writes_only_to_the_state_directory() -> None:
    data = tomllib.loads((SYSTEMD / "config.toml").read_text())
    cfg: Settings = settings_from_mapping(data, origin="systemd/config.toml")
    assert str(cfg.storage.spool_dir).startswith(STATE_DIR + "/")
    assert cfg.ledger.url == f"sqlite:///{STATE_DIR}/ledger.sqlite3"


def test_the_env_example_only_names_existing_settings() -> None:
    fields = Settings.model_fields
    names = re.findall(r"SPINE_AGENT_([A-Z]+)__([A-Z_]+)=", (SYSTEMD / "spine-agent.env").read_text())
    assert names
    for section, key in names:
        model = fields[section.lower()].annotation
        assert model is not None and key.lower() in model.model_fields, f"{section}__{key}"  # type: ignore[union-attr]


def test_sysusers_creates_the_service_account(tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSTEMD / "spine-agent.sysusers.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert re.search(rf"^spine-agent:x:\d+:\d+:[^:]*:{STATE_DIR}:\S*nologin$", passwd, re.MULTILINE), passwd


# --- the unit's command line, run as systemd would run it (Type=notify) ----------------------------------


def _unit_command(unit: dict[str, list[str]], bin_dir: Path, config: Path) -> list[str]:
    """ExecStart with the venv's binary and a config path of this test (the arguments stay the unit's)."""
    (exec_start,) = unit["ExecStart"]
    argv = exec_start.split()
    assert argv[0] == "/opt/spine-agent/venv/bin/spine-agent"
    return [str(bin_dir / "spine-agent"), *(str(config) if a == "/etc/spine-agent/config.toml" else a
                                            for a in argv[1:])]


def _service_config(tmp_path: Path, dicom_port: int, http_port: int, weights: Path) -> Path:
    """systemd/config.toml with the state directory moved under tmp_path and free ports."""
    state = tmp_path / "state"
    text = (SYSTEMD / "config.toml").read_text().replace(STATE_DIR, str(state))
    data = tomllib.loads(text)
    data["dicom"]["port"] = dicom_port
    data["http"]["port"] = http_port
    data["destinations"][0]["host"] = "127.0.0.1"
    data["storage"]["disk_reserve_mb"] = 0
    data["engine"]["weights_dir"] = str(weights)
    settings_from_mapping(data, origin="test")  # still valid
    lines = []
    for section, values in data.items():
        tables = values if isinstance(values, list) else [values]
        for table in tables:
            header = f"[[{section}]]" if isinstance(values, list) else f"[{section}]"
            lines.append(header)
            lines += [f"{k} = {_toml(v)}" for k, v in table.items() if not isinstance(v, dict)]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: object) -> str:
    import json

    return json.dumps(value)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_units_command_line_notifies_ready_only_when_listening(tmp_path: Path) -> None:
    import signal
    import socket
    import sys

    from tests.agent.cli.test_engine_cli import write_tiny_weights
    from tests.conftest import free_port

    unit = directives(UNIT)
    assert unit["Type"] == ["notify"]
    dicom_port, http_port = free_port(), free_port()
    config = _service_config(tmp_path, dicom_port, http_port, write_tiny_weights(tmp_path / "weights"))
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(120)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "HOME": str(tmp_path)}
        command = _unit_command(unit, Path(sys.executable).parent, config)
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            message = notify.recv(4096).decode()
            # READY=1 comes after both ports listen (systemd then reports the start as done).
            assert "READY=1" in message.splitlines(), message
            assert _listening(dicom_port) and _listening(http_port)
            proc.send_signal(signal.SIGTERM)
            stopping = notify.recv(4096).decode()
            output, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                print(proc.communicate()[0].decode())
    text = output.decode()
    assert "STOPPING=1" in stopping.splitlines(), text
    assert proc.returncode == 0, text
    assert f"configuration: {config}" in text


def test_a_configuration_error_exits_with_the_status_the_unit_does_not_restart_on(tmp_path: Path) -> None:
    import socket
    import sys

    unit = directives(UNIT)
    (no_restart,) = unit["RestartPreventExitStatus"]
    config = _service_config(tmp_path, 11112, 8080, tmp_path / "no-weights")
    spool = tmp_path / "state" / "spool"
    spool.parent.mkdir(parents=True)
    spool.write_text("a file where the spool folder should be")
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "HOME": str(tmp_path)}
        result = subprocess.run(
            _unit_command(unit, Path(sys.executable).parent, config),
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )
        notify.setblocking(False)
        with pytest.raises(BlockingIOError):
            notify.recv(4096)  # no READY=1
    assert str(result.returncode) == no_restart, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: storage.spool_dir = {str(spool)!r}: is a file, not a folder"), line
