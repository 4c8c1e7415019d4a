"""The one in-memory image type shared by loading, the engine and the result writers.

Convention (fixed for the whole project):

* ``array`` is float32 Hounsfield units indexed ``array[k, j, i]``: ``k`` the slice, ``j`` the row,
  ``i`` the column, exactly as a DICOM series is stacked.
* ``affine`` is a 4x4 matrix mapping homogeneous voxel indices ``(i, j, k, 1)`` to patient
  coordinates in millimetres in DICOM's LPS system (x to the patient's Left, y to Posterior,
  z to Superior). Column ``0`` is the row direction times the column spacing, column ``1`` the
  column direction times the row spacing, column ``2`` the slice step, column ``3`` the position of
  voxel ``(0, 0, 0)`` (the first slice's Image Position Patient).

This module imports numpy only, so every package may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class SourceReference:
    """What a result object needs to point back at the images it was computed from."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    #: SOP Instance UID of each slice, in the order of ``k`` (multi-frame sources repeat one UID).
    sop_instance_uids: tuple[str, ...]
    #: Patient / study attributes copied onto results (never logged at INFO).
    patient: dict[str, str] = field(default_factory=dict)


class VoxelFrame:
    """Geometry shared by everything with a voxel ``(i, j, k, 1)`` -> LPS mm ``affine`` (volumes, grids)."""

    affine: npt.NDArray[np.float64]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``(i, j, k)``."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def direction(self) -> npt.NDArray[np.float64]:
        """3x3 matrix whose columns are the unit vectors of ``i``, ``j`` and ``k`` in LPS."""
        return self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> npt.NDArray[np.float64]:
        """LPS position (mm) of voxel ``(0, 0, 0)``."""
        return self.affine[:3, 3].copy()

    def index_to_lps(self, ijk: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(..., 3)`` voxel indices ``(i, j, k)`` (fractional allowed) to LPS mm."""
        pts = np.asarray(ijk, dtype=np.float64)
        return pts @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, lps: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(..., 3)`` LPS mm points to fractional voxel indices ``(i, j, k)``."""
        pts = np.asarray(lps, dtype=np.float64)
        return (pts - self.affine[:3, 3]) @ np.linalg.inv(self.affine[:3, :3]).T


@dataclass
class Volume(VoxelFrame):
    """A 3D CT image in HU with its voxel-to-LPS affine."""

    array: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]
    source: SourceReference | None = None

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D (k, j, i), got shape {self.array.shape}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got {affine.shape}")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise ValueError("Volume affine is singular")
        self.affine = affine

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(nk, nj, ni)``: slices, rows, columns."""
        k, j, i = self.array.shape
        return (k, j, i)


def affine_from_geometry(
    origin: npt.ArrayLike, direction: npt.ArrayLike, spacing: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Build a voxel-to-LPS affine from an origin, 3x3 direction (columns i, j, k) and (i, j, k) spacing."""
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(direction, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)[None, :]
    aff[:3, 3] = np.asarray(origin, dtype=np.float64)
    return aff
