"""NIfTI and VerSe on disk: VerSe-format folders (phantoms written, phantoms and real VerSe 2019/2020 read)
and the engine's file inputs and outputs (NIfTI volumes and masks, VerSe centroid JSON, DICOM folders).

NIfTI stores RAS+ world coordinates and arrays indexed ``[i, j, k]``; :class:`Volume` uses LPS and
``[k, j, i]``. The conversion is a transpose plus negating the first two rows of the affine
(:func:`_nifti_image`, :func:`_kji_lps`), written once here.

Layout (VerSe "subject based structure", BIDS-like; anjany/verse)::

    rawdata/sub-X/sub-X[_entities]_ct.nii.gz
    derivatives/sub-X/sub-X[_entities]_seg-vert_msk.nii.gz
    derivatives/sub-X/sub-X[_entities]_seg-subreg_ctd.json

VerSe 2019 names files ``sub-verse004_ct.nii.gz``; VerSe 2020 adds entities, e.g.
``sub-gl003_dir-ax_ct.nii.gz`` or ``sub-verse400_split-verse290_ct.nii.gz``.

Centroid JSON: ``[{"direction": ["P", "I", "R"]}, {"label": 20, "X": .., "Y": .., "Z": ..}, ...]``.
``direction`` gives the axis codes (nibabel, RAS letters) of the voxel grid the coordinates refer to:
X, Y, Z are voxel indices of the image reoriented to that direction, at the image's own spacing
(anjany/verse ``utils/data_utilities.py``: ``load_centroids``, ``reorient_centroids_to``,
``rescale_centroids``).

Choices:

* The writer stores the CT and mask already in ``P, I, R`` orientation, so the JSON coordinates are plain
  voxel indices of the stored arrays (no flip convention can differ between tools).
* The reader maps coordinates through nibabel's exact reorientation (a flipped axis maps index ``i``
  to ``n - 1 - i``). VerSe's ``reorient_centroids_to`` flips with ``n - i``, so for a JSON whose direction
  differs from its image's orientation our positions can differ from that helper's by one voxel along
  flipped axes.
* Entries with NaN coordinates are skipped (as VerSe's loader does). A JSON without a direction entry is
  taken to be in the image's own voxel axes.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
import numpy.typing as npt

from dicom_io.result import Landmark, Result
from dicom_io.volume import Volume
from inference.phantoms.generate import Phantom

logger = logging.getLogger(__name__)

#: Orientation the writer stores images in (and the JSON direction it writes), as in VerSe's examples.
VERSE_AXCODES: tuple[str, str, str] = ("P", "I", "R")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_CT_SUFFIX = "_ct.nii.gz"
_MASK_SUFFIX = "_seg-vert_msk.nii.gz"
_CTD_SUFFIX = "_seg-subreg_ctd.json"


def _nifti_image(array_kji: npt.NDArray[np.generic], affine_lps: npt.NDArray[np.float64]) -> nib.Nifti1Image:
    """A NIfTI image (``[i, j, k]``, RAS affine) of a ``[k, j, i]`` array with an LPS affine."""
    data = np.ascontiguousarray(np.asarray(array_kji).transpose(2, 1, 0))
    return nib.Nifti1Image(data, _LPS_TO_RAS @ affine_lps)


def _kji_lps(
    data_ijk: npt.NDArray[Any], affine_ras: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """The ``[k, j, i]`` array and LPS affine of NIfTI data ``[i, j, k]`` with a RAS affine."""
    return np.ascontiguousarray(data_ijk.transpose(2, 1, 0)), _LPS_TO_RAS @ affine_ras


class VerseFormatError(ValueError):
    """A VerSe-format file or folder cannot be read; the message names the file and what is wrong."""


@dataclass
class VerseSubject:
    """One image of a VerSe-format folder: the CT, the vertebra mask (if any) and the centroids (LPS mm)."""

    subject: str  # file stem without the suffix, e.g. "sub-gl003_dir-ax"
    volume: Volume
    labels: npt.NDArray[np.uint8] | None
    centroids: dict[int, tuple[float, float, float]]
    paths: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class VersePaths:
    """Where :func:`write_verse` put the three files of a subject."""

    ct: Path
    mask: Path
    centroids: Path


def subject_id(name: str) -> str:
    """``"sub-<name>"`` with characters outside ``[A-Za-z0-9]`` removed from the label (BIDS)."""
    label = name[4:] if name.startswith("sub-") else name
    label = re.sub(r"[^A-Za-z0-9]", "", label)
    if not label:
        raise ValueError(f"subject name {name!r} has no letters or digits")
    return f"sub-{label}"


# ------------------------------------------------------------------------------------------- writing
def _nifti_from_volume(
    array_kji: npt.NDArray[np.generic], affine_lps: npt.NDArray[np.float64]
) -> nib.Nifti1Image:
    """A NIfTI image (RAS affine) of a ``[k, j, i]`` array with an LPS affine, reoriented to P, I, R."""
    img = _nifti_image(array_kji, affine_lps)
    ornt = nio.ornt_transform(nio.io_orientation(img.affine), nio.axcodes2ornt(VERSE_AXCODES))
    out = img.as_reoriented(ornt)
    data = np.ascontiguousarray(np.asanyarray(out.dataobj))
    fixed = nib.Nifti1Image(data, out.affine)
    fixed.set_qform(out.affine, code=1)
    fixed.set_sform(out.affine, code=1)
    return fixed


def write_verse(ph: Phantom, root: Path | str, subject: str) -> VersePaths:
    """Write CT (int16 HU), vertebra mask (uint8 VerSe labels) and centroid JSON of ``ph`` under ``root``."""
    sub = subject_id(subject)
    root = Path(root)
    raw = root / "rawdata" / sub
    der = root / "derivatives" / sub
    raw.mkdir(parents=True, exist_ok=True)
    der.mkdir(parents=True, exist_ok=True)
    vol = ph.volume
    hu = np.clip(np.rint(vol.array), -32768, 32767).astype(np.int16)
    ct_img = _nifti_from_volume(hu, vol.affine)
    ct_img.header.set_xyzt_units("mm", "sec")
    mask_img = _nifti_from_volume(ph.labels.astype(np.uint8), vol.affine)
    mask_img.header.set_xyzt_units("mm", "sec")
    paths = VersePaths(raw / f"{sub}{_CT_SUFFIX}", der / f"{sub}{_MASK_SUFFIX}", der / f"{sub}{_CTD_SUFFIX}")
    nib.save(ct_img, paths.ct)
    nib.save(mask_img, paths.mask)
    inv = np.linalg.inv(ct_img.affine)
    entries: list[dict[str, object]] = [{"direction": list(VERSE_AXCODES)}]
    for label in sorted(ph.centroids):
        ras = _LPS_TO_RAS[:3, :3] @ np.asarray(ph.centroids[label], dtype=np.float64)
        x, y, z = inv[:3, :3] @ ras + inv[:3, 3]
        entries.append(
            {"label": int(label), "X": round(float(x), 4), "Y": round(float(y), 4), "Z": round(float(z), 4)}
        )
    paths.centroids.write_text(json.dumps(entries, indent=1) + "\n")
    logger.info("wrote VerSe subject %s under %s", sub, root)
    return paths


# ------------------------------------------------------------------------------------------- reading
def _volume_from_nifti(img: nib.Nifti1Image) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """``[k, j, i]`` float32 array and LPS affine of a 3D NIfTI image, in its stored orientation."""
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VerseFormatError(f"expected a 3D image, got shape {data.shape}")
    return _kji_lps(data, img.affine)


def read_centroids(path: Path | str, image: nib.Nifti1Image) -> dict[int, tuple[float, float, float]]:
    """Centroids of a VerSe JSON as label -> LPS mm, using ``image`` (the CT or mask) for the geometry."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VerseFormatError(f"{path}: cannot read centroid JSON ({exc})") from exc
    if not isinstance(entries, list):
        raise VerseFormatError(f"{path}: expected a JSON list of centroid entries")
    direction: tuple[str, ...] | None = None
    points: list[tuple[int, float, float, float]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise VerseFormatError(f"{path}: entry {entry!r} is not an object")
        if "direction" in entry:
            direction = tuple(str(c).upper() for c in entry["direction"])
            continue
        try:
            label = int(entry["label"])
            xyz = float(entry["X"]), float(entry["Y"]), float(entry["Z"])
        except (KeyError, TypeError, ValueError) as exc:
            raise VerseFormatError(f"{path}: bad centroid entry {entry!r}") from exc
        if any(math.isnan(v) for v in xyz):
            continue
        points.append((label, *xyz))
    affine = image.affine
    if direction is not None:
        if len(direction) != 3 or sorted(nio.axcodes2ornt(direction)[:, 0].tolist()) != [0, 1, 2]:
            raise VerseFormatError(f"{path}: invalid direction {direction}")
        ornt = nio.ornt_transform(nio.io_orientation(image.affine), nio.axcodes2ornt(direction))
        affine = image.affine @ nio.inv_ornt_aff(ornt, image.shape[:3])
    out: dict[int, tuple[float, float, float]] = {}
    for label, x, y, z in points:
        ras = affine[:3, :3] @ np.array([x, y, z]) + affine[:3, 3]
        lps = _LPS_TO_RAS[:3, :3] @ ras
        out[label] = (float(lps[0]), float(lps[1]), float(lps[2]))
    return out


def read_verse_subject(
    ct_path: Path | str, mask_path: Path | str | None = None, centroid_path: Path | str | None = None
) -> VerseSubject:
    """Read one subject from explicit paths (mask and centroids optional)."""
    ct_path = Path(ct_path)
    try:
        ct_img = nib.load(str(ct_path))
    except Exception as exc:  # nibabel raises several types for bad files
        raise VerseFormatError(f"{ct_path}: cannot read NIfTI ({exc})") from exc
    array, affine = _volume_from_nifti(ct_img)  # type: ignore[arg-type]
    volume = Volume(array.astype(np.float32, copy=False), affine)
    labels = None
    paths = {"ct": ct_path}
    if mask_path is not None:
        mask_path = Path(mask_path)
        mask_img = nib.load(str(mask_path))
        m, m_aff = _volume_from_nifti(mask_img)  # type: ignore[arg-type]
        if m.shape != array.shape or not np.allclose(m_aff, affine, atol=1e-2):
            raise VerseFormatError(f"{mask_path}: mask grid differs from its CT {ct_path.name}")
        labels = np.rint(m).astype(np.uint8)
        paths["mask"] = mask_path
    centroids: dict[int, tuple[float, float, float]] = {}
    if centroid_path is not None:
        centroid_path = Path(centroid_path)
        centroids = read_centroids(centroid_path, ct_img)  # type: ignore[arg-type]
        paths["centroids"] = centroid_path
    name = ct_path.name[: -len(_CT_SUFFIX)] if ct_path.name.endswith(_CT_SUFFIX) else ct_path.stem
    return VerseSubject(name, volume, labels, centroids, paths)


def find_verse_subjects(root: Path | str) -> list[tuple[Path, Path | None, Path | None]]:
    """``(ct, mask or None, centroids or None)`` for every ``*_ct.nii.gz`` under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise VerseFormatError(f"{root}: not a folder")
    derived: dict[str, Path] = {}
    for p in root.rglob("*"):
        if p.name.endswith((_MASK_SUFFIX, _CTD_SUFFIX)):
            derived.setdefault(p.name, p)
    out = []
    for ct in sorted(root.rglob(f"*{_CT_SUFFIX}")):
        stem = ct.name[: -len(_CT_SUFFIX)]
        out.append((ct, derived.get(stem + _MASK_SUFFIX), derived.get(stem + _CTD_SUFFIX)))
    return out


def read_verse(root: Path | str) -> Iterator[VerseSubject]:
    """Every subject of a VerSe-format folder (VerSe 2019, VerSe 2020 or written by :func:`write_verse`).

    Subjects are read lazily, one at a time, in sorted file order.
    """
    found = find_verse_subjects(root)
    if not found:
        raise VerseFormatError(f"{root}: no *{_CT_SUFFIX} files found")
    for ct, mask, ctd in found:
        yield read_verse_subject(ct, mask, ctd)


# ------------------------------------------------------------------------------ engine inputs and outputs
def read_nifti_volume(path: Path) -> Volume:
    """A CT NIfTI file as a Volume (float32 HU, ``[k, j, i]``, LPS affine)."""
    img: Any = nib.load(str(path))
    if len(img.shape) != 3:
        raise ValueError(f"{path}: expected a 3D image, got shape {img.shape}")
    data = np.asarray(img.dataobj, dtype=np.float32)  # applies scl_slope / scl_inter
    return Volume(*_kji_lps(data, img.affine))


def write_nifti(path: Path, array_kji: npt.NDArray[np.generic], affine_lps: npt.NDArray[np.float64]) -> None:
    img = _nifti_image(array_kji, affine_lps)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))


def verse_centroids(landmarks: Sequence[Landmark], affine_lps: npt.NDArray[np.float64]
                    ) -> list[dict[str, object]]:
    """VerSe centroid list in the voxel frame of an image with ``affine_lps`` (as written by write_nifti)."""
    ras = _LPS_TO_RAS @ affine_lps
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
