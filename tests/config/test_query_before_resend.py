"""``destinations[].query_before_resend``: true by default, a TOML boolean or a one-line error naming the key
(in ``spine-agent config check`` as at start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, example_toml, settings_from_mapping
from tests.agent.cli.test_cli import run_cli

DEST = {"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104}


def test_it_is_on_unless_set_false() -> None:
    (default,) = settings_from_mapping({"destinations": [DEST]}).destinations
    assert default.query_before_resend is True
    (off,) = settings_from_mapping({"destinations": [{**DEST, "query_before_resend": False}]}).destinations
    assert off.query_before_resend is False
    assert "query_before_resend" in example_toml()


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, "", None])
def test_a_value_that_is_not_a_toml_boolean_is_refused_naming_the_key(value: object) -> None:
    with pytest.raises(
        ConfigError, match=r"destinations\.0\.query_before_resend = .*expected a valid boolean"
    ):
        settings_from_mapping({"destinations": [{**DEST, "query_before_resend": value}]})


def test_config_check_refuses_a_bad_value_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "10.0.0.5"\nport = 104\n'
        'query_before_resend = "sometimes"\n'
    )
    result = run_cli("config", "check", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "destinations.0.query_before_resend = 'sometimes': expected a valid boolean" in result.stderr
    good = tmp_path / "good.toml"
    good.write_text(bad.read_text().replace('"sometimes"', "false"))
    assert run_cli("config", "check", str(good)).returncode == 0
