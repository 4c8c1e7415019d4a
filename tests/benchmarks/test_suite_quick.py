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
@pytest.mark.timeout(1500)  # ~4-5 min on the 2-core VM; far longer at nice 15 beside a training job
def test_smoke_run_appends_a_record_with_every_section_and_positive_ratios(tmp_path: Path) -> None:
    require_tool("storescu")
    require_tool("storescp")
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--results-dir", str(results),
         "--workdir", str(tmp_path / "work")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1400,
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
    assert {f["section"] for f in figures} == {"receive", "load", "ledger", "engine", "e2e"}
    assert {f["name"] for f in figures if f["section"] == "receive"} == {
        "12 x 64x64 CT, 1 association",
        "12 x 64x64 CT, 2 associations (2 series)",
        "12 x 64x64 CT JPEG-LS lossless, 1 association",
        "12 x 64x64 CT JPEG 2000 lossless, 1 association",
    }
    for f in figures:
        for key in ("name", "unit", "ours", "peer", "peer_name", "ratio", "runs", "ours_runs"):
            assert key in f, (f.get("name"), key)
        runs = 1 if f["section"] == "e2e" else 3  # e2e: one run per series, the smoke sends one
        assert f["runs"] == runs
        assert len(f["ours_runs"]) == runs
        assert math.isfinite(f["ratio"]) and f["ratio"] > 0, f
    names = {(f["section"], f["peer_name"]) for f in figures}
    assert ("receive", "DCMTK storescp TCP_NODELAY=1") in names
    assert ("receive", "DCMTK storescp TCP_NODELAY=1 +xt") in names  # JPEG-LS preferred
    assert ("receive", "DCMTK storescp TCP_NODELAY=1 +xv") in names  # JPEG 2000 preferred
    assert ("load", "SimpleITK (sitk)") in names
    receive = next(f for f in figures if f["section"] == "receive")
    assert len(receive["peer_runs"]) == 3  # the peer ran as often as ours, in the same run

    # Compressed copies: receive and load of each, against the same peers as the uncompressed series.
    load_names = {f["name"] for f in figures if f["section"] == "load"}
    for label in ("JPEG-LS lossless", "JPEG 2000 lossless"):
        assert f"12 slices {label}, seconds" in load_names
        assert f"12 slices {label}, peak RSS" in load_names

    # End to end: the SR arrived after the last C-STORE response (minus the quiet time, still >= 0), and
    # the whole latency is at least the job's own time plus nothing negative in between.
    e2e = next(f for f in figures if f["section"] == "e2e")
    assert e2e["unit"] == "s" and e2e["peer_runs"] and e2e["ours"] > 0
    assert e2e["ours"] >= e2e["peer"] * 0.9, e2e  # the job's time is part of the latency


def test_compressed_copies_keep_pixels_and_uids_in_the_named_syntax(tmp_path: Path) -> None:
    """The receive/load compressed series are the same instances, losslessly re-encoded."""
    import numpy as np
    from pydicom import dcmread

    from benchmarks.receive import COMPRESSED, compress_series, write_series

    series = write_series(tmp_path / "native", 3, 32)
    for syntax, (uid, _label) in COMPRESSED.items():
        copy = compress_series(series, tmp_path / syntax, syntax)
        assert [p.name for p in copy.files] == [p.name for p in series.files]
        assert copy.nbytes < series.nbytes
        for original, encoded in zip(series.files, copy.files, strict=True):
            a, b = dcmread(original), dcmread(encoded)
            assert b.file_meta.TransferSyntaxUID == uid
            assert b.SOPInstanceUID == a.SOPInstanceUID and b.SeriesInstanceUID == a.SeriesInstanceUID
            assert np.array_equal(a.pixel_array, b.pixel_array)


def test_options_pick_compressed_copies_peers_and_end_to_end_series() -> None:
    from benchmarks.suite import FULL, QUICK, config_of, parse_args

    quick = config_of(parse_args(["--quick"]))
    # --quick is trimmed to fit 5 minutes on the loaded 2-core VM (docs/performance.md)
    assert quick.compressed == ("jpeg-ls", "jpeg2000") and quick.e2e_series == QUICK.e2e_series == 1
    assert quick.engine_runs == 1 and quick.installed_peer is False
    assert quick.compressed_float32_peer is False
    full = config_of(parse_args([]))
    assert full.e2e_series == FULL.e2e_series >= 5  # the issue: median of at least 5 series
    assert full.installed_peer is True and full.engine_runs == 5 and full.compressed_float32_peer
    custom = config_of(parse_args(["--compressed", "none", "--e2e-series", "0", "--runs", "7"]))
    assert custom.compressed == () and custom.e2e_series == 0 and custom.engine_runs == 7
    assert config_of(parse_args(["--compressed", "jpeg2000"])).compressed == ("jpeg2000",)
    with pytest.raises(SystemExit):
        parse_args(["--compressed", "jpeg-xl"])
