"""A small synthetic CT series written with pydicom, its Volume and a Result on it (test data).

Used until ``inference.phantoms`` is there, and kept afterwards as the smallest input that exercises
the result writers: a few 64x64 axial slices with proper geometry (Image Position/Orientation, Pixel
Spacing, one Frame of Reference), and a mask/landmarks in patient coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_io.result import Landmark, Result
from dicom_io.seg import build_seg
from dicom_io.volume import SourceReference, Volume, affine_from_geometry


@dataclass
class CTSeries:
    datasets: list[Dataset]
    files: list[Path]
    volume: Volume


def write_ct_series(
    directory: Path,
    *,
    slices: int = 12,
    rows: int = 64,
    columns: int = 64,
    pixel_spacing: tuple[float, float] = (0.8, 0.8),
    slice_step: float = 2.5,
    origin: tuple[float, float, float] = (-25.6, -20.0, 140.0),
) -> CTSeries:
    """Write a head-first supine axial CT series (slices descending in z, as scanners store them)."""
    directory.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    hu = rng.normal(40.0, 10.0, size=(slices, rows, columns)).astype(np.float32)
    datasets: list[Dataset] = []
    files: list[Path] = []
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.PatientName = "Phantom^Spine"
        ds.PatientID = "SPINE-TEST-001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20240301"
        ds.StudyTime = "101500"
        ds.StudyID = "1"
        ds.AccessionNumber = "ACC0001"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT spine test"
        ds.Modality = "CT"
        ds.SeriesNumber = 2
        ds.SeriesDescription = "Axial 2.5 mm"
        ds.InstanceNumber = k + 1
        ds.Manufacturer = "spine-agent tests"
        ds.ManufacturerModelName = "pydicom"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionNumber = 1
        ds.KVP = 120
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] - k * slice_step]
        ds.SliceLocation = origin[2] - k * slice_step
        ds.SliceThickness = slice_step
        ds.PixelSpacing = list(pixel_spacing)
        ds.Rows = rows
        ds.Columns = columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 400
        ds.WindowWidth = 1800
        ds.PixelData = (hu[k] + 1024).round().astype(np.int16).tobytes()
        path = directory / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        datasets.append(ds)
        files.append(path)
    direction = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    affine = affine_from_geometry(origin, direction, (pixel_spacing[1], pixel_spacing[0], slice_step))
    source = SourceReference(
        study_instance_uid=study,
        series_instance_uid=series,
        frame_of_reference_uid=frame_of_reference,
        sop_class_uid=CTImageStorage,
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in datasets),
        patient={"PatientID": "SPINE-TEST-001", "PatientName": "Phantom^Spine"},
    )
    return CTSeries(datasets=datasets, files=files, volume=Volume(hu, affine, source))


def labelled_result(volume: Volume, labels: tuple[int, ...] = (22, 23, 24)) -> Result:
    """Box-shaped vertebrae along k with VerSe ``labels`` and their centroids as landmarks."""
    mask = np.zeros(volume.shape, dtype=np.uint8)
    nk = volume.shape[0]
    per = (nk - 2) // len(labels)
    if per < 2:
        raise ValueError(f"{nk} slices are too few for {len(labels)} vertebrae (2 slices + a gap each)")
    landmarks = []
    for index, label in enumerate(labels):
        k0 = 1 + index * per
        k1 = min(nk - 1, k0 + per - 1)  # one empty slice between neighbours: an intervertebral disc
        mask[k0:k1, 24:40, 20:44] = label
        ks, js, is_ = np.nonzero(mask == label)
        centroid = volume.index_to_lps([is_.mean(), js.mean(), ks.mean()])
        landmarks.append(
            Landmark(label, (float(centroid[0]), float(centroid[1]), float(centroid[2])), 0.9 - 0.1 * index)
        )
    return Result(mask=mask, landmarks=landmarks, timings={"stage1": 0.1}, model_version="test-1.0")


def binary_result(volume: Volume, labels: tuple[int, ...] = (22, 23, 24)) -> Result:
    """The same vertebrae, with a column-only (0/1) mask as stage 1 produces it."""
    labelled = labelled_result(volume, labels)
    return Result(
        mask=(labelled.mask > 0).astype(np.uint8),
        landmarks=labelled.landmarks,
        timings=labelled.timings,
        model_version=labelled.model_version,
    )


def write_seg(series: CTSeries, path: Path) -> Path:
    """A column-only SEG of ``series`` (series number 9) saved at ``path``: a result file to send."""
    build_seg(
        series.volume, series.datasets, binary_result(series.volume), series_number=9, algorithm_version="v"
    ).save_as(path)
    return path
