"""Phantom generation: a whole-spine 512x512xN phantom on one core, against the goal of issue 4.

Each run is a fresh child process (``python -m benchmarks.phantom_bench SEED SLICES``) with numpy/scipy
held to one thread (set before numpy is imported), making one phantom from its own seed. The goal is
10 s for 512x512x400 on one core, not scaled for other N (most of the time does not follow the slice
count); there is no external peer.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from benchmarks.common import Figure, median_of, peak_rss_mib, run_child, values_of  # noqa: E402

GOAL_S_400 = 10.0


def child(seed: int, slices: int) -> dict[str, float]:
    from inference.phantoms import PhantomSpec, generate_phantom

    spec = PhantomSpec.random(seed, fov="whole", shape=(slices, 512, 512))
    start = time.perf_counter()
    generate_phantom(spec)
    return {"seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib()}


def bench(slices: int, runs: int, seed: int = 100) -> list[Figure]:
    samples = [run_child("benchmarks.phantom_bench", str(seed + n), str(slices)) for n in range(runs)]
    goal = GOAL_S_400
    prorated = "" if slices == 400 else " (set for N=400)"
    return [
        Figure(
            section="phantom",
            name=f"whole spine 512x512x{slices}, one core",
            unit="s",
            ours=median_of(samples, "seconds"),
            peer=goal,
            peer_name=f"goal {goal:.1f} s{prorated}",
            better="lower",
            runs=runs,
            goal=1.0,
            note=f"no external peer: ratio against the goal; {runs} seeds; "
            f"peak RSS {median_of(samples, 'peak_mib'):.0f} MiB",
            ours_runs=values_of(samples, "seconds"),
        )
    ]


if __name__ == "__main__":
    print(json.dumps(child(int(sys.argv[1]), int(sys.argv[2]))))
