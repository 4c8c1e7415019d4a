"""Peak memory and time of ``dicom_io.series.load_series`` against SimpleITK's ImageSeriesReader.

Writes a synthetic axial CT series (int16, 512x512 by default) and loads it in fresh child processes,
one per loader, each reporting its own peak RSS (``ru_maxrss``) and its RSS after imports:

* ``load_series``   - our loader: float32 HU volume, preallocated, filled slice by slice;
* ``sitk``          - SimpleITK ``ImageSeriesReader`` (GDCM), the image in its stored type (int16);
* ``sitk+float32``  - the same, then a float32 numpy copy (what the engine needs from it).

Usage::

    python benchmarks/bench_load.py --slices 1500          # the 512x512x1500 case of the design
    python benchmarks/bench_load.py --slices 300 --keep DIR
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOADERS = ("load_series", "sitk", "sitk+float32")


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_series(directory: Path, slices: int, size: int) -> None:
    """A synthetic axial series: a bright disc ("body") with noise, 1 mm slices, stored top-down."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2) * 1064  # HU 40 inside, -1024 out
    rng = np.random.default_rng(0)
    noise = rng.integers(-20, 20, size=(size, size))
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = "Bench^Mark", "BENCH"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-size * 0.35, -size * 0.35, 500.0 - k * 1.0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 1.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (np.roll(noise, k, axis=0) + body).astype("<i2").tobytes()
        ds.save_as(directory / f"{uid}.dcm", enforce_file_format=True)


def child(loader: str, directory: Path) -> dict[str, float | str | list[int]]:
    """Run one loader in this (fresh) process and report time and memory."""
    sys.path.insert(0, str(ROOT))
    import SimpleITK as sitk

    from dicom_io.series import load_series

    baseline = rss_mib()
    start = time.perf_counter()
    if loader == "load_series":
        volume = load_series(directory, max_instances=100_000)
        shape, dtype, nbytes = list(volume.shape), str(volume.array.dtype), volume.array.nbytes
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(directory)))
        image = reader.Execute()
        if loader == "sitk+float32":
            array = sitk.GetArrayViewFromImage(image).astype(np.float32)
            del image
        else:
            array = sitk.GetArrayViewFromImage(image)
        shape, dtype, nbytes = list(array.shape), str(array.dtype), array.nbytes
    seconds = time.perf_counter() - start
    return {
        "loader": loader,
        "seconds": seconds,
        "baseline_mib": baseline,
        "peak_mib": peak_rss_mib(),
        "array_mib": nbytes / 2**20,
        "shape": shape,
        "dtype": dtype,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows = columns")
    parser.add_argument("--keep", type=Path, default=None, help="write (or reuse) the series here")
    parser.add_argument("--child", nargs=2, metavar=("LOADER", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return

    directory = args.keep or Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        if not any(directory.glob("*.dcm")):
            start = time.perf_counter()
            write_series(directory, args.slices, args.size)
            seconds = time.perf_counter() - start
            print(f"wrote {args.slices} slices of {args.size}x{args.size} in {seconds:.1f} s")
        on_disk = sum(p.stat().st_size for p in directory.glob("*.dcm")) / 2**20
        print(f"series: {len(list(directory.glob('*.dcm')))} files, {on_disk:.0f} MiB on disk")
        header = ("loader", "time s", "peak RSS MiB", "after imports", "peak - imports", "array MiB")
        print("{:<14} {:>7} {:>13} {:>14} {:>15} {:>10} dtype".format(*header))
        for loader in LOADERS:
            run = subprocess.run(
                [sys.executable, __file__, "--child", loader, str(directory)],
                check=True,
                capture_output=True,
                text=True,
            )
            r = json.loads(run.stdout.strip().splitlines()[-1])
            print(
                f"{r['loader']:<14} {r['seconds']:>7.1f} {r['peak_mib']:>13.0f} {r['baseline_mib']:>14.0f} "
                f"{r['peak_mib'] - r['baseline_mib']:>15.0f} {r['array_mib']:>10.0f} {r['dtype']}"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
