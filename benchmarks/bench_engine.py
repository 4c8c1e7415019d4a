"""Engine speed and memory on CPU/GPU.

    PYTHONPATH=. python benchmarks/bench_engine.py                      # phantoms at native resolution
    PYTHONPATH=. python benchmarks/bench_engine.py --big                # + a 512x512x1500 series (memory)

Reports seconds per stage and the process's peak resident memory (ru_maxrss) after each case.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch

from dicom_io.volume import Volume, affine_from_geometry
from inference.engine.engine import Engine
from inference.phantoms import generate_phantom


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def big_volume(slices: int) -> Volume:
    """A 512x512xN series: a phantom's whole spine at 0.8 mm in-plane, tiled in z (values only matter
    for timing); built in place as float32 to keep the benchmark's own footprint at one volume."""
    ph = generate_phantom(seed=7, fov="whole", spacing=(0.8, 0.8, 0.8), shape=(64, 512, 512))
    arr = np.empty((slices, 512, 512), np.float32)
    for k0 in range(0, slices, 64):
        n = min(64, slices - k0)
        arr[k0:k0 + n] = ph.volume.array[:n]
    aff = affine_from_geometry([-205.0, -205.0, -600.0], np.eye(3), [0.8, 0.8, 0.8])
    return Volume(arr, aff)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--fov", nargs="*", default=["lumbar", "whole"])
    ap.add_argument("--seed", type=int, default=600_000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--big", action="store_true", help="also run a 512x512x1500 series")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine.from_weights(args.weights)
    print(f"engine {engine.plan.version} on {engine.device}, torch threads {torch.get_num_threads()}")
    for n, fov in enumerate(args.fov):
        vol = generate_phantom(seed=args.seed + n, fov=fov).volume
        t0 = time.perf_counter()
        res = engine.predict(vol)
        total = time.perf_counter() - t0
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in res.timings.items())
        print(f"{fov:>8} {vol.shape}: {total:.2f} s ({stages}); {len(res.landmarks)} landmarks; "
              f"peak RSS {peak_rss_mib():.0f} MiB")
    if args.big:
        vol = big_volume(1500)
        before = peak_rss_mib()
        t0 = time.perf_counter()
        res = engine.predict(vol)
        total = time.perf_counter() - t0
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in res.timings.items())
        print(f"512x512x1500 ({vol.array.nbytes / 2**20:.0f} MiB float32): {total:.2f} s ({stages}); "
              f"peak RSS {peak_rss_mib():.0f} MiB (was {before:.0f} MiB with the volume loaded)")


if __name__ == "__main__":
    main()
