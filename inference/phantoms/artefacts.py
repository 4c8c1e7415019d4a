"""CT image formation on top of the anatomy: in-plane blur (PSF), correlated noise, streaks.

* Blur: the point-spread function (in-plane sigma 0.3-0.8 mm) and the slice profile are applied where
  edges are: when structures are painted (``generate.paint_structure``); soft tissue is composed smooth.
* Noise: white noise filtered in-plane (the reconstruction kernel correlates neighbouring pixels, giving
  CT's grainy texture), scaled per slice by the patient's cross-section (more photons absorbed -> more noise).
* Streaks: dark bands between dense objects (beam hardening, photon starvation) and alternating
  bright/dark rays from metal, both as smooth 2D patterns weighted along z.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from inference.phantoms.anatomy import Skeleton
from inference.phantoms.shapes import Grid
from inference.phantoms.spec import PhantomSpec

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Slices processed at once (bounds temporary memory for 512x512 slices to ~50 MB per array).
SLAB = 48


def _noise_scale_per_slice(vol: F32) -> F32:
    """Relative noise per slice from the area of the patient in it (attenuating pixels), on a subsample."""
    step = max(1, vol.shape[1] // 128)
    area = (vol[:, ::step, ::step] > -500).mean(axis=(1, 2)).astype(np.float32)
    ref = max(float(np.median(area)), 1e-3)
    return np.clip(np.sqrt(np.maximum(area, 1e-3) / ref), 0.6, 1.8).astype(np.float32)


def add_noise(vol: F32, grid: Grid, spec: PhantomSpec, rng: np.random.Generator) -> None:
    """Correlated CT noise (in-plane grain ~0.7 mm), thinner slices noisier, in place.

    One slab of filtered noise (a little larger than a slice) is drawn and re-used for every slab with a
    random offset and flip: the repetition is invisible and the cost drops several-fold.
    """
    sigma_hu = spec.noise_hu * np.sqrt(
        max(spec.slice_thickness, 0.5) / max(spec.effective_slice_thickness, 0.5)
    )
    # Coarse voxels average noise away: the noise level of a voxel shrinks with its volume.
    voxel = grid.spacing[0] * grid.spacing[1]
    sigma_hu *= float(np.clip(np.sqrt(0.6 / voxel), 0.15, 1.2))
    if sigma_hu < 0.5:
        return
    grain_x = 0.7 / grid.spacing[0]
    grain_y = 0.7 / grid.spacing[1]
    scale = _noise_scale_per_slice(vol)
    nk, nj, ni = vol.shape
    depth = min(SLAB, nk)
    pad = 64
    tile = rng.standard_normal((depth, nj + pad, ni + pad), dtype=np.float32)
    gain = 1.0
    if grain_x > 0.5:
        ndimage.gaussian_filter1d(tile, grain_x, axis=2, output=tile, mode="wrap", truncate=2.5)
        ndimage.gaussian_filter1d(tile, grain_y, axis=1, output=tile, mode="wrap", truncate=2.5)
        # Std of Gaussian-filtered unit white noise: 1 / sqrt(2 sqrt(pi) sigma) per axis.
        gain = float(np.sqrt(2 * np.sqrt(np.pi) * grain_x) * np.sqrt(2 * np.sqrt(np.pi) * grain_y))
    tile *= np.float32(sigma_hu * gain)
    buf = np.empty((depth, nj, ni), dtype=np.float32)
    for k0 in range(0, nk, depth):
        n = min(depth, nk - k0)
        dj, di = int(rng.integers(pad + 1)), int(rng.integers(pad + 1))
        view = tile[:n, dj : dj + nj, di : di + ni]
        if rng.uniform() < 0.5:
            view = view[:, ::-1, ::-1]
        if rng.uniform() < 0.5:
            view = view[::-1]
        np.multiply(view, scale[k0 : k0 + n, None, None], out=buf[:n])
        vol[k0 : k0 + n] += buf[:n]


def _line_band(x: F32, y: F32, p: F64, q: F64, width: float) -> F32:
    """1 on the segment p-q, falling off with the distance to it (Gaussian of ``width`` mm)."""
    d = q - p
    length2 = float(d @ d) or 1.0
    t = np.clip(((x - p[0]) * d[0] + (y - p[1]) * d[1]) / length2, 0.0, 1.0)
    dx = x - (p[0] + t * d[0])
    dy = y - (p[1] + t * d[1])
    return np.exp(-(dx * dx + dy * dy) / (2 * width * width)).astype(np.float32)


def add_streaks(
    vol: F32, grid: Grid, spec: PhantomSpec, skeleton: Skeleton, rng: np.random.Generator
) -> None:
    """Metal streaks around implants and beam-hardening bands between dense bones, in place."""
    sources: list[tuple[list[F64], float, float, bool]] = []  # (points, z, amplitude, metal)
    metal = skeleton.metal_points
    if metal:
        # Group screw heads by level (same height within 15 mm).
        pts = sorted(metal, key=lambda p: float(p[2]))
        group: list[F64] = [pts[0]]
        for p in pts[1:]:
            if abs(float(p[2]) - float(group[-1][2])) < 15.0:
                group.append(p)
            else:
                sources.append(
                    (group, float(np.mean([g[2] for g in group])), float(rng.uniform(150, 400)), True)
                )
                group = [p]
        sources.append((group, float(np.mean([g[2] for g in group])), float(rng.uniform(150, 400)), True))
    if spec.beam_hardening > 0:
        dense = skeleton.dense_points
        for n, p in enumerate(dense):
            for q in dense[n + 1 :]:
                if abs(float(p[2]) - float(q[2])) < 25.0 and np.linalg.norm((p - q)[:2]) > 60.0:
                    amp = float(rng.uniform(15, 45)) * spec.beam_hardening
                    sources.append(([p, q], 0.5 * float(p[2] + q[2]), amp, False))
    if not sources:
        return
    lo, hi = grid.world_bounds()
    x = (grid.origin[0] + grid.spacing[0] * np.arange(grid.shape[2])).astype(np.float32)[None, :]
    y = (grid.origin[1] + grid.spacing[1] * np.arange(grid.shape[1])).astype(np.float32)[:, None]
    zs = grid.origin[2] + grid.spacing[2] * np.arange(grid.shape[0])
    for points, zc, amp, is_metal in sources:
        half = 12.0 if is_metal else 14.0
        ks = np.nonzero(np.abs(zs - zc) < 2.5 * half)[0]
        if ks.size == 0:
            continue
        pattern = np.zeros((grid.shape[1], grid.shape[2]), dtype=np.float32)
        for n, p in enumerate(points):
            for q in points[n + 1 :]:
                pattern -= amp * 0.6 * _line_band(x, y, p[:2], q[:2], 3.0 if is_metal else 6.0)
        if is_metal:
            centre = np.mean(np.array(points), axis=0)
            r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2) + 1.0
            theta = np.arctan2(y - centre[1], x - centre[0])
            n_rays = int(rng.integers(6, 14))
            phase = float(rng.uniform(0, 2 * np.pi))
            rays = np.cos(n_rays * theta + phase) * np.cos(0.5 * n_rays * theta)
            pattern += (amp * 0.5 * rays * np.exp(-r / 90.0) * (r > 8)).astype(np.float32)
        weight = np.exp(-0.5 * ((zs[ks] - zc) / half) ** 2).astype(np.float32)
        for k, wk in zip(ks, weight, strict=True):
            vol[k] += wk * pattern
