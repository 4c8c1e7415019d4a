"""Time phantom generation: the 512x512x400 target (< 10 s on one core) and the coarse training sizes.

Each case runs in this process with numpy/scipy limited to one thread (set before numpy is imported);
the figure is the median over ``--repeats`` seeds, with the per-stage breakdown of the last run.

Usage::

    python benchmarks/bench_phantom.py                 # 512x512x400 whole spine + 2 mm / 4 mm whole spine
    python benchmarks/bench_phantom.py --repeats 5 --fov abdomen_pelvis
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.phantoms import PhantomSpec, generate_phantom  # noqa: E402

#: The acceptance target of issue 4: a 512x512x400 phantom in under 10 s on one core.
TARGET_S = 10.0


def run_case(name: str, specs: list[PhantomSpec]) -> float:
    times = []
    timings: dict[str, float] = {}
    for spec in specs:
        t0 = time.perf_counter()
        ph = generate_phantom(spec)
        times.append(time.perf_counter() - t0)
        timings = ph.timings
    median = statistics.median(times)
    stages = ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if k != "total")
    shape = "x".join(str(n) for n in specs[-1].shape[::-1])
    spread = f"(min {min(times):.2f}, max {max(times):.2f})"
    print(f"{name:<34} {shape:>13}  median {median:6.2f} s  {spread}  [{stages}]")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="seeds per case (median reported)")
    parser.add_argument("--fov", default="whole", help="field of view of the 512x512x400 case")
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    seeds = range(args.seed, args.seed + args.repeats)
    full = run_case(
        f"{args.fov} 512x512x400", [PhantomSpec.random(s, fov=args.fov, shape=(400, 512, 512)) for s in seeds]
    )
    run_case(
        "whole spine at 2 mm (training)",
        [PhantomSpec.random(s, fov="whole", spacing=(2.0,) * 3) for s in seeds],
    )
    run_case(
        "whole spine at 4 mm (training)",
        [PhantomSpec.random(s, fov="whole", spacing=(4.0,) * 3) for s in seeds],
    )
    verdict = "PASS" if full < TARGET_S else "FAIL"
    print(f"512x512x400: {full:.2f} s median on one core, target < {TARGET_S:.0f} s: {verdict}")
    return 0 if full < TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
