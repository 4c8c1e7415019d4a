"""Pictures of phantoms: mid-sagittal, coronal and axial slices with the ground-truth centroids.

``python -m inference.phantoms.render --out docs/images`` writes the PNGs shown in ``docs/phantoms.md``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dicom_io.labels import vertebra_name
from inference.phantoms.generate import Phantom, generate_phantom

logger = logging.getLogger(__name__)

#: Display window (level, width) in HU: wide enough for soft tissue, lungs and bone at once.
WINDOW = (250.0, 1800.0)


def _window(img: npt.NDArray[np.float32], level: float, width: float) -> npt.NDArray[np.float32]:
    return np.clip((img - (level - width / 2)) / width, 0.0, 1.0)


def sagittal_and_coronal(ph: Phantom) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], int, int]:
    """The mid-sagittal (through the median spine x) and coronal (through the bodies) slices."""
    vol = ph.volume
    labelled = np.nonzero(ph.labels)
    if ph.centroids:
        pts = np.array(list(ph.centroids.values()))
        ijk = vol.lps_to_index(pts)
        i_mid = int(round(float(np.median(ijk[:, 0]))))
        j_mid = int(round(float(np.median(ijk[:, 1]))))
    elif labelled[0].size:
        i_mid = int(np.median(labelled[2]))
        j_mid = int(np.median(labelled[1]))
    else:
        i_mid, j_mid = vol.shape[2] // 2, vol.shape[1] // 2
    i_mid = int(np.clip(i_mid, 0, vol.shape[2] - 1))
    j_mid = int(np.clip(j_mid, 0, vol.shape[1] - 1))
    sag = vol.array[:, :, i_mid]  # (k, j)
    cor = vol.array[:, j_mid, :]  # (k, i)
    return sag, cor, i_mid, j_mid


def render_phantom(
    ph: Phantom, path: Path, title: str | None = None, axial_labels: tuple[int, ...] = ()
) -> Path:
    """Write one PNG: sagittal + coronal (+ axial through given vertebrae) with centroid markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vol = ph.volume
    si, sj, sk = vol.spacing
    sag, cor, i_mid, j_mid = sagittal_and_coronal(ph)
    level, width = WINDOW
    axial = [lab for lab in axial_labels if lab in ph.centroids]
    ncols = 2 + len(axial)
    nk, nj, ni = vol.shape
    height_mm = nk * sk
    ratios = [nj * sj / height_mm, ni * si / height_mm] + [0.9] * len(axial)
    fig, axes = plt.subplots(
        1, ncols, figsize=(1.0 + 7.0 * sum(ratios), 7.6), gridspec_kw={"width_ratios": ratios}
    )
    axes = np.atleast_1d(axes)
    pts = {lab: vol.lps_to_index(np.array(p)) for lab, p in ph.centroids.items()}
    # Sagittal: rows k (superior up), columns j (anterior left).
    axes[0].imshow(
        _window(sag, level, width), cmap="gray", origin="lower", aspect=sk / sj, interpolation="bilinear"
    )
    axes[1].imshow(
        _window(cor, level, width), cmap="gray", origin="lower", aspect=sk / si, interpolation="bilinear"
    )
    for lab, p in pts.items():
        axes[0].plot(p[1], p[2], "o", ms=3, color="#ff5050")
        axes[0].text(
            p[1] - 6 / sj, p[2], vertebra_name(lab), color="#ffd040", fontsize=6, ha="right", va="center"
        )
        axes[1].plot(p[0], p[2], "o", ms=3, color="#ff5050")
    axes[0].set_title("sagittal", fontsize=8)
    axes[1].set_title("coronal", fontsize=8)
    for n, lab in enumerate(axial):
        k = int(round(float(pts[lab][2])))
        k = int(np.clip(k, 0, nk - 1))
        ax = axes[2 + n]
        ax.imshow(
            _window(vol.array[k], level, width),
            cmap="gray",
            origin="upper",
            aspect=sj / si,
            interpolation="bilinear",
        )
        ax.plot(pts[lab][0], pts[lab][1], "o", ms=3, color="#ff5050")
        ax.set_title(f"axial {vertebra_name(lab)}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    spec = ph.spec
    fig.suptitle(
        title
        or f"seed {spec.seed} | {spec.fov} | {spec.variant} | {si:.2f}x{sj:.2f}x{sk:.2f} mm "
        f"| slice {spec.slice_thickness:.2f} mm | contrast {spec.contrast}",
        fontsize=8,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, facecolor="black")
    plt.close(fig)
    return path


#: The phantoms shown in docs/phantoms.md: (seed, fov, overrides).
GALLERY: tuple[tuple[int, str, dict[str, object]], ...] = (
    (11, "whole", {}),
    (12, "lumbar", {"implant_levels": (22, 23, 24)}),
    (13, "cervical", {}),
    (14, "abdomen_pelvis", {"contrast": "venous_oral"}),
    (15, "chest", {"variant": "T13"}),
    (16, "thoracolumbar", {"fractures": (19, 21), "degeneration": 0.9}),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the phantom gallery PNGs")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--spacing", type=float, default=None, help="isotropic spacing (mm); default: drawn")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for seed, fov, overrides in GALLERY:
        spacing = None if args.spacing is None else (args.spacing,) * 3
        ph = generate_phantom(seed=seed, fov=fov, spacing=spacing, **overrides)  # type: ignore[arg-type]
        axial = sorted(ph.centroids)[len(ph.centroids) // 2 : len(ph.centroids) // 2 + 1]
        path = render_phantom(ph, args.out / f"phantom_{seed}_{ph.spec.fov}.png", axial_labels=tuple(axial))
        logger.info("wrote %s (%.1f s)", path, ph.timings.get("total", 0.0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
