"""``spine-agent jobs list`` with ``http.show_patient_data``: Accession Number and Series Description from
the spooled headers instead of the digest; with the option off (the default), neither appears."""

from __future__ import annotations

import json
from pathlib import Path

from storage import Ledger
from tests.agent.cli.test_cli import run_cli
from tests.agent.web.test_dashboard_results import ACCESSION, DESCRIPTION, SECRETS, build


def _config(tmp_path: Path, ledger: Ledger, show: bool | None) -> Path:
    path = tmp_path / f"agent-{show}.toml"
    text = f'[ledger]\nurl = "{ledger.url}"\n[storage]\nspool_dir = "{tmp_path / "spool"}"\n'
    if show is not None:
        text += f"[http]\nshow_patient_data = {str(show).lower()}\n"
    path.write_text(text)
    return path


def test_jobs_list_shows_patient_data_only_when_enabled(tmp_path: Path, ledger: Ledger) -> None:
    build(ledger, tmp_path / "spool")
    narrow = {"COLUMNS": "80"}
    for show in (None, False):
        config = _config(tmp_path, ledger, show)
        for args in (["jobs", "list"], ["jobs", "list", "--json"]):
            result = run_cli(*args, config=config, env=narrow)
            assert result.returncode == 0, result.stderr
            for secret in SECRETS:
                assert secret not in result.stdout, (show, args, secret)
    config = _config(tmp_path, ledger, True)
    table = run_cli("jobs", "list", config=config, env=narrow)
    assert table.returncode == 0, table.stderr
    assert table.stdout.count(ACCESSION) == 3 and "accession number · series description" in table.stdout
    assert not [line for line in table.stdout.splitlines() if len(line) > 80]
    rows = json.loads(run_cli("jobs", "list", "--json", config=config).stdout)
    assert {(r["accession_number"], r["series_description"]) for r in rows} == {(ACCESSION, DESCRIPTION)}
