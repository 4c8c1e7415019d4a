"""The benchmark suite: every figure a ratio against a peer measured in the same run (docs/performance.md).

    .venv/bin/python -m benchmarks            # full: 400-slice series, 5 interleaved runs each
    .venv/bin/python -m benchmarks --quick    # 100-slice series, 64-slice engine volume, 3 runs each
                                              # (engine 1), 1 series end to end, no phantom section
    .venv/bin/python -m benchmarks --sections receive,load --runs 7

Prints a table (median of the runs; ratio = ours / peer) and appends one JSON line to
``benchmarks/results/results.jsonl``: date, machine, CPU count, load average, git commit, the settings
and each figure with its runs. Absolute seconds depend on the machine and its load; the ratios are the
figures.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, Figure, append_record, git_commit, machine, now_iso

SECTIONS = ("receive", "load", "ledger", "engine", "e2e", "phantom")


@dataclass(frozen=True)
class Config:
    runs: int
    slices: int
    size: int
    associations: tuple[int, ...]
    ledger_jobs: int
    ledger_workers: tuple[int, ...]
    engine_slices: int
    phantom_slices: int
    engine_size: int = 512
    #: Compressed copies of the receive/load series (names of ``benchmarks.receive.COMPRESSED``).
    compressed: tuple[str, ...] = ("jpeg-ls", "jpeg2000")
    #: Series sent end to end (0: section skipped), and their slices x size x size phantom.
    e2e_series: int = 5
    e2e_slices: int = 48
    e2e_size: int = 256
    #: Runs of the engine section (each one ``predict`` in a fresh process).
    engine_runs: int = 5
    #: Whether receive also runs storescp as installed (Nagle on; for information, no goal).
    installed_peer: bool = True
    #: Whether the compressed copies are also loaded by SimpleITK + a float32 copy (the memory peer).
    compressed_float32_peer: bool = True


FULL = Config(
    runs=5, slices=400, size=512, associations=(1, 4), ledger_jobs=400, ledger_workers=(1, 2, 4),
    engine_slices=400, phantom_slices=400,
)
QUICK = Config(
    runs=3, slices=100, size=512, associations=(1, 4), ledger_jobs=100, ledger_workers=(1, 2, 4),
    engine_slices=64, phantom_slices=0, e2e_series=1, engine_runs=1, installed_peer=False,
    compressed_float32_peer=False,
)
#: The smallest configuration that exercises every part end to end (the suite's own test).
SMOKE = Config(
    runs=3, slices=12, size=64, associations=(1, 2), ledger_jobs=12, ledger_workers=(1, 2),
    engine_slices=12, phantom_slices=0, engine_size=64, e2e_series=1, e2e_slices=24, e2e_size=128,
    engine_runs=3,
)

UNDER_LOAD = (
    "Absolute seconds and MB/s depend on the machine and on whatever else runs on it; the ratios against "
    "the peer measured in the same run, interleaved, are the figures."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller series, 3 runs each")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--runs", type=int, help="interleaved runs of each contestant (full 5, quick 3)")
    ap.add_argument("--slices", type=int, help="slices of the received/loaded series (full 400, quick 100)")
    ap.add_argument("--size", type=int, help="rows = columns of that series (512)")
    ap.add_argument("--associations", help="comma-separated association counts for receive (1,4)")
    ap.add_argument("--ledger-jobs", type=int, help="jobs queued per ledger run (full 400, quick 100)")
    ap.add_argument("--engine-slices", type=int, help="N of the 512x512xN engine volume (full 400, quick 64)")
    ap.add_argument(
        "--phantom-slices", type=int, help="N of the 512x512xN phantom (full 400; quick: 0, skipped)"
    )
    ap.add_argument(
        "--compressed", help="comma-separated compressed copies for receive/load (jpeg-ls,jpeg2000; none)"
    )
    ap.add_argument("--engine-runs", type=int, help="engine runs (full 5, quick 1)")
    ap.add_argument(
        "--installed-peer", action=argparse.BooleanOptionalAction, default=None,
        help="receive also against storescp as installed, Nagle on (full: yes, quick: no)",
    )
    ap.add_argument("--e2e-series", type=int, help="series sent end to end (full 5, quick 1; 0 skips)")
    ap.add_argument("--results-dir", type=Path, default=RESULTS, help="where results.jsonl is appended to")
    ap.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--note", default="", help="free text stored with the record (e.g. 'machine under load')")
    args = ap.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if args.compressed and args.compressed != "none":
        from benchmarks.receive import COMPRESSED

        bad = set(args.compressed.split(",")) - set(COMPRESSED)
        if bad:
            ap.error(f"unknown compressed syntaxes {sorted(bad)}; choose from {tuple(COMPRESSED)} or none")
    return args


def config_of(args: argparse.Namespace) -> Config:
    base = SMOKE if args.smoke else QUICK if args.quick else FULL
    return Config(
        runs=args.runs or base.runs,
        slices=args.slices or base.slices,
        size=args.size or base.size,
        associations=tuple(int(a) for a in args.associations.split(",")) if args.associations
        else base.associations,
        ledger_jobs=args.ledger_jobs or base.ledger_jobs,
        ledger_workers=base.ledger_workers,
        engine_slices=args.engine_slices if args.engine_slices is not None else base.engine_slices,
        phantom_slices=args.phantom_slices if args.phantom_slices is not None else base.phantom_slices,
        engine_size=base.engine_size,
        compressed=base.compressed if args.compressed is None
        else () if args.compressed == "none" else tuple(args.compressed.split(",")),
        e2e_series=args.e2e_series if args.e2e_series is not None else base.e2e_series,
        e2e_slices=base.e2e_slices,
        e2e_size=base.e2e_size,
        engine_runs=args.engine_runs or args.runs or base.engine_runs,
        installed_peer=base.installed_peer if args.installed_peer is None else args.installed_peer,
        compressed_float32_peer=base.compressed_float32_peer,
    )


def fmt(value: float) -> str:
    if value != value:  # nan
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def print_table(figures: list[Figure], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column, justify in (
        ("section", "left"), ("figure", "left"), ("unit", "left"), ("ours", "right"), ("peer", "right"),
        ("peer is", "left"), ("ours/peer", "right"), ("goal", "right"), ("runs", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for f in figures:
        verdict = {True: " ok", False: " short", None: ""}[f.meets_goal]
        goal = "" if f.goal is None else ("\u2265" if f.better == "higher" else "\u2264") + fmt(f.goal)
        table.add_row(
            f.section, f.name, f.unit, fmt(f.ours), fmt(f.peer), f.peer_name, fmt(f.ratio), goal + verdict,
            str(f.runs),
        )
    Console(width=200).print(table)
    for f in figures:
        if f.note:
            print(f"  {f.section} / {f.name}: {f.note}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = config_of(args)
    sections = [s for s in SECTIONS if s in args.sections.split(",")]
    if cfg.engine_slices <= 0 and "engine" in sections:
        sections.remove("engine")
    if cfg.phantom_slices <= 0 and "phantom" in sections:
        sections.remove("phantom")
    if cfg.e2e_series <= 0 and "e2e" in sections:
        sections.remove("e2e")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spine-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started, t0 = now_iso(), time.perf_counter()
    figures: list[Figure] = []
    timings: dict[str, float] = {}
    try:
        series = None
        compressed: dict[str, Any] = {}
        if "receive" in sections or "load" in sections:
            from benchmarks.receive import compress_series, write_series

            t = time.perf_counter()
            series = write_series(workdir / "series", cfg.slices, cfg.size)
            print(f"series: {len(series.files)} x {cfg.size}x{cfg.size} CT, {series.nbytes / 1e6:.0f} MB "
                  f"(written in {time.perf_counter() - t:.1f} s)", flush=True)
            for syntax in cfg.compressed:
                t = time.perf_counter()
                compressed[syntax] = compress_series(series, workdir / f"series-{syntax}", syntax)
                print(f"series {syntax}: {compressed[syntax].nbytes / 1e6:.0f} MB "
                      f"(encoded in {time.perf_counter() - t:.1f} s)", flush=True)
        for section in sections:
            t = time.perf_counter()
            print(f"[{section}] running ...", flush=True)
            if section == "receive":
                from benchmarks import receive

                assert series is not None
                if shutil.which("storescu") is None or shutil.which("storescp") is None:
                    raise SystemExit("receive needs DCMTK storescu and storescp on PATH")
                figures += receive.bench(
                    series, workdir / "receive", cfg.runs, cfg.associations, cfg.size, cfg.installed_peer
                )
                figures += receive.bench_compressed(
                    compressed, workdir / "receive", cfg.runs, series.nbytes / 1e6
                )
            elif section == "load":
                from benchmarks import load

                assert series is not None
                from benchmarks.receive import COMPRESSED

                figures += load.bench(series.folder, len(series.files), cfg.runs)
                loaders = load.LOADERS if cfg.compressed_float32_peer else ("load_series", "sitk")
                for syntax, copy in compressed.items():
                    figures += load.bench(
                        copy.folder, len(copy.files), cfg.runs, COMPRESSED[syntax][1], loaders
                    )
            elif section == "ledger":
                from benchmarks import ledger_bench

                figures += ledger_bench.bench(workdir, cfg.runs, cfg.ledger_jobs, cfg.ledger_workers)
            elif section == "engine":
                from benchmarks import engine_bench

                figures += engine_bench.bench(workdir, cfg.engine_slices, cfg.engine_runs, cfg.engine_size)
            elif section == "e2e":
                from benchmarks import e2e

                if shutil.which("storescp") is None:
                    raise SystemExit("e2e needs DCMTK storescp on PATH")
                figures += e2e.bench(workdir / "e2e", cfg.e2e_series, cfg.e2e_slices, cfg.e2e_size)
            elif section == "phantom":
                from benchmarks import phantom_bench

                figures += phantom_bench.bench(cfg.phantom_slices, cfg.runs)
            timings[section] = round(time.perf_counter() - t, 1)
            print(f"[{section}] done in {timings[section]:.0f} s", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    record = {
        "date": started,
        "mode": mode,
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", "benchmarks", *sys.argv[1:]]),
        "machine": machine(),
        "git": git_commit(),
        "config": {**cfg.__dict__, "sections": sections},
        "seconds": round(time.perf_counter() - t0, 1),
        "section_seconds": timings,
        "caveat": UNDER_LOAD,
        "note": args.note,
        "figures": [f.record() for f in figures],
    }
    path = append_record(record, args.results_dir)
    m = record["machine"]
    print_table(
        figures,
        f"spine-agent benchmarks ({mode}) {started}, {m['cpu_count']} CPUs, load {m['load_average']}, "
        f"git {record['git']['commit'][:10]}{' (dirty)' if record['git']['dirty'] else ''}",
    )
    print(UNDER_LOAD)
    print(f"record appended to {path} ({record['seconds']:.0f} s in all)")
    return record


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0
