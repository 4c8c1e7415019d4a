"""Engine inputs and outputs on disk: NIfTI volumes and masks, VerSe centroid JSON, DICOM series folders.

NIfTI stores RAS+ world coordinates and arrays indexed ``[i, j, k]``; :class:`Volume` uses LPS and
``[k, j, i]``. The conversion is a transpose plus negating the first two rows of the affine.

VerSe centroid JSON (anjany/verse): ``[{"direction": [axcodes]}, {"label": n, "X": .., "Y": .., "Z": ..}]``
where X, Y, Z are voxel indices along the image axes whose nibabel axis codes are ``direction``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from dicom_io.result import Landmark, Result
from dicom_io.volume import Volume

log = logging.getLogger(__name__)

_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_nifti_volume(path: Path) -> Volume:
    """A CT NIfTI file as a Volume (float32 HU, ``[k, j, i]``, LPS affine)."""
    img: Any = nib.load(str(path))
    if len(img.shape) != 3:
        raise ValueError(f"{path}: expected a 3D image, got shape {img.shape}")
    data = np.asarray(img.dataobj, dtype=np.float32)  # applies scl_slope / scl_inter
    return Volume(np.ascontiguousarray(data.transpose(2, 1, 0)), _LPS_RAS @ img.affine)


def write_nifti(path: Path, array_kji: npt.NDArray[np.generic], affine_lps: npt.NDArray[np.float64]) -> None:
    img = nib.Nifti1Image(np.asarray(array_kji).transpose(2, 1, 0), _LPS_RAS @ affine_lps)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))


def verse_centroids(landmarks: Sequence[Landmark], affine_lps: npt.NDArray[np.float64]
                    ) -> list[dict[str, object]]:
    """VerSe centroid list in the voxel frame of an image with ``affine_lps`` (as written by write_nifti)."""
    ras = _LPS_RAS @ affine_lps
    codes = list(nib.aff2axcodes(ras))
    inv = np.linalg.inv(affine_lps[:3, :3])
    out: list[dict[str, object]] = [{"direction": codes}]
    for lm in landmarks:
        ijk = (np.asarray(lm.position_lps) - affine_lps[:3, 3]) @ inv.T
        out.append({"label": lm.label, "X": round(float(ijk[0]), 3), "Y": round(float(ijk[1]), 3),
                    "Z": round(float(ijk[2]), 3)})
    return out


def write_result(out_dir: Path, result: Result, volume: Volume, stem: str = "prediction") -> dict[str, Path]:
    """Write ``<stem>_ctd.json`` (VerSe), ``<stem>_landmarks.json`` (LPS mm + confidence + timings) and
    ``<stem>_msk.nii.gz`` (spine mask on the input grid)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"centroids": out_dir / f"{stem}_ctd.json", "landmarks": out_dir / f"{stem}_landmarks.json",
             "mask": out_dir / f"{stem}_msk.nii.gz"}
    centroids = verse_centroids(result.landmarks, volume.affine)
    paths["centroids"].write_text(json.dumps(centroids, indent=1) + "\n", encoding="utf-8")
    paths["landmarks"].write_text(json.dumps({
        "model_version": result.model_version,
        "coordinate_system": "DICOM patient LPS, millimetres",
        "landmarks": [{"label": lm.label, "name": lm.name, "position_lps": list(lm.position_lps),
                       "confidence": round(lm.confidence, 4)} for lm in result.landmarks],
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
    }, indent=2) + "\n", encoding="utf-8")
    write_nifti(paths["mask"], result.mask, volume.affine)
    return paths


def read_dicom_series(directory: Path) -> Volume:
    """A DICOM series folder as a Volume; uses ``dicom_io.series.load_series`` when that module exists,
    otherwise SimpleITK's ImageSeriesReader (first series found in the folder)."""
    try:
        from dicom_io.series import load_series
    except ImportError:  # pragma: no cover - older checkouts without the project's loader
        return _read_series_sitk(directory)
    vol: Volume = load_series(directory)
    return vol


def _read_series_sitk(directory: Path) -> Volume:
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory))
    if not ids:
        raise ValueError(f"{directory}: no DICOM series found")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    img = reader.Execute()
    arr = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)  # [k, j, i], rescaled to HU
    spacing = np.asarray(img.GetSpacing())
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = direction * spacing[None, :]
    aff[:3, 3] = img.GetOrigin()  # ITK's physical space is LPS, like DICOM
    return Volume(arr, aff)


def read_input(path: Path) -> Volume:
    """A NIfTI file (``.nii``/``.nii.gz``) or a DICOM series folder."""
    if path.is_dir():
        return read_dicom_series(path)
    if path.name.endswith((".nii", ".nii.gz")):
        return read_nifti_volume(path)
    raise ValueError(f"{path}: expected a DICOM series folder or a .nii/.nii.gz file")
