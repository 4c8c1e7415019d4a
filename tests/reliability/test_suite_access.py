"""Access: who may associate (calling AE, called AE, host), DICOM TLS with a client certificate required,
and what the INFO log says about it all (no patient data, no full UIDs, no secrets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from storage import JobState
from tests.agent.service.conftest import PATIENT
from tests.reliability.suite_support import (
    SuiteAgent,
    make_agent,
    make_series,
    storescu,
    wait_for,
    write_report,
)
from tests.support_tls import Pki, pki  # noqa: F401  (fixture: test CA, server and client certificates)

pytestmark = pytest.mark.integration


def _tls(pki: Path, *, cert: bool = True) -> list[str]:  # noqa: F811
    ca = ["+cf", str(pki / "ca.crt")]
    return ["+tls", str(pki / "client.key"), str(pki / "client.crt"), *ca] if cert else ["+tla", *ca]


def _leaks(agent: SuiteAgent, secrets: list[str]) -> list[str]:
    """INFO-and-above log lines holding any of ``secrets`` (lines that are not JSON count as leaks)."""
    out = []
    for record in agent.log_records():
        if "raw" in record:
            text, level = record["raw"], "RAW"
        else:
            text, level = json.dumps(record), str(record.get("level"))
        if level == "DEBUG":
            continue
        out += [f"{level}: {s[:24]}... in {text[:160]}" for s in secrets if s and s in text]
    return out


def test_access_control_and_tls_against_serve(tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    agent = make_agent(
        tmp_path / "tls-agent",
        dicom={
            "allowed_calling_aes": ["STORESCU"],
            "tls": {
                "enabled": True,
                "certificate": str(pki.folder / "server.crt"),
                "private_key": str(pki.folder / "server.key"),
                "client_ca": str(pki.folder / "ca.crt"),
            },
        },
        engine_delay_s=0.0,
    )
    hosts = make_agent(tmp_path / "hosts-agent", dicom={"allowed_hosts": ["192.0.2.7"]}, engine_delay_s=0.0)
    series = make_series(tmp_path / "series", 1, slices=10, seed=700)[0]
    rows: list[dict[str, Any]] = []
    agent.start()
    hosts.start()
    try:

        def attempt(name: str, target: SuiteAgent, expect_ok: bool, **kw: Any) -> None:
            run = storescu(target.dicom_port, series.files[:2] if not expect_ok else series.files, **kw)
            code = run.wait(timeout_s=60)
            acked = run.acknowledged()
            ok = code == 0 and len(acked) == (len(series.files) if expect_ok else 2)
            got = "accepted" if acked else "refused"
            expected = "accepted" if expect_ok else "refused"
            rows.append({"fault": name, "expected": expected, "got": got, "instances_stored": len(acked)})
            if expect_ok:
                assert ok, run.output[-1500:]
            else:
                assert acked == [] and code != 0, (name, run.output[-1500:])

        attempt("plain connection, TLS required", agent, False)
        attempt("TLS without a client certificate", agent, False, extra=_tls(pki.folder, cert=False))
        attempt("unknown calling AE (TLS ok)", agent, False, calling_ae="INTRUDER", extra=_tls(pki.folder))
        attempt("wrong called AE (TLS ok)", agent, False, called_ae="NOTTHEAGENT", extra=_tls(pki.folder))
        attempt("unlisted host", hosts, False)
        attempt("TLS with the client certificate", agent, True, extra=_tls(pki.folder))

        ledger = agent.ledger()
        wait_for(
            lambda: [j.state for j in ledger.list_jobs()] == [JobState.SUCCEEDED], 60, 0.5, what="the job"
        )
        ledger.close()
        assert agent.alive and hosts.alive
        text = agent.log_text() + hosts.log_text()
        for reason in ("calling AE 'INTRUDER'", "called AE 'NOTTHEAGENT'", "not in dicom.allowed_hosts"):
            assert reason in text, f"no log line for the refusal ({reason})"
        secrets = [
            *(str(v) for v in PATIENT.values() if len(str(v)) >= 5),  # not "O" (sex) or "7" (study ID)
            series.study_uid,
            series.series_uid,
            series.frame_of_reference_uid,
            *series.sop_uids,
            *(line for line in (pki.folder / "server.key").read_text().splitlines() if "-----" not in line),
        ]
        leaks = _leaks(agent, secrets) + _leaks(hosts, secrets)
        assert leaks == []
        rows.append({"fault": "patient data, full UIDs or key material in INFO+ logs", "expected": "none",
                     "got": f"{len(leaks)} lines", "instances_stored": 0})  # fmt: skip
        write_report("access", rows)
    finally:
        agent.kill()
        hosts.kill()
