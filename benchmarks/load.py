"""Loading: ``dicom_io.series.load_series`` against SimpleITK's ``ImageSeriesReader`` on the same files.

Each load runs in a fresh child process (``python -m benchmarks.load LOADER DIR``) that reports its own
wall time and peak RSS (``VmHWM``, see :func:`benchmarks.common.peak_rss_mib`) and its RSS after
imports. Loaders alternate:

* ``load_series``  - ours: a float32 HU volume (what the engine takes), geometry checked;
* ``sitk``         - SimpleITK ``ImageSeriesReader`` (GDCM), the image as it returns it, the file order
  from ``GetGDCMSeriesFileNames``: int32 for the suite's series (int16 stored values, GDCM applies the
  Rescale Intercept of -1024 and widens them), so as large as ours;
* ``sitk+float32`` - the same, then a float32 numpy copy: the like-for-like peer for memory.

The same three on the JPEG-LS and JPEG 2000 copies of the series (``receive.compress_series``): ours
decodes through pydicom (pyjpegls / pylibjpeg-openjpeg), SimpleITK through GDCM (CharLS / OpenJPEG).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks.common import Figure, interleave, median_of, peak_rss_mib, rss_mib, run_child, values_of

LOADERS = ("load_series", "sitk", "sitk+float32")


def child(loader: str, directory: Path) -> dict[str, float | str | list[int]]:
    """Run one loader in this (fresh) process and report time and memory."""
    import numpy as np
    import SimpleITK as sitk

    from dicom_io.series import load_series

    baseline = rss_mib()
    start = time.perf_counter()
    if loader == "load_series":
        volume = load_series(directory, max_instances=100_000)
        shape, nbytes = list(volume.shape), volume.array.nbytes
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(directory)))
        image = reader.Execute()
        if loader == "sitk+float32":
            array = sitk.GetArrayViewFromImage(image).astype(np.float32)
            del image
        else:
            array = sitk.GetArrayViewFromImage(image)
        shape, nbytes = list(array.shape), array.nbytes
    seconds = time.perf_counter() - start
    return {
        "loader": loader,
        "seconds": seconds,
        "baseline_mib": baseline,
        "peak_mib": peak_rss_mib(),
        "array_mib": nbytes / 2**20,
        "shape": shape,
    }


def _runner(loader: str, directory: Path):  # noqa: ANN202
    def run(index: int) -> dict[str, float]:
        r = run_child("benchmarks.load", loader, str(directory))
        above = r["peak_mib"] - r["baseline_mib"]
        return {"seconds": r["seconds"], "peak_mib": r["peak_mib"], "above_imports_mib": above}

    return run


def bench(
    directory: Path, slices: int, runs: int, label: str = "", loaders: tuple[str, ...] = LOADERS
) -> list[Figure]:
    """``label`` names a compressed copy of the series (e.g. "JPEG-LS lossless"); '': uncompressed.
    ``loaders``: ours and the peers to run (``--quick`` leaves ``sitk+float32`` out for the copies)."""
    what = f"{slices} slices" + (f" {label}" if label else "")
    samples = interleave(runs, [(name, _runner(name, directory)) for name in loaders])
    ours = samples["load_series"]
    figures = []
    for peer in [p for p in loaders if p != "load_series"]:
        figures.append(
            Figure(
                section="load",
                name=f"{what}, seconds",
                unit="s",
                ours=median_of(ours, "seconds"),
                peer=median_of(samples[peer], "seconds"),
                peer_name=f"SimpleITK ({peer})",
                better="lower",
                runs=runs,
                goal=1.0,
                ours_runs=values_of(ours, "seconds"),
                peer_runs=values_of(samples[peer], "seconds"),
            )
        )
        figures.append(
            Figure(
                section="load",
                name=f"{what}, peak RSS",
                unit="MiB",
                ours=median_of(ours, "peak_mib"),
                peer=median_of(samples[peer], "peak_mib"),
                peer_name=f"SimpleITK ({peer})",
                better="lower",
                runs=runs,
                goal=1.0 if peer == "sitk+float32" else None,
                note="whole process (imports included); ours is float32, sitk as read (int32 here)"
                if peer == "sitk"
                else "whole process (imports included); both float32",
                ours_runs=values_of(ours, "peak_mib"),
                peer_runs=values_of(samples[peer], "peak_mib"),
            )
        )
    return figures


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], Path(sys.argv[2]))))
