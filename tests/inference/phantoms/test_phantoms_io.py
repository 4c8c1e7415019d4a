"""Phantom writers and readers: DICOM CT series (pydicom, SimpleITK, dciodvfy) and VerSe folders."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from inference.phantoms import Phantom, generate_phantom, write_dicom_series
from inference.training.verse import VerseFormatError, read_verse, read_verse_subject, write_verse

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return generate_phantom(seed=8, fov="lumbar", spacing=(3.0, 3.0, 2.5), implant_levels=(22, 23))


@pytest.fixture(scope="module")
def series(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_dicom_series(phantom, tmp_path_factory.mktemp("dicom"))


def test_dicom_geometry_and_pixels_with_pydicom(phantom: Phantom, series: list[Path]) -> None:
    vol = phantom.volume
    assert len(series) == vol.shape[0]
    datasets = [pydicom.dcmread(p) for p in series]
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    for k, ds in enumerate(datasets):
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        assert np.allclose(
            [float(v) for v in ds.ImagePositionPatient], vol.index_to_lps([0, 0, k]), atol=1e-3
        )
        assert np.allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
        assert np.allclose([float(v) for v in ds.PixelSpacing], [vol.spacing[1], vol.spacing[0]])
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(hu - vol.array[k]).max() <= 0.5 + 1e-4
    assert float(datasets[0].SliceThickness) == pytest.approx(phantom.spec.slice_thickness)


def test_dicom_round_trip_through_simpleitk(phantom: Phantom, series: list[Path]) -> None:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series[0].parent)))
    image = reader.Execute()
    assert image.GetSize() == phantom.volume.shape[::-1]
    for label, centroid in phantom.centroids.items():
        ijk = phantom.volume.lps_to_index(np.array(centroid))
        world = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
        assert np.linalg.norm(np.array(world) - np.array(centroid)) < 0.5, label
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    assert np.abs(array - phantom.volume.array).max() <= 0.5 + 1e-4


def test_dicom_loads_with_the_project_loader(phantom: Phantom, series: list[Path]) -> None:
    series_module = pytest.importorskip("dicom_io.series")
    vol = series_module.load_series(series[0].parent)
    assert vol.shape == phantom.volume.shape
    assert np.allclose(vol.affine, phantom.volume.affine, atol=1e-3)
    assert np.abs(vol.array - phantom.volume.array).max() <= 0.5 + 1e-4


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dicom_passes_dciodvfy(series: list[Path]) -> None:
    for path in (series[0], series[len(series) // 2], series[-1]):
        run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert not errors, errors


def test_dicom_uids_stable_and_salted(phantom: Phantom, tmp_path: Path) -> None:
    a = pydicom.dcmread(write_dicom_series(phantom, tmp_path / "a")[0])
    b = pydicom.dcmread(write_dicom_series(phantom, tmp_path / "b", uid_salt="again")[0])
    assert a.StudyInstanceUID != b.StudyInstanceUID
    assert a.PatientID == b.PatientID


def test_verse_round_trip(phantom: Phantom, tmp_path: Path) -> None:
    paths = write_verse(phantom, tmp_path, "ph8")
    assert paths.ct == tmp_path / "rawdata" / "sub-ph8" / "sub-ph8_ct.nii.gz"
    assert paths.mask == tmp_path / "derivatives" / "sub-ph8" / "sub-ph8_seg-vert_msk.nii.gz"
    assert paths.centroids == tmp_path / "derivatives" / "sub-ph8" / "sub-ph8_seg-subreg_ctd.json"
    entries = json.loads(paths.centroids.read_text())
    assert entries[0] == {"direction": ["P", "I", "R"]}
    assert {e["label"] for e in entries[1:]} == set(phantom.centroids)
    (subject,) = list(read_verse(tmp_path))
    assert subject.subject == "sub-ph8"
    for label, c in phantom.centroids.items():
        assert np.allclose(subject.centroids[label], c, atol=1e-3)
    # The reader returns the stored (P, I, R) grid: map voxel centres back and compare values.
    assert subject.labels is not None
    for c in phantom.centroids.values():
        i, j, k = np.round(subject.volume.lps_to_index(np.array(c))).astype(int)
        i0, j0, k0 = np.round(phantom.volume.lps_to_index(np.array(c))).astype(int)
        assert subject.labels[k, j, i] == phantom.labels[k0, j0, i0]
        assert subject.volume.array[k, j, i] == np.rint(phantom.volume.array[k0, j0, i0])
    assert (subject.labels == 22).sum() == (phantom.labels == 22).sum()


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)


def _real_verse_like(root: Path, stem: str, axcodes: tuple[str, str, str]) -> dict[int, np.ndarray]:
    """A small VerSe-style subject stored in ``axcodes`` orientation, centroids in P, I, R voxels."""
    sub = stem.split("_")[0]
    shape = (40, 30, 50)
    # A RAS affine with 1 x 1.2 x 2 mm voxels in the requested orientation.
    ornt = nio.axcodes2ornt(axcodes)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    spacing = (1.0, 1.2, 2.0)
    for axis, (world_axis, sign) in enumerate(ornt):
        affine[int(world_axis), axis] = sign * spacing[axis]
    affine[:3, 3] = (12.0, -40.0, 300.0)
    ct = np.full(shape, -1000, dtype=np.int16)
    mask = np.zeros(shape, dtype=np.uint8)
    points = {20: (10.0, 12.0, 20.0), 21: (25.5, 14.0, 33.0)}  # voxel indices in the stored image
    for label, (a, b, c) in points.items():
        mask[int(a) - 2 : int(a) + 3, int(b) - 2 : int(b) + 3, int(c) - 2 : int(c) + 3] = label
    img = nib.Nifti1Image(ct, affine)
    _write_nifti(root / "rawdata" / sub / f"{stem}_ct.nii.gz", ct, affine)
    _write_nifti(root / "derivatives" / sub / f"{stem}_seg-vert_msk.nii.gz", mask, affine)
    # Centroids as VerSe stores them: voxel coordinates of the image reoriented to P, I, R.
    to_pir = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(("P", "I", "R")))
    pir_affine = img.as_reoriented(to_pir).affine
    entries: list[dict[str, object]] = [{"direction": ["P", "I", "R"]}]
    expected: dict[int, np.ndarray] = {}
    for label, p in points.items():
        ras = affine[:3, :3] @ np.array(p) + affine[:3, 3]
        x, y, z = np.linalg.inv(pir_affine)[:3, :3] @ ras + np.linalg.inv(pir_affine)[:3, 3]
        entries.append({"label": label, "X": float(x), "Y": float(y), "Z": float(z)})
        expected[label] = LPS_TO_RAS[:3, :3] @ ras
    entries.append({"label": 22, "X": float("nan"), "Y": 1.0, "Z": 2.0})  # skipped like VerSe's loader
    ctd = root / "derivatives" / sub / f"{stem}_seg-subreg_ctd.json"
    ctd.write_text(json.dumps(entries).replace("NaN", '"nan"'))
    return expected


@pytest.mark.parametrize(
    "stem,axcodes",
    [
        ("sub-verse004", ("L", "P", "S")),
        ("sub-gl003_dir-ax", ("R", "A", "S")),
        ("sub-verse400_split-verse290", ("P", "I", "R")),
    ],
)
def test_reads_verse_2019_and_2020_naming(tmp_path: Path, stem: str, axcodes: tuple[str, str, str]) -> None:
    expected = _real_verse_like(tmp_path, stem, axcodes)
    (subject,) = list(read_verse(tmp_path))
    assert subject.subject == stem
    assert subject.labels is not None and subject.labels.shape == subject.volume.shape
    assert set(subject.centroids) == {20, 21}
    for label, lps in expected.items():
        assert np.allclose(subject.centroids[label], lps, atol=1e-6)
        # The centroid falls in the labelled cube of the mask.
        i, j, k = np.round(subject.volume.lps_to_index(lps)).astype(int)
        assert subject.labels[k, j, i] == label


def test_verse_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(VerseFormatError, match="no"):
        list(read_verse(tmp_path))
    bad = tmp_path / "rawdata" / "sub-x" / "sub-x_ct.nii.gz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a nifti")
    with pytest.raises(VerseFormatError, match="sub-x_ct"):
        read_verse_subject(bad)
