"""Received instances of one series -> one :class:`~dicom_io.volume.Volume` in HU and LPS millimetres.

Strict about the geometry the engine relies on, tolerant about everything else (highdicom's
"strict when writing, tolerant when reading"). Steps:

1. list ``*.dcm`` files (temporary files of the spool are never listed); refuse more than
   ``max_instances``;
2. read every header with ``stop_before_pixels`` and keep a small record per slice (single-frame CT
   Image Storage) or per frame (multi-frame Enhanced CT, from its functional groups);
3. drop localizers (ImageType / FrameType value 3 ``LOCALIZER``) and refuse what cannot be one volume:
   non-CT, several series or frames of reference, mixed orientations or image sizes, gantry tilt,
   duplicated positions, missing slices, non-uniform spacing, too few slices;
4. sort along the slice normal (``k`` grows along ``row x column``, so the affine is right-handed),
   preallocate the float32 volume and fill it slice by slice (frame by frame for Enhanced CT), applying
   Rescale Slope/Intercept. Peak memory is the volume plus one decoded slice and the small headers.

Each file is parsed once. The header pass remembers where parsing stopped (the Pixel Data element);
for uncompressed little-endian single-frame instances the pixel pass reads the pixel bytes from there
straight into a reused slice buffer, exactly as ``pydicom.pixels.pixel_array`` would decode them (same
dtype, same unused-bit correction). Anything else (encapsulated, Deflated or big-endian syntaxes,
multi-frame files, an unusual or unreadable Image Pixel module, a short file) goes through pydicom's
decoders as before, so what is refused and why does not depend on the fast path.

Every refusal is a :class:`~dicom_io.errors.SeriesRejected` whose message says what was found and what
to do; it never contains patient data. A malformed file (a corrupt VR, a value whose length does not fit
its VR, text where a number belongs, a length swallowing the rest of the file) is refused the same way,
naming the file and the attribute: header values are read through small helpers that turn every pydicom
or conversion error into a :class:`SeriesRejected`, never quoting more than a short printable value, and
every reason is one printable line of at most :data:`MAX_REASON_LENGTH` characters.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.datadict import dictionary_description, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder, iter_pixels, pixel_array
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    JPEGLSNearLossless,
    LegacyConvertedEnhancedCTImageStorage,
)

from dicom_io.errors import SeriesRejected
from dicom_io.volume import SourceReference, Volume

log = logging.getLogger(__name__)

#: Storage SOP classes the loader reads.
CT_SOP_CLASSES = frozenset({CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})
_MULTIFRAME_SOP_CLASSES = frozenset({EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})

#: Patient and study attributes copied from the source onto results (Type 2 in the Patient and General
#: Study modules, so always present in the dict, "" when the source lacks them).
PATIENT_STUDY_ATTRIBUTES: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)

#: Defaults of :func:`load_series`.
DEFAULT_MAX_INSTANCES = 3000
DEFAULT_MIN_SLICES = 10
#: Relative deviation of a slice gap from the median gap still called uniform (positions are often
#: written with 2-3 decimals, so a small tolerance is needed).
DEFAULT_SPACING_TOLERANCE = 0.05
#: Direction cosines equal within this are "the same orientation".
_ORIENTATION_TOLERANCE = 1e-3
#: A gap this many times the median gap means slices are missing rather than non-uniform spacing.
_MISSING_SLICE_FACTOR = 1.5
#: Longest refusal reason (one line an admin reads in ``spine-agent jobs list``; the worker prefixes it).
MAX_REASON_LENGTH = 200
#: Longest header value quoted in a reason; longer or non-printable values are described, not quoted.
_MAX_QUOTED_VALUE = 24


@dataclass(frozen=True)
class _Slice:
    """Header facts of one 2D image (a single-frame instance or one frame of a multi-frame one)."""

    path: Path
    frame: int | None  # 0-based frame index in a multi-frame instance, None for single-frame
    sop_instance_uid: str
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    rows: int
    columns: int
    slope: float
    intercept: float
    localizer: bool


@dataclass(frozen=True)
class _NativePixels:
    """Where and how the uncompressed pixel data of a single-frame instance lies in its file.

    ``offset`` is where the header pass stopped: the start of the (7FE0,0010) element's tag.
    """

    offset: int
    implicit_vr: bool
    dtype: str  # numpy dtype of one stored value, e.g. "<i2"
    unused_bits: int  # Bits Allocated - Bits Stored (shifted out as pydicom does)


@dataclass(frozen=True)
class _Instance:
    """Header facts shared by all slices of one instance file."""

    path: Path
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    transfer_syntax: str
    samples_per_pixel: int
    photometric: str
    tilt: float | None
    patient: dict[str, str]
    native: _NativePixels | None = None  # None: decode through pydicom.pixels


def load_series(
    directory: Path | str,
    *,
    max_instances: int = DEFAULT_MAX_INSTANCES,
    min_slices: int = DEFAULT_MIN_SLICES,
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
    headers: list[Dataset] | None = None,
) -> Volume:
    """Load every ``*.dcm`` in ``directory`` as one CT volume; raise :class:`SeriesRejected` with the reason.

    When ``headers`` is given, it receives the header (no pixel data) of each instance the volume was built
    from, in slice order, one per instance: what the SEG and SR writers need, without reading them again.

    ``max_instances`` bounds both the number of files and the number of slices (frames) of the series
    (``dicom.max_series_instances``); ``min_slices`` is the fewest non-localizer slices accepted;
    ``spacing_tolerance`` the relative deviation of a slice gap from the median gap still called uniform.
    """
    folder = Path(directory)
    files = sorted(p for p in folder.glob("*.dcm") if not p.name.startswith(".") and p.is_file())
    if not files:
        raise _rejected(f"no DICOM instances (*.dcm) in the series folder {folder.name}")
    if len(files) > max_instances:
        raise SeriesRejected(
            f"series has {len(files)} instances, more than the configured maximum of {max_instances} "
            "(dicom.max_series_instances)"
        )

    instances: list[_Instance] = []
    slices: list[_Slice] = []
    datasets: dict[str, Dataset] = {}
    for path in files:
        instance, instance_slices, ds = _read_header(path)
        instances.append(instance)
        slices.extend(instance_slices)
        if headers is not None:
            datasets[str(ds.get("SOPInstanceUID", ""))] = ds
    first = _check_instances(instances)

    kept = [s for s in slices if not s.localizer]
    dropped = len(slices) - len(kept)
    if dropped:
        log.info("series: dropped %d localizer image(s) of %d", dropped, len(slices))
    if len(kept) > max_instances:
        raise SeriesRejected(
            f"series has {len(kept)} slices, more than the configured maximum of {max_instances} "
            "(dicom.max_series_instances)"
        )
    if len(kept) < min_slices:
        what = f" after dropping {dropped} localizer(s)" if dropped else ""
        raise SeriesRejected(
            f"series has {len(kept)} usable slice(s){what}; at least {min_slices} are needed for a volume"
        )

    ordered, affine = _geometry(kept, first.tilt, spacing_tolerance)
    array = _read_pixels(ordered, {inst.path: inst for inst in instances})
    source = SourceReference(
        study_instance_uid=first.study_instance_uid,
        series_instance_uid=first.series_instance_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        sop_class_uid=first.sop_class_uid,
        sop_instance_uids=tuple(s.sop_instance_uid for s in ordered),
        patient=dict(first.patient),
    )
    if headers is not None:
        headers.extend(datasets[uid] for uid in dict.fromkeys(source.sop_instance_uids))
    return Volume(array=array, affine=affine, source=source)


# --- headers --------------------------------------------------------------------------------------------


def _read_header(path: Path) -> tuple[_Instance, list[_Slice], Dataset]:
    """Header facts of one file; anything malformed is a :class:`SeriesRejected` naming file and attribute."""
    try:
        with open(path, "rb") as fh:
            ds = dcmread(fh, stop_before_pixels=True)
            stopped_at = fh.tell()  # the start of the pixel data element (or the end of the file)
    except Exception as exc:
        raise _rejected(f"instance {path.name} is not a readable DICOM file: {_cause(exc)}") from None
    try:
        instance, instance_slices, _ = _header_facts(ds, path)
    except SeriesRejected:
        raise
    except _BadValue as bad:
        what = "lacks usable geometry" if bad.keyword in _GEOMETRY_KEYWORDS else "has a malformed header"
        raise _rejected(f"instance {path.name} {what}: {bad}") from None
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        # Our own ValueErrors from _frames (missing functional groups) and absent sequences/attributes.
        raise _rejected(
            f"instance {path.name} lacks usable geometry (position, orientation, spacing): {_cause(exc)}"
        ) from None
    except Exception as exc:  # anything else pydicom raises on a corrupt header
        raise _rejected(f"instance {path.name} has a malformed header: {_cause(exc)}") from None
    native = _native_pixels(ds, instance, stopped_at)
    if native is not None:
        instance = replace(instance, native=native)
    return instance, instance_slices, ds


#: Transfer syntaxes whose pixel data the loader reads itself (uncompressed, little endian, not
#: deflated), each with whether its data set is implicit VR.
_NATIVE_SYNTAXES: dict[str, bool] = {ImplicitVRLittleEndian: True, ExplicitVRLittleEndian: False}
#: The Image Pixel elements ``pydicom.pixels.pixel_array`` reads (Samples per Pixel, Photometric
#: Interpretation, Planar Configuration, Number of Frames, Rows, Columns, Bits Allocated, Bits Stored,
#: Pixel Representation), and the Extended Offset Table (left to pydicom).
_IMAGE_PIXEL_TAGS = (
    0x00280002,
    0x00280004,
    0x00280006,
    0x00280008,
    0x00280010,
    0x00280011,
    0x00280100,
    0x00280101,
    0x00280103,
)
_EXTENDED_OFFSETS = (0x7FE00001, 0x7FE00002)


def _native_pixels(ds: Dataset, instance: _Instance, offset: int) -> _NativePixels | None:
    """How to read this instance's pixels without parsing it again; None: leave it to pydicom.

    Only the plain case: a single-frame instance in a native little-endian syntax whose Image Pixel
    values are well-formed integers pydicom would decode to a plain integer array. Never raises: an
    unusual value only means the pixels are decoded by pydicom, which refuses or reads them as before.
    """
    try:
        implicit = _NATIVE_SYNTAXES.get(instance.transfer_syntax)
        if implicit is None or instance.sop_class_uid in _MULTIFRAME_SOP_CLASSES or "NumberOfFrames" in ds:
            return None
        if ds.original_encoding != (implicit, True) or any(tag in ds for tag in _EXTENDED_OFFSETS):
            return None
        # pydicom's decoder reads every Image Pixel value present: one it cannot decode is its refusal.
        values: dict[int, Any] = {tag: ds[tag].value for tag in _IMAGE_PIXEL_TAGS if tag in ds}
        if values.get(0x00280002) != 1 or values.get(0x00280004) not in ("MONOCHROME1", "MONOCHROME2"):
            return None
        numbers = [values.get(tag) for tag in (0x00280100, 0x00280101, 0x00280103, 0x00280010, 0x00280011)]
        if not all(type(v) is int for v in numbers):
            return None  # absent, several values, a string, a bool: not the plain case
        allocated, stored, representation, rows, columns = cast(list[int], numbers)
        if type(values[0x00280002]) is not int or type(values[0x00280004]) is not str:
            return None
        if allocated not in (8, 16, 32) or not 1 <= stored <= allocated or representation not in (0, 1):
            return None
        if not (0 < rows <= 0xFFFF and 0 < columns <= 0xFFFF):
            return None
        kind = "i" if representation else "u"
        return _NativePixels(offset, implicit, f"<{kind}{allocated // 8}", allocated - stored)
    except Exception:
        return None


def _header_facts(ds: Dataset, path: Path) -> tuple[_Instance, list[_Slice], Dataset]:
    sop_class = _text(ds, "SOPClassUID")
    modality = _text(ds, "Modality")
    if sop_class not in CT_SOP_CLASSES:
        name = _shown(UID(sop_class).name, 64) if sop_class else "no SOP Class UID"
        raise _rejected(
            f"instance {path.name} is {name}, not a CT image (modality {_shown(modality, 16) or '?'})"
        )
    if modality != "CT":
        raise _rejected(f"instance {path.name} has modality {_shown(modality, 16) or 'empty'}, not CT")
    meta = getattr(ds, "file_meta", None)
    instance = _Instance(
        path=path,
        sop_class_uid=sop_class,
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        modality=modality,
        transfer_syntax=_text(meta, "TransferSyntaxUID") if meta is not None else "",
        samples_per_pixel=_int(ds, "SamplesPerPixel", 1),
        photometric=_text(ds, "PhotometricInterpretation"),
        tilt=_float(ds, "GantryDetectorTilt", None),
        patient={key: _text(ds, key) for key in PATIENT_STUDY_ATTRIBUTES},
    )
    sop_uid = _text(ds, "SOPInstanceUID")
    if sop_class in _MULTIFRAME_SOP_CLASSES:
        return instance, list(_frames(ds, path, sop_uid)), ds
    return instance, [_single_frame(ds, path, sop_uid)], ds


def _single_frame(ds: Dataset, path: Path, sop_uid: str) -> _Slice:
    return _Slice(
        path=path,
        frame=None,
        sop_instance_uid=sop_uid,
        position=_floats(ds, "ImagePositionPatient", 3),
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        pixel_spacing=_floats(ds, "PixelSpacing", 2),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        slope=_float(ds, "RescaleSlope", 1.0) or 1.0,
        intercept=_float(ds, "RescaleIntercept", 0.0) or 0.0,
        localizer=_is_localizer(_value(ds, "ImageType")),
    )


def _frames(ds: Dataset, path: Path, sop_uid: str) -> Iterator[_Slice]:
    """One record per frame of an Enhanced (or Legacy Converted Enhanced) CT instance."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()
    per_frame = ds.PerFrameFunctionalGroupsSequence
    nframes = _int(ds, "NumberOfFrames", 1)
    if len(per_frame) != nframes:
        raise ValueError(f"{len(per_frame)} per-frame functional groups for {nframes} frames")
    instance_localizer = _is_localizer(_value(ds, "ImageType"))
    for index, frame_groups in enumerate(per_frame):

        def group(sequence: str, groups: Dataset = frame_groups) -> Dataset | None:
            for source in (groups, shared):
                if sequence in source and len(source[sequence].value):
                    item: Dataset = source[sequence].value[0]
                    return item
            return None

        position = group("PlanePositionSequence")
        orientation = group("PlaneOrientationSequence")
        measures = group("PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise ValueError(f"frame {index + 1} has no plane position, orientation or pixel measures")
        rescale = group("PixelValueTransformationSequence")
        frame_type = group("CTImageFrameTypeSequence")
        yield _Slice(
            path=path,
            frame=index,
            sop_instance_uid=sop_uid,
            position=_floats(position, "ImagePositionPatient", 3),
            orientation=_floats(orientation, "ImageOrientationPatient", 6),
            pixel_spacing=_floats(measures, "PixelSpacing", 2),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            slope=(_float(rescale, "RescaleSlope", 1.0) or 1.0) if rescale is not None else 1.0,
            intercept=(_float(rescale, "RescaleIntercept", 0.0) or 0.0) if rescale is not None else 0.0,
            localizer=instance_localizer
            or (frame_type is not None and _is_localizer(_value(frame_type, "FrameType"))),
        )


def _check_instances(instances: Sequence[_Instance]) -> _Instance:
    """Refuse a folder that is not one CT series in one frame of reference; return the first instance."""
    first = instances[0]
    for what, attr in (
        ("Series Instance UIDs", "series_instance_uid"),
        ("Study Instance UIDs", "study_instance_uid"),
        ("Frame of Reference UIDs", "frame_of_reference_uid"),
    ):
        values = {getattr(inst, attr) for inst in instances}
        if len(values) > 1:
            raise SeriesRejected(f"the instances carry {len(values)} different {what}; expected one series")
    if not first.frame_of_reference_uid:
        raise SeriesRejected("the series has no Frame of Reference UID; results could not be placed on it")
    for inst in instances:
        if inst.samples_per_pixel != 1 or inst.photometric not in ("MONOCHROME2", "MONOCHROME1"):
            raise _rejected(
                f"instance {inst.path.name} is not a grayscale image ({inst.samples_per_pixel} sample(s), "
                f"{_shown(inst.photometric, 16) or 'no photometric interpretation'})"
            )
    return first


# --- geometry -------------------------------------------------------------------------------------------


def _geometry(
    slices: Sequence[_Slice], tilt: float | None, tolerance: float
) -> tuple[list[_Slice], npt.NDArray[np.float64]]:
    """Sort the slices along the normal, check the grid, return them in ``k`` order and the affine."""
    orientations = np.array([s.orientation for s in slices], dtype=np.float64)
    if np.abs(orientations - orientations[0]).max() > _ORIENTATION_TOLERANCE:
        distinct = len({tuple(np.round(o, 3)) for o in orientations})
        raise SeriesRejected(
            f"mixed orientations: the slices have {distinct} different Image Orientation (Patient) values; "
            "send one reconstruction per series"
        )
    row_dir = orientations[0, :3]
    col_dir = orientations[0, 3:]
    if (
        abs(np.linalg.norm(row_dir) - 1) > 0.01
        or abs(np.linalg.norm(col_dir) - 1) > 0.01
        or abs(float(row_dir @ col_dir)) > 0.01
    ):
        raise SeriesRejected("Image Orientation (Patient) is not two orthogonal unit vectors")
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)

    sizes = {(s.rows, s.columns) for s in slices}
    if len(sizes) > 1:
        raise SeriesRejected(f"mixed image sizes in one series: {sorted(sizes)} (rows, columns)")
    spacings = np.array([s.pixel_spacing for s in slices])
    if np.abs(spacings - spacings[0]).max() > 1e-3:
        raise SeriesRejected("mixed Pixel Spacing in one series")
    if (spacings[0] <= 0).any():
        raise SeriesRejected(f"Pixel Spacing must be positive, got {tuple(spacings[0])}")

    positions = np.array([s.position for s in slices], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    ordered = [slices[i] for i in order]
    positions = positions[order]
    along = along[order]

    gaps = np.diff(along)
    duplicates = int((gaps < 1e-3).sum())
    if duplicates:
        where = float(along[1:][gaps < 1e-3][0])
        raise SeriesRejected(
            f"duplicated slice positions: {duplicates} slice(s) share a position with another (first at "
            f"{where:.2f} mm along the normal); the folder may hold two reconstructions or a re-sent series "
            "with new SOP Instance UIDs"
        )

    # Gantry tilt: positions drift sideways (perpendicular to the normal) as k grows. Up to half a pixel
    # of drift is harmless on an orthogonal grid; more would misplace results, so the series is refused.
    offsets = positions - positions[0]
    sideways = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.linalg.norm(sideways, axis=1).max())
    if drift > 0.5 * float(spacings[0].min()):
        extent = float(along[-1] - along[0])
        angle = float(np.degrees(np.arctan2(drift, extent)))
        tag = f"; Gantry/Detector Tilt {tilt:g} degrees" if tilt else ""
        raise SeriesRejected(
            f"gantry tilt: slice positions drift {drift:.1f} mm sideways over {extent:.1f} mm "
            f"(about {angle:.1f} degrees{tag}); tilted series are not resampled, send an axial "
            "reconstruction without tilt"
        )

    step = float(np.median(gaps))
    missing = gaps > _MISSING_SLICE_FACTOR * step
    if missing.any():
        lost = int(np.round(gaps[missing] / step - 1).sum())
        at = int(np.argmax(missing))
        raise SeriesRejected(
            f"missing slices: {int(missing.sum())} gap(s) in the series, about {lost} slice(s) absent "
            f"(first gap {gaps[at]:.2f} mm after slice {at + 1} of {len(ordered)}, spacing {step:.2f} mm); "
            "the series may still be arriving or was sent incomplete"
        )
    deviation = float(np.abs(gaps - step).max())
    if deviation > tolerance * step:
        raise SeriesRejected(
            f"non-uniform slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm around "
            f"{step:.3f} mm (tolerance {tolerance:.0%})"
        )

    row_spacing, column_spacing = (float(v) for v in spacings[0])
    affine = np.eye(4)
    affine[:3, 0] = row_dir * column_spacing  # i runs along a row: column spacing
    affine[:3, 1] = col_dir * row_spacing  # j runs down a column: row spacing
    affine[:3, 2] = normal * (float(along[-1] - along[0]) / (len(ordered) - 1))
    affine[:3, 3] = positions[0]
    return ordered, affine


# --- pixels ---------------------------------------------------------------------------------------------


def _read_pixels(ordered: Sequence[_Slice], instances: dict[Path, _Instance]) -> npt.NDArray[np.float32]:
    """Fill a preallocated float32 volume slice by slice (frame by frame for multi-frame files)."""
    rows, columns = ordered[0].rows, ordered[0].columns
    volume = np.empty((len(ordered), rows, columns), dtype=np.float32)
    by_file: dict[Path, list[tuple[int, _Slice]]] = {}
    for k, item in enumerate(ordered):
        by_file.setdefault(item.path, []).append((k, item))
    buffers: dict[str, npt.NDArray[Any]] = {}  # one reused slice buffer per stored dtype
    for path, targets in by_file.items():
        try:
            multiframe = targets[0][1].frame is not None
            native = instances[path].native
            if not multiframe and native is not None:
                ((k, item),) = targets
                pixels = _read_native(path, native, rows, columns, buffers)
                if pixels is not None:
                    _rescale_into(volume[k], pixels, item)
                    continue
            frames = _decoded_frames(path, instances[path].transfer_syntax, multiframe)
            if not multiframe:
                ((k, item),) = targets
                _rescale_into(volume[k], next(frames), item)
            else:
                wanted = {item.frame: (k, item) for k, item in targets}
                for frame, pixels in enumerate(frames):
                    if frame in wanted:
                        k, item = wanted[frame]
                        _rescale_into(volume[k], pixels, item)
        except SeriesRejected:
            raise
        except Exception as exc:
            syntax = instances[path].transfer_syntax
            name = _shown(UID(syntax).name, 64) if syntax else "unknown transfer syntax"
            raise _rejected(
                f"undecodable pixel data in instance {path.name} ({name}): {_cause(exc)}"
            ) from None
    return volume


def _read_native(
    path: Path, native: _NativePixels, rows: int, columns: int, buffers: dict[str, npt.NDArray[Any]]
) -> npt.NDArray[Any] | None:
    """The stored values of one uncompressed slice, read where the header pass stopped; None: let pydicom try.

    Reads what ``pydicom.pixels.pixel_array`` reads from a file in these syntaxes: after the element's
    tag (and VR and length) exactly ``rows * columns`` values, the element's length not consulted, then
    the unused high bits shifted out. The array is a view of a buffer reused for the next slice.
    """
    try:
        buffer = buffers.get(native.dtype)
        if buffer is None or buffer.size != rows * columns:
            buffer = buffers[native.dtype] = np.empty(rows * columns, dtype=native.dtype)
        with open(path, "rb", buffering=0) as fh:
            fh.seek(native.offset)
            size = 8 if native.implicit_vr else 12  # tag, (VR, reserved,) length
            head = fh.read(size)
            if len(head) != size or struct.unpack_from("<HH", head) != (0x7FE0, 0x0010):
                return None
            if fh.readinto(buffer.data.cast("B")) != buffer.nbytes:
                return None  # a short file: pydicom's decoder gives the reason
        if native.unused_bits:
            np.left_shift(buffer, native.unused_bits, out=buffer)
            np.right_shift(buffer, native.unused_bits, out=buffer)
        return buffer.reshape(rows, columns)
    except Exception:
        return None


#: Decoders preferred to pydicom's default pick, by transfer syntax. JPEG-LS: pydicom takes pylibjpeg's
#: libjpeg (about 21 ms per 512x512 slice here), CharLS (pyjpegls, a highdicom dependency; the reference
#: implementation DCMTK also uses) about 5 ms, and CharLS refuses a truncated stream that libjpeg decodes
#: into a slice of garbage without a word.
FAST_DECODERS: dict[str, str] = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls"}


@functools.cache
def _fast_decoder(transfer_syntax: str) -> str:
    """The faster decoding plugin for this syntax when it is installed, else "" (pydicom's choice)."""
    name = FAST_DECODERS.get(transfer_syntax, "")
    if not name:
        return ""
    try:
        return name if name in get_decoder(UID(transfer_syntax)).available_plugins else ""
    except Exception:
        return ""


def _decoded_frames(path: Path, transfer_syntax: str, multiframe: bool) -> Iterator[npt.NDArray[Any]]:
    """Decoded frames of one file, one at a time (pydicom reads only the pixel data it needs)."""
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        # pydicom.pixels reads pixel data straight from the file and cannot inflate it; rare enough to
        # decode through a full data set (one slice, or all frames of a deflated multi-frame file).
        pixels = dcmread(path).pixel_array
        yield from (pixels[None] if pixels.ndim == 2 else pixels)
    elif multiframe:
        yield from iter_pixels(path)
    else:
        fast = _fast_decoder(transfer_syntax)
        yield pixel_array(path, decoding_plugin=fast) if fast else pixel_array(path)


def _rescale_into(out: npt.NDArray[np.float32], pixels: npt.NDArray[Any], item: _Slice) -> None:
    if pixels.shape != out.shape:
        raise _rejected(
            f"instance {item.path.name}: pixel data has shape {pixels.shape}, header says {out.shape}"
        )
    if item.slope == 1.0:
        # The same values as the multiplication below (an integer times 1.0, rounded to float32), ~3x faster.
        np.copyto(out, pixels, casting="unsafe")
    else:
        np.multiply(pixels, item.slope, out=out, casting="unsafe")
    if item.intercept:
        out += np.float32(item.intercept)


# --- small helpers --------------------------------------------------------------------------------------


#: Attributes whose malformed value means "no usable geometry" (the others: "a malformed header").
_GEOMETRY_KEYWORDS = frozenset(
    {"ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "NumberOfFrames"}
)


class _BadValue(Exception):
    """A header value that cannot be read or used; ``str()`` names the attribute and the problem."""

    def __init__(self, keyword: str, problem: str) -> None:
        tag = tag_for_keyword(keyword)
        name = dictionary_description(tag) if tag is not None else keyword
        where = f" ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else ""
        super().__init__(f"{name}{where} {problem}")
        self.keyword = keyword


def _value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword, default)``; pydicom decodes values lazily, so a corrupt element raises here."""
    try:
        return ds.get(keyword, default)
    except NotImplementedError:  # pydicom: "Unknown Value Representation ..."
        raise _BadValue(keyword, "has an unknown value representation (a corrupt VR)") from None
    except BytesLengthException:
        raise _BadValue(keyword, "has a value length that does not fit its VR") from None
    except Exception as exc:
        raise _BadValue(keyword, f"cannot be decoded ({type(exc).__name__})") from None


def _text(ds: Dataset, keyword: str) -> str:
    """A header value as text ("" when absent)."""
    value = _value(ds, keyword)
    return "" if value is None else str(value)


def _number(keyword: str, value: Any, convert: type[int] | type[float]) -> Any:
    try:
        if hasattr(value, "__len__") and not isinstance(value, str):
            raise TypeError  # several values (or bytes) where one number belongs
        number = convert(value)
    except (TypeError, ValueError, OverflowError):
        kind = "a whole number" if convert is int else "a number"
        raise _BadValue(keyword, f"is not {kind} (got {_described(value)})") from None
    if convert is float and not np.isfinite(number):
        raise _BadValue(keyword, f"is not a finite number (got {_described(value)})")
    return number


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    """An integer attribute; absent or empty gives ``default`` (None: the attribute is required)."""
    value = _value(ds, keyword)
    if value is None or value == "":
        if default is None:
            raise _BadValue(keyword, "is missing")
        return default
    result: int = _number(keyword, value, int)
    return result


def _float(ds: Dataset, keyword: str, default: float | None) -> float | None:
    """A number attribute (DS, FD, ...); absent or empty gives ``default``."""
    value = _value(ds, keyword)
    if value is None or value == "":
        return default
    result: float = _number(keyword, value, float)
    return result


def _floats(ds: Dataset, keyword: str, count: int) -> Any:
    """Exactly ``count`` finite numbers of a multi-valued attribute (a position, orientation, spacing)."""
    value = _value(ds, keyword)
    if value is None or value == "":
        raise _BadValue(keyword, "is missing")
    values = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError, OverflowError):
        raise _BadValue(keyword, f"is not {count} numbers (got {_described(value)})") from None
    if len(numbers) != count:
        raise _BadValue(keyword, f"has {len(numbers)} value(s), expected {count}")
    if not all(np.isfinite(numbers)):
        raise _BadValue(keyword, f"is not {count} finite numbers")
    return numbers


def _described(value: Any) -> str:
    """A header value for a reason: quoted when short and printable, else only its size (never a dump)."""
    if isinstance(value, bytes):
        return f"{len(value):,} bytes"
    if isinstance(value, (str, int, float)):
        text = str(value)
        if len(text) <= _MAX_QUOTED_VALUE and text.isprintable():
            return repr(text)
        return f"a value of {len(text):,} characters" + ("" if text.isprintable() else ", not printable")
    if hasattr(value, "__len__"):
        return f"{len(value)} values"
    return type(value).__name__


def _shown(value: object, limit: int) -> str:
    """``value`` as one printable line of at most ``limit`` characters."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(value)).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _cause(exc: BaseException) -> str:
    """An exception for a reason: its type and the start of its message, on one printable line."""
    return _shown(f"{type(exc).__name__}: {exc}", 100)


def _rejected(reason: str) -> SeriesRejected:
    """The refusal, its reason one printable line of at most :data:`MAX_REASON_LENGTH` characters."""
    return SeriesRejected(_shown(reason, MAX_REASON_LENGTH))


def _is_localizer(image_type: Any) -> bool:
    """ImageType/FrameType value 3 is LOCALIZER for scout images (PS3.3 C.8.2.1.1.1, C.8.15.3.1.1)."""
    if image_type is None:
        return False
    if isinstance(image_type, str):
        values = image_type.split("\\")
    elif isinstance(image_type, (list, tuple, MultiValue)):
        values = list(image_type)
    else:  # a corrupt element decoded as something else: not a localizer flag
        return False
    return any(str(v).strip().upper() == "LOCALIZER" for v in values)
