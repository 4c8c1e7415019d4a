"""The benchmark suite (``python -m benchmarks``, docs/performance.md): its smallest configuration end to end,
and the bookkeeping every figure relies on (interleaving, ratios, goals)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import Figure, interleave
from tests.support import require_tool

ROOT = Path(__file__).resolve().parents[2]


def test_contestants_alternate_and_ratios_follow_the_better_direction() -> None:
    calls: list[tuple[str, int]] = []

    def contestant(name: str):  # noqa: ANN202
        def run(index: int) -> dict[str, float]:
            calls.append((name, index))
            return {"x": float(index)}

        return run

    samples = interleave(3, [("a", contestant("a")), ("b", contestant("b"))])
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert [s["x"] for s in samples["b"]] == [0.0, 1.0, 2.0]

    faster = Figure("receive", "x", "MB/s", 120.0, 100.0, "p", better="higher", runs=3, goal=1.0)
    slower = Figure("load", "x", "s", 2.0, 1.0, "p", better="lower", runs=3, goal=1.0)
    assert faster.ratio == pytest.approx(1.2) and faster.meets_goal is True
    assert slower.ratio == pytest.approx(2.0) and slower.meets_goal is False
    record = slower.record()
    assert record["ratio"] == pytest.approx(2.0) and record["meets_goal"] is False


@pytest.mark.slow
def test_smoke_run_appends_a_record_with_every_section_and_positive_ratios(tmp_path: Path) -> None:
    require_tool("storescu")
    require_tool("storescp")
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--results-dir", str(results),
         "--workdir", str(tmp_path / "work")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ours/peer" in done.stdout  # the table

    lines = (results / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    for key in ("date", "mode", "command", "machine", "git", "config", "caveat", "figures", "seconds"):
        assert key in record, key
    assert record["mode"] == "smoke"
    assert record["machine"]["cpu_count"] >= 1
    assert len(record["git"]["commit"]) in (40, len("unknown"))

    figures = record["figures"]
    assert {f["section"] for f in figures} == {"receive", "load", "ledger", "engine"}
    assert {f["name"] for f in figures if f["section"] == "receive"} == {
        "12 x 64x64 CT, 1 association",
        "12 x 64x64 CT, 2 associations (2 series)",
    }
    for f in figures:
        for key in ("name", "unit", "ours", "peer", "peer_name", "ratio", "runs", "ours_runs"):
            assert key in f, (f.get("name"), key)
        assert f["runs"] == 3
        assert len(f["ours_runs"]) == 3
        assert math.isfinite(f["ratio"]) and f["ratio"] > 0, f
    names = {(f["section"], f["peer_name"]) for f in figures}
    assert ("receive", "DCMTK storescp TCP_NODELAY=1") in names
    assert ("load", "SimpleITK (sitk)") in names
    receive = next(f for f in figures if f["section"] == "receive")
    assert len(receive["peer_runs"]) == 3  # the peer ran as often as ours, in the same run
