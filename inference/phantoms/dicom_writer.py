"""Write a phantom as a DICOM CT series (CT Image Storage, one file per slice).

Modules written (PS3.3 A.3 CT Image IOD): Patient, General Study, Patient Study, General Series, Frame of
Reference, General Equipment, General Acquisition, General Image, Image Plane, Image Pixel, CT Image,
VOI LUT and SOP Common. Pixels are stored the classic CT way: unsigned 12 bits with Rescale Intercept
-1024 (HU -1024..3071). Demographics are made up, deterministic per phantom seed, and clearly synthetic.

UIDs are derived from the phantom's spec (``2.25`` + a hash), so writing the same phantom twice gives the
same UIDs; pass ``uid_salt`` to get a fresh study (for example when sending the same phantom again).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

from inference.phantoms.generate import Phantom

logger = logging.getLogger(__name__)

#: Stored value = HU - RESCALE_INTERCEPT, kept within 12 bits.
RESCALE_INTERCEPT = -1024.0
STORED_MAX = 4095

_GIVEN = ("Alex", "Sam", "Robin", "Kim", "Jo", "Charlie", "Dana", "Eli", "Noa", "Ari", "Mika", "Toni")
_FAMILY = ("Phantom", "Synthetic", "Testcase", "Model", "Simulated")
_BODY_PART = {
    "whole": "SPINE",
    "cervical": "CSPINE",
    "thoracic": "TSPINE",
    "lumbar": "LSPINE",
    "abdomen_pelvis": "ABDOMEN",
    "chest": "CHEST",
    "thoracolumbar": "SPINE",
}


def phantom_uid(ph: Phantom, what: str, salt: str = "") -> str:
    """A deterministic UID (``2.25.<decimal>``, PS3.5 B.2) for one object of a phantom."""
    spec = ph.spec
    key = f"{spec.seed}|{spec.fov}|{spec.spacing}|{spec.shape}|{spec.origin}|{salt}|{what}"
    digest = hashlib.sha256(key.encode()).digest()[:15]  # 120 bits -> at most 37 digits
    return f"2.25.{int.from_bytes(digest, 'big')}"


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """Identifiers and made-up demographics of a written series."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    study_date: str
    study_time: str
    accession: str


def series_info(ph: Phantom, uid_salt: str = "") -> SeriesInfo:
    """The identifiers a phantom's series is written with."""
    seed = ph.spec.seed
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 4242])
    age = int(rng.integers(20, 90))
    date = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 700)))
    birth = date.replace(year=date.year - age) if not (date.month == 2 and date.day == 29) else date
    sex = str(rng.choice(["F", "M", "O"], p=[0.48, 0.48, 0.04]))
    name = f"{_FAMILY[int(rng.integers(len(_FAMILY)))]}^{_GIVEN[int(rng.integers(len(_GIVEN)))]}"
    seconds = int(rng.integers(7 * 3600, 19 * 3600))
    return SeriesInfo(
        patient_name=name,
        patient_id=f"PH{seed:08d}"[-16:],
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        study_uid=phantom_uid(ph, "study", uid_salt),
        series_uid=phantom_uid(ph, "series", uid_salt),
        frame_of_reference_uid=phantom_uid(ph, "frame", uid_salt),
        study_date=date.strftime("%Y%m%d"),
        study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
        accession="A" + phantom_uid(ph, "accession", uid_salt)[-12:],
    )


def _dataset_for_slice(ph: Phantom, info: SeriesInfo, k: int, stored: np.ndarray, uid_salt: str) -> Dataset:
    spec = ph.spec
    vol = ph.volume
    nk, nj, ni = vol.shape
    si, sj, sk = vol.spacing
    position = vol.index_to_lps(np.array([0.0, 0.0, float(k)]))
    instance = nk - k  # numbered from the head down, as scanners usually do
    sop_uid = phantom_uid(ph, f"sop{k}", uid_salt)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "SPINE_AGENT_PH"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = pydicom.uid.UID(sop_uid)
    ds.StudyDate = info.study_date
    ds.SeriesDate = info.study_date
    ds.AcquisitionDate = info.study_date
    ds.ContentDate = info.study_date
    ds.StudyTime = info.study_time
    ds.SeriesTime = info.study_time
    ds.AcquisitionTime = info.study_time
    ds.ContentTime = info.study_time
    ds.AccessionNumber = info.accession
    ds.Modality = "CT"
    ds.Manufacturer = "spine-agent"
    ds.InstitutionName = "Synthetic Phantom Lab"
    ds.ReferringPhysicianName = ""
    ds.StationName = "PHANTOM"
    ds.StudyDescription = "Synthetic spine CT phantom"
    ds.SeriesDescription = f"Phantom {spec.fov} seed {spec.seed} {spec.slice_thickness:g}mm"[:64]
    ds.ManufacturerModelName = "spine-agent phantom generator"
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = info.birth_date
    ds.PatientSex = info.sex
    ds.PatientIdentityRemoved = "NO"
    ds.BodyPartExamined = _BODY_PART.get(spec.fov, "SPINE")
    ds.SliceThickness = f"{spec.slice_thickness:.4g}"
    ds.KVP = f"{spec.kvp:g}"
    ds.DataCollectionDiameter = "500"
    ds.SoftwareVersions = "spine-agent phantoms 1"
    ds.ReconstructionDiameter = f"{max(ni * si, nj * sj):.2f}"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = info.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{float(v):.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{float(v):.6f}" for v in (*vol.direction[:, 0], *vol.direction[:, 1])]
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{float(position[2]):.4f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = nj
    ds.Columns = ni
    # Pixel Spacing is (between rows, between columns) = (j step, i step).
    ds.PixelSpacing = [f"{sj:.6f}", f"{si:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = ["40", "400"]
    ds.WindowWidth = ["400", "1800"]
    ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "BONE"]
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = stored.tobytes()
    return ds


def write_dicom_series(ph: Phantom, out_dir: Path | str, *, uid_salt: str = "") -> list[Path]:
    """Write the phantom as a CT series into ``out_dir``; returns the files in slice (``k``) order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = series_info(ph, uid_salt)
    hu = ph.volume.array
    paths: list[Path] = []
    for k in range(hu.shape[0]):
        stored = np.clip(np.rint(hu[k] - RESCALE_INTERCEPT), 0, STORED_MAX).astype("<u2")
        ds = _dataset_for_slice(ph, info, k, stored, uid_salt)
        path = out / f"CT{ds.InstanceNumber:05d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d CT slices to %s", len(paths), out)
    return paths
