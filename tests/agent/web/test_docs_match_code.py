"""docs/operations.md says what the code does: metric names and labels, /readyz checks, job and delivery
states. A rename in either place fails here."""

from __future__ import annotations

import re
from pathlib import Path

from agent.web import metrics
from storage import DeliveryState, JobState

OPERATIONS = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text(encoding="utf-8")


def _table_rows(first_header: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table whose header row starts with ``| first_header |``."""
    lines = OPERATIONS.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _exposed() -> dict[str, tuple[str, set[str]]]:
    """Exposed name -> (type, label names), as a scrape shows them (counters with _total). Read from the
    collectors themselves, so no labelled child is created (other tests scrape the same registry)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for collector in metrics.REGISTRY._collector_to_names:  # noqa: SLF001 - the registry's own list
        kind, name = collector._type, collector._name  # type: ignore[attr-defined]  # noqa: SLF001
        found[f"{name}_total" if kind == "counter" else name] = (kind, set(collector._labelnames))  # type: ignore[attr-defined]  # noqa: SLF001
    return found


def test_every_documented_metric_is_exposed_with_its_labels_and_every_exposed_one_is_documented() -> None:
    exposed = _exposed()
    documented = {}
    for name, kind, labels, _meaning in _table_rows("metric"):
        label_names = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", labels)))
        documented[name.strip("`")] = (kind.split()[0], label_names)
    assert set(documented) == set(exposed), (set(documented) ^ set(exposed))
    for name, (kind, labels) in documented.items():
        assert exposed[name][0] == kind, name
        assert exposed[name][1] == labels, (name, exposed[name][1], labels)


def test_every_state_has_a_row_saying_what_to_do() -> None:
    job_rows = {row[0].strip("`") for row in _table_rows("job state")}
    delivery_rows = {row[0].strip("`") for row in _table_rows("delivery state")}
    assert job_rows == {s.value for s in JobState}
    assert delivery_rows == {s.value for s in DeliveryState}


def test_the_readyz_row_names_every_check_the_service_runs() -> None:
    (row,) = [r for r in _table_rows("endpoint") if r[0] == "`GET /readyz`"]
    service = (Path(__file__).resolve().parents[3] / "agent" / "service" / "service.py").read_text()
    http = (Path(__file__).resolve().parents[3] / "agent" / "web" / "http.py").read_text()
    checks = set(re.findall(r'^\s+"(\w+)": self\.check_\w+\(\)', http, re.MULTILINE))
    checks |= set(re.findall(r'"(\w+)": self\._check_\w+', service))
    assert checks >= {"ledger", "spool", "model", "disk", "scp", "worker"}
    listed = row[1].split("with the checks ", 1)[1].split(". A change", 1)[0]
    named = set(re.findall(r"`(\w+)` \(", listed))
    assert named == checks
