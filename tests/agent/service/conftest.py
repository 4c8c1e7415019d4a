"""Small synthetic CT series written with pydicom, and a running Storage SCP on a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from agent.service.scp import StorageSCP
from config import Settings
from storage import Ledger
from storage.spool import Spool
from tests.conftest import free_port
from tests.dicom_io.conftest import ct_series  # noqa: F401  (fixture, for test_sender)
from tests.support_tls import pki  # noqa: F401  (fixture, for test_tls and test_sender_tls)

#: The calling AE title the tests' SCUs use, allowed by the ``scp`` fixture.
TEST_SCU_AE = "TESTSCU"

PATIENT = {
    "PatientName": "Phantom^Spine",
    "PatientID": "RCV-001",
    "PatientBirthDate": "19700101",
    "PatientSex": "O",
    "StudyDate": "20260301",
    "StudyTime": "101500",
    "AccessionNumber": "ACC42",
    "ReferringPhysicianName": "Ref^Doc",
    "StudyID": "7",
}


@dataclass
class SyntheticSeries:
    """What was written: files in stacking order, the HU values and the geometry."""

    files: list[Path]
    hu: npt.NDArray[np.float32]  # [k, j, i] in the order the slices were written
    positions: list[tuple[float, float, float]]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    sop_uids: list[str] = field(default_factory=list)


def ct_dataset(
    *,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    position: Sequence[float],
    pixels: npt.NDArray[np.int16],
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    pixel_spacing: Sequence[float] = (0.8, 0.8),
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    modality: str = "CT",
    instance_number: int = 1,
    sop_uid: str | None = None,
) -> Dataset:
    """One single-frame CT Image Storage data set (int16 stored values, HU = stored - 1024)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    uid = UID(sop_uid) if sop_uid else generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.Modality = modality
    ds.SeriesNumber = 3
    ds.InstanceNumber = instance_number
    ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SliceThickness = 2.5
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = pixels.astype("<i2").tobytes()
    return ds


def write_series(
    directory: Path,
    *,
    slices: int = 12,
    rows: int = 16,
    columns: int = 16,
    step: float = 2.5,
    z0: float = 100.0,
    positions: Sequence[Sequence[float]] | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    image_types: Sequence[Sequence[str]] | None = None,
    modality: str = "CT",
    seed: int = 3,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> SyntheticSeries:
    """A head-first axial series, slices written top-down (descending z) as scanners store them."""
    directory.mkdir(parents=True, exist_ok=True)
    study = study_uid or generate_uid()
    series = series_uid or generate_uid()
    frame_of_reference = generate_uid()
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 2000, size=(slices, rows, columns)).astype(np.int16)
    coords: list[tuple[float, float, float]] = (
        [(float(p[0]), float(p[1]), float(p[2])) for p in positions]
        if positions
        else [(-6.4, -6.4, z0 - k * step) for k in range(slices)]
    )
    files: list[Path] = []
    uids: list[str] = []
    for k in range(slices):
        ds = ct_dataset(
            study_uid=study,
            series_uid=series,
            frame_of_reference_uid=frame_of_reference,
            position=coords[k],
            pixels=stored[k],
            orientation=orientation,
            image_type=image_types[k] if image_types else ("ORIGINAL", "PRIMARY", "AXIAL"),
            modality=modality,
            instance_number=k + 1,
        )
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        uids.append(str(ds.SOPInstanceUID))
    return SyntheticSeries(
        files=files,
        hu=stored.astype(np.float32) - 1024.0,
        positions=coords,
        study_uid=study,
        series_uid=series,
        frame_of_reference_uid=frame_of_reference,
        sop_uids=uids,
    )


def write_enhanced_ct(
    path: Path, *, frames: int = 12, rows: int = 16, columns: int = 16, step: float = 2.0, seed: int = 5
) -> SyntheticSeries:
    """One multi-frame Enhanced CT instance, frames stored bottom-up, rescale in shared groups."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 3000, size=(frames, rows, columns)).astype(np.uint16)
    study, series, frame_of_reference, sop = (generate_uid() for _ in range(4))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = frame_of_reference
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0

    def item(**values: object) -> Dataset:
        out = Dataset()
        for key, value in values.items():
            setattr(out, key, value)
        return out

    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([item(PixelSpacing=[0.7, 0.7], SliceThickness=step)])
    shared.PlaneOrientationSequence = DicomSequence([item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])])
    shared.PixelValueTransformationSequence = DicomSequence(
        [item(RescaleIntercept=-1000, RescaleSlope=1, RescaleType="HU")]
    )
    frame_type = item(FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"])
    shared.CTImageFrameTypeSequence = DicomSequence([frame_type])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    positions = [(-5.6, -5.6, -50.0 + f * step) for f in range(frames)]
    per_frame = []
    for f in range(frames):
        groups = Dataset()
        groups.PlanePositionSequence = DicomSequence([item(ImagePositionPatient=list(positions[f]))])
        per_frame.append(groups)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return SyntheticSeries(
        files=[path],
        hu=stored.astype(np.float32) - 1000.0,
        positions=positions,
        study_uid=study,
        series_uid=series,
        frame_of_reference_uid=frame_of_reference,
        sop_uids=[sop],
    )


def scp_settings(tmp_path: Path, **dicom: object) -> Settings:
    """Settings for an SCP on a free loopback port with its spool under ``tmp_path``."""
    values: dict[str, object] = {
        "ae_title": "SPINEAGENT",
        "bind_address": "127.0.0.1",
        "port": free_port(),
        "allowed_calling_aes": [TEST_SCU_AE],
        "stable_age_s": 30.0,
    }
    values.update(dicom)
    return Settings(
        dicom=values,  # type: ignore[arg-type]
        storage={"spool_dir": tmp_path / "spool", "disk_reserve_mb": 0},  # type: ignore[arg-type]
    )


StartSCP = Callable[..., StorageSCP]


@pytest.fixture
def start_scp(tmp_path: Path, ledger: Ledger) -> Iterator[StartSCP]:
    """Start an SCP with ``scp_settings(tmp_path, **overrides)``; every one started is stopped after."""
    started: list[StorageSCP] = []

    def start(**dicom: object) -> StorageSCP:
        settings = scp_settings(tmp_path, **dicom)
        scp = StorageSCP(settings, ledger, spool=Spool(settings.storage.spool_dir))
        scp.start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


@pytest.fixture
def scp(start_scp: StartSCP) -> StorageSCP:
    """A running SCP that allows calling AE ``TESTSCU``."""
    return start_scp()
