"""Figures for docs/engine.md: real VerSe CT beside phantoms in the same window, and the engine's points
on the real scan. ``python benchmarks/engine_figures.py [--weights DIR] [--out docs/images]``.

The real scan is sub-verse012 from ../shared/data/real (VerSe'19, CC BY-SA 4.0).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from inference.engine.engine import Engine  # noqa: E402
from inference.engine.resample import Grid, resample  # noqa: E402
from inference.phantoms import generate_phantom  # noqa: E402
from inference.training.augment import random_appearance  # noqa: E402
from inference.training.verse import read_verse_subject  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "verse"
WINDOW = (-400.0, 1000.0)


def sagittal(volume_array: np.ndarray, affine: np.ndarray, centre_x: float, lo: np.ndarray, hi: np.ndarray,
             spacing: float = 1.0) -> tuple[np.ndarray, Grid]:
    """A world-aligned sagittal plane at LPS x = centre_x covering y, z in [lo, hi] (rows: z up)."""
    ny = int((hi[1] - lo[1]) / spacing) + 1
    nz = int((hi[2] - lo[2]) / spacing) + 1
    aff = np.eye(4)
    aff[:3, :3] *= spacing
    aff[:3, 3] = [centre_x, lo[1], lo[2]]
    grid = Grid((nz, ny, 1), aff)
    img = resample(volume_array, affine, grid, fill=-1024.0)[:, :, 0]
    return img, grid


def real_subject():  # type: ignore[no-untyped-def]
    ct = REAL / "rawdata/sub-verse012/sub-verse012_ct.nii.gz"
    msk = REAL / "derivatives/sub-verse012/sub-verse012_seg-vert_msk.nii.gz"
    ctd = REAL / "derivatives/sub-verse012/sub-verse012_seg-subreg_ctd.json"
    return read_verse_subject(ct, msk, ctd)


def side_by_side(out: Path) -> Path:
    vs = real_subject()
    pts = np.stack(list(vs.centroids.values()))
    c = pts.mean(axis=0)
    half = np.array([0.0, 100.0, 125.0])
    real, _ = sagittal(vs.volume.array, vs.volume.affine, float(c[0]), c - half, c + half)
    ph = generate_phantom(seed=500003, fov="thoracolumbar", spacing=(1.0, 1.0, 1.0))
    pp = np.stack([np.asarray(ph.centroids[k]) for k in sorted(ph.centroids) if 17 <= k <= 22])
    pc = pp.mean(axis=0)
    phan, _ = sagittal(ph.volume.array, ph.volume.affine, float(pc[0]), pc - half, pc + half)
    rng = np.random.default_rng(7)
    looks = [random_appearance(phan[None].astype(np.float32), 1.0, rng)[0] for _ in range(2)]
    fig, axes = plt.subplots(1, 4, figsize=(16, 5.6))
    titles = ["real CT (VerSe sub-verse012, 3 mm sagittal)", "phantom as rendered",
              "phantom, training appearance 1", "phantom, training appearance 2"]
    for ax, img, title in zip(axes, [real, phan, *looks], titles, strict=True):
        ax.imshow(img, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], origin="lower")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle("Same window (L 300 / W 1400 HU), same 1 mm sagittal plane through the spine", fontsize=10)
    fig.tight_layout()
    path = out / "engine-real-vs-phantom.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def points_on_real(weights: Path | None, out: Path) -> Path:
    vs = real_subject()
    engine = Engine.from_weights(weights, device="cpu")
    result = engine.predict(vs.volume)
    gt = vs.centroids
    pts = np.stack(list(gt.values()))
    c = pts.mean(axis=0)
    half = np.array([0.0, 100.0, 125.0])
    lo, hi = c - half, c + half
    img, _ = sagittal(vs.volume.array, vs.volume.affine, float(c[0]), lo, hi)
    fig, ax = plt.subplots(figsize=(6, 7))
    ax.imshow(img, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], origin="lower")
    for lab, p in gt.items():
        ax.plot(p[1] - lo[1], p[2] - lo[2], "o", mfc="none", mec="lime", ms=10)
        ax.text(p[1] - lo[1] - 28, p[2] - lo[2], engine_name(lab), color="lime", fontsize=8)
    for lm in result.landmarks:
        p = np.asarray(lm.position_lps)
        ax.plot(p[1] - lo[1], p[2] - lo[2], "x", color="red", ms=8, mew=2)
        ax.text(p[1] - lo[1] + 8, p[2] - lo[2], f"{lm.name} {round(100 * lm.confidence)}%", color="red",
                fontsize=8)
    ax.set_title(f"sub-verse012: true (green o) vs {result.model_version} (red x)", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    path = out / "engine-real-points.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    (out / "engine-real-points.json").write_text(json.dumps(
        {"version": result.model_version,
         "predicted": {lm.name: [round(v, 1) for v in lm.position_lps] for lm in result.landmarks},
         "truth": {engine_name(k): [round(float(v), 1) for v in p] for k, p in gt.items()}}, indent=1) + "\n")
    return path


def engine_name(label: int) -> str:
    from dicom_io.labels import vertebra_name

    return vertebra_name(label)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument("--only", choices=["compare", "points"], default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "compare"):
        print(side_by_side(args.out))
    if args.only in (None, "points"):
        print(points_on_real(args.weights, args.out))


if __name__ == "__main__":
    main()
