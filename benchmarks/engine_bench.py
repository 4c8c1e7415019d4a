"""Engine: per-stage seconds and peak RSS on CPU for one 512x512xN phantom volume.

The volume is a lumbar phantom from ``inference.phantoms`` rendered at 512x512xN (made once, saved to
``.npy``); each run is a fresh child process (``python -m benchmarks.engine_bench VOLUME.npz``) that loads
it, builds ``Engine.from_weights()`` on CPU and predicts once, reporting the engine's stage timings, the
whole ``predict`` time and the process's peak RSS.

There is no external peer for the engine, so its figures are ratios against the goal of issue 14:
60 s and 4 GiB for 512x512x400 on 2 cores. The goal is not scaled for other N (the engine's time follows
the body length covered, which the phantom keeps, more than the slice count); the table names the N.
``--smoke`` uses a small synthetic volume instead (air around a 40 HU disc: stage 1 finds nothing, so it
times engine start-up and the sliding window's air test only).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks.common import Figure, median_of, peak_rss_mib, rss_mib, run_child, values_of

GOAL_S_400 = 60.0
GOAL_MIB = 4096.0


def make_volume(path: Path, slices: int, size: int = 512, seed: int = 600_000) -> Path:
    import numpy as np

    if size == 512:
        from inference.phantoms import generate_phantom

        ph = generate_phantom(seed=seed, fov="lumbar", shape=(slices, 512, 512))
        array, affine = ph.volume.array.astype(np.float32, copy=False), ph.volume.affine
    else:
        yy, xx = np.mgrid[:size, :size]
        disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
        array = np.where(disc, 40.0, -1000.0).astype(np.float32)[None].repeat(slices, axis=0)
        affine = np.diag([0.8, 0.8, 1.0, 1.0])
    np.savez(path, array=array, affine=affine)
    return path


def child(path: Path) -> dict[str, object]:
    import numpy as np
    import torch

    from dicom_io.volume import Volume
    from inference.engine.engine import Engine

    engine = Engine.from_weights(device="cpu")
    with np.load(path) as data:
        volume = Volume(data["array"], data["affine"])
    baseline = rss_mib()
    start = time.perf_counter()
    result = engine.predict(volume)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        **{f"{k}_s": float(v) for k, v in result.timings.items()},
        "peak_mib": peak_rss_mib(),
        "baseline_mib": baseline,
        "volume_mib": volume.array.nbytes / 2**20,
        "landmarks": len(result.landmarks),
        "threads": torch.get_num_threads(),
        "version": engine.plan.version,
    }


def bench(workdir: Path, slices: int, runs: int, size: int = 512) -> list[Figure]:
    path = make_volume(workdir / f"engine-{slices}.npz", slices, size)
    samples = [run_child("benchmarks.engine_bench", str(path)) for _ in range(runs)]
    path.unlink(missing_ok=True)
    goal_s = GOAL_S_400
    prorated = "" if slices == 400 else " (set for N=400)"
    shape = f"{size}x{size}x{slices}" + ("" if size == 512 else " synthetic")
    stages = [k for k in samples[0] if k.endswith("_s") and k != "seconds"]
    figures = [
        Figure(
            section="engine",
            name=f"{shape} CPU, predict",
            unit="s",
            ours=median_of(samples, "seconds"),
            peer=goal_s,
            peer_name=f"goal {goal_s:.1f} s{prorated}",
            better="lower",
            runs=runs,
            goal=1.0,
            note="no external peer: ratio against the goal; "
            + ", ".join(f"{k[:-2]} {median_of(samples, k):.1f} s" for k in stages)
            + f"; {samples[0]['landmarks']} landmarks, {samples[0]['threads']} torch threads",
            ours_runs=values_of(samples, "seconds"),
        )
    ]
    for stage in stages:
        figures.append(
            Figure(
                section="engine",
                name=f"{shape} CPU, {stage[:-2]}",
                unit="s",
                ours=median_of(samples, stage),
                peer=goal_s,
                peer_name=f"goal {goal_s:.1f} s (whole predict)",
                better="lower",
                runs=runs,
                note="share of the whole-predict goal",
                ours_runs=values_of(samples, stage),
            )
        )
    figures.append(
        Figure(
            section="engine",
            name=f"{shape} CPU, peak RSS",
            unit="MiB",
            ours=median_of(samples, "peak_mib"),
            peer=GOAL_MIB,
            peer_name="goal 4096 MiB",
            better="lower",
            runs=runs,
            goal=1.0,
            note=f"whole process, volume {samples[0]['volume_mib']:.0f} MiB float32 included",
            ours_runs=values_of(samples, "peak_mib"),
        )
    )
    return figures


if __name__ == "__main__":
    print(json.dumps(child(Path(sys.argv[1]))))
