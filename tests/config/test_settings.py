from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from config import ConfigError, Settings, example_toml, load_settings, settings_from_mapping


def test_example_parses_to_the_defaults() -> None:
    assert settings_from_mapping(tomllib.loads(example_toml())) == Settings()


def _keys(model: object, prefix: str = "") -> set[str]:
    from pydantic import BaseModel

    keys: set[str] = set()
    assert isinstance(model, BaseModel)
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            keys |= _keys(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_example_mentions_every_key() -> None:
    text = example_toml()
    for key in _keys(Settings()):
        leaf = key.rsplit(".", 1)[-1]
        assert f"{leaf} =" in text or f"[[{leaf}]]" in text, key


#: A destination without TLS, for the cases that add TLS keys to it.
_DEST = {"name": "p", "ae_title": "A", "host": "h", "port": 104}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"dicom": {"port": "abc"}}, "dicom.port = 'abc': expected a valid integer"),
        ({"dicom": {"port": 70000}}, "dicom.port = 70000: expected less than or equal to 65535"),
        ({"dicom": {"ae_title": "X" * 17}}, "dicom.ae_title = 'XXXXXXXXXXXXXXXXX': expected an AE title"),
        ({"dicom": {"prot": 1}}, "dicom.prot: unknown key"),
        ({"engine": {"device": "tpu"}}, "engine.device = 'tpu': expected 'auto', 'cpu' or 'cuda'"),
        (
            {"destinations": [{"name": "p", "ae_title": "A", "host": "h"}]},
            "destinations.0.port: required key",
        ),
        (
            {"destinations": [{**_DEST, "tls": True, "tls_cert_file": "/etc/agent.crt"}]},
            "destinations.0: destination 'p': tls_cert_file and tls_key_file go together",
        ),
        (
            {"destinations": [{**_DEST, "tls_ca_file": "/etc/ca.crt"}]},
            "destinations.0: destination 'p': tls_ca_file set but tls = false; set tls = true",
        ),
        ({"destinations": [{**_DEST, "tls": "sometimes"}]}, "destinations.0.tls = 'sometimes': expected"),
    ],
)
def test_bad_value_gives_one_line_naming_key_value_and_expectation(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(data, origin="agent.toml")
    message = str(info.value)
    assert message.startswith("agent.toml: ")
    assert expected in message
    assert "\n" not in message


def test_duplicate_destination_names_are_refused() -> None:
    dest = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}
    with pytest.raises(ConfigError, match="unique, repeated: pacs"):
        settings_from_mapping({"destinations": [dest, dest]})


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[dicom]\nae_title = "FROMFILE"\nport = 4000\n')
    monkeypatch.setenv("SPINE_AGENT_DICOM__PORT", "5000")
    monkeypatch.setenv("SPINE_AGENT_DICOM__ALLOWED_CALLING_AES", '["PACS1"]')
    cfg = load_settings(path)
    assert cfg.dicom.ae_title == "FROMFILE"
    assert cfg.dicom.port == 5000
    assert cfg.dicom.allowed_calling_aes == ["PACS1"]


def test_bad_environment_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINE_AGENT_HTTP__PORT", "eighty")
    with pytest.raises(ConfigError, match="http.port"):
        load_settings(None)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[dicom\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_config_env_variable_selects_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[http]\nport = 9100\n")
    monkeypatch.setenv("SPINE_AGENT_CONFIG", str(path))
    assert load_settings(None).http.port == 9100


def test_destination_tls_keys() -> None:
    dest = {
        "name": "pacs",
        "ae_title": "PACS",
        "host": "10.0.0.5",
        "port": 2762,
        "tls": True,
        "tls_ca_file": "/etc/spine-agent/tls/pacs-ca.crt",
        "tls_cert_file": "/etc/spine-agent/tls/agent.crt",
        "tls_key_file": "/etc/spine-agent/tls/agent.key",
        "tls_server_name": "pacs.example.org",
    }
    (parsed,) = settings_from_mapping({"destinations": [dest]}).destinations
    assert parsed.tls and parsed.tls_ca_file == Path("/etc/spine-agent/tls/pacs-ca.crt")
    assert parsed.tls_server_name == "pacs.example.org"
    (plain,) = settings_from_mapping({"destinations": [_DEST]}).destinations
    assert not plain.tls and plain.tls_ca_file is None and plain.tls_cert_file is None
