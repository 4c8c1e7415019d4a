"""Sampling grids in patient space and memory-bounded resampling onto them.

A :class:`Grid` is a shape ``(nk, nj, ni)`` plus a voxel ``(i, j, k, 1)`` -> LPS mm affine, the same
convention as :class:`dicom_io.volume.Volume`. The engine works on *world-aligned* grids (axes along
L, P, S), whatever the orientation of the input series, so the networks always see the spine with
``k`` pointing superior; augmentation rotates the grid instead of the image.

Resampling is done slab by slab along the output ``k`` axis with SimpleITK: each slab only copies the
part of the input it needs, so a 512x512x1500 series never gets a second full-size copy (and never a
float64 one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from dicom_io.volume import VoxelFrame

#: Output slices resampled per SimpleITK call (bounds the temporary input copy).
SLAB_SLICES = 24


@dataclass(frozen=True)
class Grid(VoxelFrame):
    """A sampling grid: array shape ``(nk, nj, ni)`` and a 4x4 voxel (i, j, k, 1) -> LPS mm affine."""

    shape: tuple[int, int, int]
    affine: npt.NDArray[np.float64]

    def mm_to_lps(self, mm: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Crop-frame millimetres ``(i*si, j*sj, k*sk)`` (the DSNT output) -> LPS mm."""
        return self.index_to_lps(np.asarray(mm, dtype=np.float64) / np.asarray(self.spacing))

    def lps_to_mm(self, lps: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return self.lps_to_index(lps) * np.asarray(self.spacing)

    def corners_lps(self) -> npt.NDArray[np.float64]:
        nk, nj, ni = self.shape
        c = np.array([[i, j, k] for i in (0, ni - 1) for j in (0, nj - 1) for k in (0, nk - 1)], float)
        return self.index_to_lps(c)

    def sub_grid(self, start_kji: tuple[int, int, int], shape: tuple[int, int, int]) -> Grid:
        """The grid of ``array[k0:k0+nk, j0:j0+nj, i0:i0+ni]`` (may extend outside this grid)."""
        k0, j0, i0 = start_kji
        aff = self.affine.copy()
        aff[:3, 3] = self.index_to_lps([i0, j0, k0])
        return Grid(shape, aff)


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def world_box_grid(
    lo_lps: npt.ArrayLike,
    hi_lps: npt.ArrayLike,
    spacing_mm: float,
    multiple: int = 1,
    min_shape: tuple[int, int, int] = (1, 1, 1),
    rotation: npt.NDArray[np.float64] | None = None,
) -> Grid:
    """A grid with axes along L, P, S (optionally rotated about the box centre) covering ``[lo, hi]``.

    The shape is rounded up to ``multiple`` and at least ``min_shape`` (``(nk, nj, ni)``), growing
    symmetrically about the box centre.
    """
    lo = np.asarray(lo_lps, dtype=np.float64)
    hi = np.asarray(hi_lps, dtype=np.float64)
    if np.any(hi < lo):
        raise ValueError(f"empty box: lo {lo} > hi {hi}")
    extent = hi - lo  # (x, y, z)
    n_ijk = [max(_round_up(int(math.ceil(e / spacing_mm)) + 1, multiple), m)
             for e, m in zip(extent, (min_shape[2], min_shape[1], min_shape[0]), strict=True)]
    n_ijk = [_round_up(n, multiple) for n in n_ijk]
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    centre = (lo + hi) / 2.0
    aff = np.eye(4)
    aff[:3, :3] = rot * spacing_mm
    half = (np.asarray(n_ijk, dtype=np.float64) - 1.0) / 2.0
    aff[:3, 3] = centre - aff[:3, :3] @ half
    return Grid((n_ijk[2], n_ijk[1], n_ijk[0]), aff)


def volume_bounds_lps(shape_kji: tuple[int, int, int], affine: npt.NDArray[np.float64]
                      ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Axis-aligned LPS bounding box of the voxel centres of an image."""
    g = Grid(shape_kji, affine)
    c = g.corners_lps()
    return c.min(axis=0), c.max(axis=0)


def _sitk_image(arr: npt.NDArray[np.generic], affine: npt.NDArray[np.float64]) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (affine[:3, :3] / spacing).flatten()])
    img.SetOrigin([float(v) for v in affine[:3, 3]])
    return img


def resample(
    array: npt.NDArray[np.generic],
    affine: npt.NDArray[np.float64],
    grid: Grid,
    *,
    nearest: bool = False,
    fill: float = 0.0,
    antialias: bool = True,
    dtype: npt.DTypeLike = np.float32,
) -> npt.NDArray[Any]:
    """Resample ``array`` (indexed ``[k, j, i]``, voxel->LPS ``affine``) onto ``grid``.

    Linear interpolation (``nearest=False``) or nearest neighbour (labels). When down-sampling with
    linear interpolation and ``antialias`` is set, each input slab is first Gaussian-smoothed (sigma
    0.4 x output spacing where the input is finer) to avoid aliasing thin cortical bone.
    """
    out = np.full(grid.shape, fill, dtype=dtype)
    in_shape = np.asarray(array.shape)  # (k, j, i)
    inv = np.linalg.inv(affine[:3, :3])
    in_spacing = np.linalg.norm(affine[:3, :3], axis=0)
    out_spacing = min(grid.spacing)
    sigma = np.where(in_spacing * 1.5 < out_spacing, 0.4 * out_spacing, 0.0)
    smooth = antialias and not nearest and bool(np.any(sigma > 0))
    margin_vox = np.ceil(3.0 * sigma / in_spacing).astype(int) + 2 if smooth else np.full(3, 2)
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    nk, nj, ni = grid.shape
    for k0 in range(0, nk, SLAB_SLICES):
        k1 = min(nk, k0 + SLAB_SLICES)
        slab = grid.sub_grid((k0, 0, 0), (k1 - k0, nj, ni))
        idx = (slab.corners_lps() - affine[:3, 3]) @ inv.T  # (8, 3) i, j, k
        lo = np.floor(idx.min(axis=0)).astype(int) - margin_vox
        hi = np.ceil(idx.max(axis=0)).astype(int) + margin_vox + 1
        lo_kji = np.maximum(lo[::-1], 0)
        hi_kji = np.minimum(hi[::-1], in_shape)
        if np.any(hi_kji <= lo_kji):
            continue
        sub = array[lo_kji[0]:hi_kji[0], lo_kji[1]:hi_kji[1], lo_kji[2]:hi_kji[2]]
        if not nearest:
            sub = sub.astype(np.float32, copy=False)
        sub_aff = affine.copy()
        sub_aff[:3, 3] = affine[:3, :3] @ lo_kji[::-1].astype(float) + affine[:3, 3]
        img = _sitk_image(sub, sub_aff)
        if smooth and min(sub.shape) >= 4:  # the recursive filter needs 4 pixels per axis
            img = sitk.SmoothingRecursiveGaussian(img, [float(s) if s > 0 else 0.01 for s in sigma])
        f = sitk.ResampleImageFilter()
        f.SetInterpolator(interp)
        f.SetDefaultPixelValue(float(fill))
        f.SetSize([int(ni), int(nj), int(k1 - k0)])
        f.SetOutputSpacing([float(s) for s in slab.spacing])
        f.SetOutputDirection([float(v) for v in slab.direction.flatten()])
        f.SetOutputOrigin([float(v) for v in slab.affine[:3, 3]])
        f.SetOutputPixelType(img.GetPixelID())
        res = f.Execute(img)
        out[k0:k1] = sitk.GetArrayViewFromImage(res)
    return out


def random_rotation(rng: np.random.Generator, max_deg: float) -> npt.NDArray[np.float64]:
    """A rotation matrix with independent uniform angles in ``[-max_deg, max_deg]`` about x, y, z."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx
