"""Appearance drawn anew for every training sample: teach the networks anatomy, not our renderer's look.

The phantom renderer gives one clean look per subject; real scanners, protocols and patients differ in
tissue HU, contrast, noise level and texture, kernel sharpness, slice thickness (along any axis, thick
sagittal reconstructions included), bias and field of view. Following SynthSeg (Billot et al., MedIA
2023) we redraw the appearance of every sample, but keep the one thing CT physics fixes: the order of
tissues (air < fat < soft tissue < cancellous bone < cortex < metal). See ``docs/engine.md``.

Everything here works on a sample already resampled to the network's isotropic grid (``(k, j, i)``
arrays, ``spacing_mm`` per voxel), so it costs milliseconds per 64^3 sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

F32 = npt.NDArray[np.float32]

#: HU of voxels outside the reconstructed field of view (as the loader and resampler fill them).
OUTSIDE_HU = -1024.0

#: Knots of the HU transfer curve (input HU): air, lung, fat, water, soft tissue, cancellous bone,
#: dense cancellous, cortex, dense cortex, metal.
_KNOTS = np.array([-1024.0, -900.0, -500.0, -100.0, 0.0, 50.0, 150.0, 300.0, 700.0, 1200.0, 2000.0, 3071.0])


@dataclass(frozen=True)
class AppearanceRanges:
    """How far each appearance factor is drawn (the defaults are the training ranges of v0.2)."""

    soft_shift_hu: float = 40.0  # soft tissue / water level shift
    fat_shift_hu: float = 50.0
    bone_gain: tuple[float, float] = (0.45, 1.35)  # scales HU above 100 (cancellous 60-300, cortex)
    blur_sigma_vox: tuple[float, float] = (0.0, 1.1)
    p_thick: float = 0.5
    thick_mm: tuple[float, float] = (2.0, 6.0)
    noise_hu: tuple[float, float] = (0.0, 110.0)
    p_streak: float = 0.35
    bias_hu: float = 45.0
    p_fov_cut: float = 0.6


def hu_transfer(hu: F32, rng: np.random.Generator, r: AppearanceRanges) -> F32:
    """A random monotonic piecewise-linear HU map: new tissue contrasts, same tissue order."""
    y = _KNOTS.copy()
    soft = rng.uniform(-r.soft_shift_hu, r.soft_shift_hu)
    fat = rng.uniform(-r.fat_shift_hu, r.fat_shift_hu)
    gain = rng.uniform(*r.bone_gain)
    y[2] += rng.uniform(-150, 150)  # lung / partial-volume air
    y[3] += fat
    y[4] += soft
    y[5] += soft + rng.uniform(-15, 15)
    above = _KNOTS > 100
    y[above] = 100 + soft + (_KNOTS[above] - 100) * gain * rng.uniform(0.85, 1.15, above.sum())
    y[0] = OUTSIDE_HU
    y = np.maximum.accumulate(y + np.arange(len(y)) * 1e-3)  # keep the order of tissues
    return np.interp(hu, _KNOTS, y).astype(np.float32)


def thick_slices(img: F32, axis: int, thickness_mm: float, spacing_mm: float) -> F32:
    """Simulate a reconstruction of ``thickness_mm`` slices along ``axis``: average over the slice
    profile, then sample one slice per thickness and hold it (the staircase of thick reformats)."""
    width = max(1, int(round(thickness_mm / spacing_mm)))
    if width <= 1:
        return img
    out = ndimage.uniform_filter1d(img, size=width, axis=axis, mode="nearest")
    n = img.shape[axis]
    offset = int(np.random.default_rng(n).integers(width))
    src = np.clip((np.arange(n) - offset) // width * width + offset + width // 2, 0, n - 1)
    return np.take(out, src, axis=axis).astype(np.float32)


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, cells: int = 4) -> F32:
    coarse = rng.standard_normal((cells, cells, cells)).astype(np.float32)
    zoom = [s / cells for s in shape]
    return ndimage.zoom(coarse, zoom, order=1, mode="nearest")[: shape[0], : shape[1], : shape[2]]


def random_appearance(hu: F32, spacing_mm: float, rng: np.random.Generator,
                      r: AppearanceRanges | None = None) -> F32:
    """One new CT appearance for a resampled sample (HU in, HU out; outside-FOV voxels stay outside)."""
    r = r or AppearanceRanges()
    outside = hu <= OUTSIDE_HU + 0.5
    img = hu_transfer(hu, rng, r)
    sigma = rng.uniform(*r.blur_sigma_vox, size=3)
    if sigma.max() > 0.15:
        img = ndimage.gaussian_filter(img, sigma, mode="nearest")
    if rng.random() < r.p_thick:
        img = thick_slices(img, int(rng.integers(3)), rng.uniform(*r.thick_mm), spacing_mm)
    if r.bias_hu > 0:
        img += _smooth_field(img.shape, rng) * np.float32(rng.uniform(0, r.bias_hu))
    level = rng.uniform(*r.noise_hu) * rng.random()  # more low-noise samples than high-noise ones
    if level > 1:
        noise = rng.standard_normal(img.shape).astype(np.float32)
        corr = np.zeros(3)
        corr += rng.uniform(0, 1.0)
        if rng.random() < r.p_streak:  # streaky texture along one axis (low-dose, thick reformats)
            corr[int(rng.integers(3))] = rng.uniform(2, 5)
        if corr.max() > 0.1:
            noise = ndimage.gaussian_filter(noise, corr, mode="wrap")
            noise /= max(float(noise.std()), 1e-6)
        img += noise * np.float32(level)
    img[outside] = OUTSIDE_HU
    return img


#: Cut half-widths (mm from the spine point, drawn per side) and how often each axis is cut:
#: (k: head-foot, j: front-back, i: left-right). Left-right is drawn log-uniformly, so that slabs
#: narrower than a stage-2 crop (VerSe's ~100 mm wide sagittal reconstructions, spine-targeted small
#: fields of view) are about as common as wide ones: outside-FOV beside the spine is then seen as often
#: at lumbar levels as at thoracic ones, and cannot stand in for the lungs.
FOV_CUT_RANGES_MM = ((60.0, 250.0), (45.0, 160.0), (30.0, 150.0))
FOV_CUT_P_AXIS = (0.2, 0.6, 0.8)
#: Of the cuts, this share also blanks outside an axial circle (a reconstruction's circular field of
#: view) of radius ``FOV_CIRCLE_RADIUS_MM`` centred within ``FOV_CIRCLE_OFFSET_MM`` (sigma) of the spine.
FOV_P_CIRCLE = 0.3
FOV_CIRCLE_RADIUS_MM = (60.0, 130.0)
FOV_CIRCLE_OFFSET_MM = 15.0
#: No cut comes nearer the spine point than this (the smallest left-right half-width).
FOV_KEEP_MM = 30.0


def cut_field_of_view(img: F32, target: npt.NDArray[np.generic] | None, centre_vox: npt.NDArray[np.float64],
                      spacing_mm: float, rng: np.random.Generator) -> None:
    """In place: blank everything outside a random box (and sometimes an axial circle) around
    ``centre_vox`` (k, j, i) as outside-FOV, as tightly cropped reconstructions do; ``target`` is zeroed
    too.

    Left-right and front-back are cut tightly more often than head-foot (scans rarely cut the spine's
    length, but reformats and small fields of view cut its width)."""
    outside = np.zeros(img.shape, dtype=bool)
    for axis in range(3):
        if rng.random() >= FOV_CUT_P_AXIS[axis]:
            continue
        n = img.shape[axis]
        lo_mm, hi_mm = FOV_CUT_RANGES_MM[axis]
        if axis == 2:
            half = np.exp(rng.uniform(np.log(lo_mm), np.log(hi_mm), size=2))
        else:
            half = rng.uniform(lo_mm, hi_mm, size=2)
        a = centre_vox[axis] - half[0] / spacing_mm
        b = centre_vox[axis] + half[1] / spacing_mm
        a_i, b_i = int(np.clip(np.floor(a), 0, n)), int(np.clip(np.ceil(b), 0, n))
        for sl in (slice(0, a_i), slice(b_i, n)):
            idx: list[slice] = [slice(None)] * 3
            idx[axis] = sl
            outside[tuple(idx)] = True
    if rng.random() < FOV_P_CIRCLE:
        radius = rng.uniform(*FOV_CIRCLE_RADIUS_MM) / spacing_mm
        shift = rng.normal(0, FOV_CIRCLE_OFFSET_MM / spacing_mm, 2)
        # The field always holds the spine and FOV_KEEP_MM round it.
        radius = max(radius, float(np.linalg.norm(shift)) + FOV_KEEP_MM / spacing_mm)
        cj, ci = np.asarray(centre_vox[1:], dtype=np.float64) + shift
        jj, ii = np.ogrid[: img.shape[1], : img.shape[2]]
        outside |= ((jj - cj) ** 2 + (ii - ci) ** 2 > radius**2)[None]
    img[outside] = OUTSIDE_HU
    if target is not None:
        target[outside] = 0
