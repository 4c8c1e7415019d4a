"""A PNG for people: sagittal and coronal views of a CT with the spine mask and labelled landmarks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dicom_io.labels import vertebra_name
from dicom_io.result import Landmark
from dicom_io.volume import Volume

#: Half-thickness (mm) of the slab shown as a maximum-intensity projection, so a curved spine stays visible.
SLAB_HALF_MM = 12.0


def _slab_mip(array: npt.NDArray[np.float32], axis: int, centre: float, half: int) -> npt.NDArray[np.float32]:
    lo = int(np.clip(round(centre) - half, 0, array.shape[axis] - 1))
    hi = int(np.clip(round(centre) + half + 1, lo + 1, array.shape[axis]))
    return np.asarray(np.take(array, np.arange(lo, hi), axis=axis).max(axis=axis), dtype=np.float32)


def render_overlay(
    volume: Volume,
    mask: npt.NDArray[np.uint8] | None,
    landmarks: Sequence[Landmark],
    out_path: Path,
    *,
    ground_truth: Mapping[int, tuple[float, float, float]] | None = None,
    title: str = "",
) -> Path:
    """Write a two-panel PNG (sagittal, coronal slab MIPs) with mask contours and landmark labels.

    Assumes an axial series (``k`` along the patient's z axis), as the loader guarantees for CT.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    si, sj, sk = volume.spacing
    points = [lm.position_lps for lm in landmarks] or list((ground_truth or {}).values())
    if points:
        centre_ijk = np.median(volume.lps_to_index(np.asarray(points)), axis=0)
    else:
        centre_ijk = (np.asarray(volume.shape[::-1], dtype=np.float64) - 1) / 2
    superior_up = volume.affine[2, 2] < 0  # k increasing toward inferior: row 0 is the top already

    nk, nj, ni = volume.shape
    height_mm = nk * sk
    widths_mm = (nj * sj, ni * si)  # sagittal shows j (A-P), coronal shows i (R-L)
    panel_h = 8.0
    panel_w = [max(2.0, panel_h * w / max(height_mm, 1.0)) for w in widths_mm]
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(sum(panel_w) + 0.6, panel_h + 0.8),
        facecolor="black",
        gridspec_kw={"width_ratios": panel_w},
    )
    views = (
        ("sagittal", 2, centre_ijk[0], si, sj),  # drop i: image rows k, columns j (anterior -> posterior)
        ("coronal", 1, centre_ijk[1], sj, si),  # drop j: image rows k, columns i (right -> left)
    )
    for ax, (name, axis, centre, thick_mm, col_mm) in zip(axes, views, strict=True):
        half = max(1, int(SLAB_HALF_MM / thick_mm))
        image = _slab_mip(volume.array, axis, centre, half)
        ax.imshow(
            image,
            cmap="gray",
            vmin=-250,
            vmax=1250,
            aspect=sk / col_mm,
            origin="upper" if superior_up else "lower",
        )
        if mask is not None and mask.any():
            m = _slab_mip((mask > 0).astype(np.float32), axis, centre, half)
            ax.contour(
                m, levels=[0.5], colors="#00e5ff", linewidths=0.8, origin="upper" if superior_up else "lower"
            )
        col_index = 1 if axis == 2 else 0  # which of (i, j) is the image column
        for lm in landmarks:
            i, j, k = volume.lps_to_index(np.asarray(lm.position_lps))
            x = (i, j)[col_index]
            ax.plot(x, k, "o", color="#ffd54f", markersize=4)
            ax.text(x + 4, k, lm.name, color="#ffd54f", fontsize=7, va="center")
        for label, pos in (ground_truth or {}).items():
            i, j, k = volume.lps_to_index(np.asarray(pos))
            ax.plot((i, j)[col_index], k, "+", color="#ff5252", markersize=6)
            if not landmarks:
                ax.text((i, j)[col_index] + 4, k, vertebra_name(label), color="#ff5252", fontsize=7)
        ax.set_title(name, color="white")
        ax.set_axis_off()
    if title:
        fig.suptitle(title, color="white")
    fig.text(
        0.5,
        0.02,
        "cyan: spine mask   yellow: engine landmarks   red +: ground truth",
        color="white",
        ha="center",
        fontsize=8,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110, facecolor="black", bbox_inches="tight")
    plt.close(fig)
    return out_path
