"""DICOM Segmentation (BINARY) of the spine on the source series' geometry, built with highdicom.

Segments:

* a binary mask (values 0/1 only) gives one segment, the vertebral column (SCT 421060004 "Spine");
* a VerSe-labelled mask (any value > 1; then 1 means C1) gives segment 1 = the vertebral column (the
  union of all labels) and one segment per vertebra present, in cranio-caudal order, each with the
  vertebra's SNOMED CT code (:mod:`dicom_io.codes`). The column overlaps the vertebrae, so the SEG says
  ``SegmentsOverlap = YES``; highdicom needs a one-hot array for that, of
  ``slices x rows x columns x segments`` bytes over the slab of slices that hold any label. When that
  would exceed ``max_overlap_bytes`` the redundant column segment is left out (logged) and the
  vertebrae are written from a label map, which costs one byte per voxel of the slab.

Frames cover only the slices that hold the spine and empty frames are omitted, so a SEG stays small.

Segmentation Type is BINARY: one bit per pixel, packed across frame boundaries, and the Pixel Data padded
with one byte when the bit count leaves it odd. That pad byte only arises when rows x columns is not a
multiple of 16 (never for 512 x 512 CT; often for phantoms, e.g. 310 x 310), and then OHIF v3 (3.13)
refuses the whole object ("calculated length ... does not match the actual length") and falls back to
per-frame requests that Orthanc's DICOMweb plugin cannot answer for 1-bit frames whose columns are not a
multiple of 8. In that case the SEG is written FRACTIONAL (PROBABILITY, 8 bits per pixel, maximum
fractional value 1, so each pixel is still 0 or 1): the same segments and frames, byte-aligned
(``docs/viewers.md``).

Series Description and Content Description say what the object holds and that it is a research result
(:data:`dicom_io.codes.RESEARCH_USE_SHORT`).
Every frame points at its source CT instance (Derivation Image Sequence), shares the source's Frame of
Reference, orientation and pixel spacing, and the object copies the patient and study of the source,
so viewers overlay it on the CT. Algorithm identification sits on every segment, and the Contributing
Equipment Sequence names the algorithm the IHE AI Results way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicom_io.codes import (
    ALGORITHM_FAMILY,
    ALGORITHM_NAME,
    ANATOMICAL_STRUCTURE,
    RESEARCH_USE_SHORT,
    VERTEBRAL_COLUMN,
    ai_contributing_equipment,
    private_coding_scheme_identification,
    uses_private_scheme,
    vertebra_code,
)
from dicom_io.labels import CRANIO_CAUDAL, vertebra_name
from dicom_io.result import Result
from dicom_io.volume import SourceReference, Volume

__all__ = [
    "SegBuildError",
    "build_seg",
    "content_description",
    "segment_colour",
    "vertebra_labels_in_mask",
]

logger = logging.getLogger(__name__)

#: Tolerance (mm) when checking that a source slice sits where the volume's affine puts it.
_POSITION_TOLERANCE_MM = 0.01

#: Default ceiling for the one-hot array of an overlapping (column + vertebrae) SEG.
DEFAULT_MAX_OVERLAP_BYTES = 1 << 30

#: Display colour (sRGB) of the vertebral column segment: the "bone" colour of 3D Slicer's
#: GenericAnatomyColors table.
_COLUMN_RGB = (241, 214, 145)
#: Alternating vertebra colours so that neighbours always differ in a viewer.
_VERTEBRA_RGB: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
)


class SegBuildError(ValueError):
    """Raised when the result and the source series disagree (shape, slices, geometry).

    The message names what disagrees; the job fails with it, since a SEG on the wrong grid would be
    drawn in the wrong place.
    """


def vertebra_labels_in_mask(mask: npt.NDArray[np.uint8]) -> list[int]:
    """VerSe labels present in a labelled mask, in anatomical order; ``[]`` for a binary (0/1) mask."""
    present = {int(v) for v in np.unique(mask) if v != 0}
    if not present or max(present) <= 1:
        return []
    unknown = sorted(present - set(CRANIO_CAUDAL))
    if unknown:
        raise SegBuildError(f"mask holds values that are no VerSe vertebra label: {unknown}")
    order = list(CRANIO_CAUDAL)
    return sorted(present, key=order.index)


def segment_colour(index: int) -> hd.color.CIELabColor:
    """Recommended display colour of the ``index``-th vertebra segment (0-based)."""
    r, g, b = _VERTEBRA_RGB[index % len(_VERTEBRA_RGB)]
    return hd.color.CIELabColor.from_rgb(r, g, b)


def build_seg(
    volume: Volume,
    source_datasets: Sequence[Dataset],
    result: Result,
    *,
    series_number: int,
    algorithm_version: str,
    manufacturer: str = "spine-agent project",
    manufacturer_model_name: str = ALGORITHM_NAME,
    device_serial_number: str = "0",
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_description: str = f"Spine segmentation (spine-agent, {RESEARCH_USE_SHORT})",
    content_datetime: datetime | None = None,
    max_overlap_bytes: int = DEFAULT_MAX_OVERLAP_BYTES,
) -> hd.seg.Segmentation:
    """Build the DICOM SEG of ``result.mask`` on the source series of ``volume``.

    Args:
        volume: the volume the engine ran on; its ``source`` gives the slice order (``k``) by SOP
            Instance UID and its affine the plane positions.
        source_datasets: the source CT instances (headers suffice, pixel data is not read), any order.
        result: the engine's result; ``result.mask`` has ``volume.shape``.
        series_number: Series Number of the new SEG series (in the source study).
        algorithm_version: the model version written into Algorithm Identification and equipment.
        manufacturer, manufacturer_model_name, device_serial_number: the General Equipment of the SEG.
        series_instance_uid, sop_instance_uid: fixed UIDs (new ones when omitted).
        series_description: Series Description of the SEG series.
        content_datetime: when the result was made (now, UTC, when omitted).
        max_overlap_bytes: ceiling for the one-hot array of a column + vertebrae SEG (module docstring).

    Raises:
        SegBuildError: mask shape, slices or geometry disagree with the source, or the mask is empty.
    """
    source = volume.source
    if source is None:
        raise SegBuildError("volume has no SourceReference: cannot reference the source series")
    mask = np.asarray(result.mask)
    if mask.shape != volume.shape:
        raise SegBuildError(f"mask shape {mask.shape} differs from the volume's {volume.shape}")
    if not mask.any():
        raise SegBuildError("mask is empty: there is no spine to write as a SEG")

    ordered, plane_positions = _source_planes(volume, source, source_datasets)
    nonempty = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    k0, k1 = int(nonempty[0]), int(nonempty[-1]) + 1
    slab = mask[k0:k1]

    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=ALGORITHM_FAMILY, version=algorithm_version
    )
    labels = vertebra_labels_in_mask(mask)
    descriptions: list[hd.seg.SegmentDescription] = []
    pixel_array: npt.NDArray[np.uint8] | npt.NDArray[np.bool_]
    one_hot_bytes = slab.size * (len(labels) + 1)
    label_map = False
    if not labels:
        descriptions.append(_column_description(1, algorithm))
        pixel_array = (slab > 0).astype(np.uint8)
    elif one_hot_bytes <= max_overlap_bytes:
        descriptions.append(_column_description(1, algorithm))
        pixel_array = np.zeros((*slab.shape, len(labels) + 1), dtype=np.bool_)
        pixel_array[..., 0] = slab > 0
        for index, label in enumerate(labels):
            descriptions.append(_vertebra_description(index + 2, label, index, algorithm))
            pixel_array[..., index + 1] = slab == label
    else:
        label_map = True
        logger.info(
            "SEG: %d vertebra segments over %d slices need %d MiB one-hot; leaving out the column "
            "segment (the union of the vertebrae)",
            len(labels),
            slab.shape[0],
            one_hot_bytes >> 20,
        )
        lookup = np.zeros(256, dtype=np.uint8)
        for index, label in enumerate(labels):
            descriptions.append(_vertebra_description(index + 1, label, index, algorithm))
            lookup[label] = index + 1
        pixel_array = lookup[slab]

    fractional = not label_map and _binary_needs_pad_byte(pixel_array)
    if fractional:
        logger.info(
            "SEG: %dx%d frames would leave the bit-packed Pixel Data padded, which OHIF cannot read; "
            "writing it FRACTIONAL (values 0/1)",
            slab.shape[1],
            slab.shape[2],
        )
    when = content_datetime or datetime.now(UTC)
    seg = hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=pixel_array.astype(np.uint8) if fractional else pixel_array,
        segmentation_type=(
            hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
        ),
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=1,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=manufacturer_model_name,
        software_versions=algorithm_version,
        device_serial_number=device_serial_number,
        plane_positions=plane_positions[k0:k1],
        omit_empty_frames=True,
        content_label="SPINE",
        content_description=content_description(descriptions),
        series_description=series_description,
        content_date=when.strftime("%Y%m%d"),
        content_time=when.strftime("%H%M%S"),
        coding_schemes=[private_coding_scheme_identification()] if uses_private_scheme(labels) else None,
    )
    # Appended after construction: highdicom's ContributingEquipment rejects the IHE AIR purpose code.
    seg["ContributingEquipmentSequence"].value.append(
        ai_contributing_equipment(
            manufacturer=manufacturer,
            model_name=manufacturer_model_name,
            software_version=algorithm_version,
            contribution_datetime=when,
        )
    )
    logger.debug(
        "SEG %s: %d segments, %d frames, slices %d-%d",
        seg.SOPInstanceUID,
        len(descriptions),
        int(seg.NumberOfFrames),
        k0,
        k1 - 1,
    )
    return seg


def content_description(descriptions: Sequence[hd.seg.SegmentDescription]) -> str:
    """Content Description (LO, 64 characters) naming the segments a SEG holds, and that it is research.

    E.g. "Vertebral column; research use only" or "Vertebral column + 7 vertebrae T11-L5; research use
    only".
    """
    labels = [str(d.SegmentLabel) for d in descriptions]
    vertebrae = [label for label in labels if label != "Vertebral column"]
    parts = ["Vertebral column"] if "Vertebral column" in labels else []
    if len(vertebrae) == 1:
        parts.append(f"vertebra {vertebrae[0]}")
    elif vertebrae:
        parts.append(f"{len(vertebrae)} vertebrae {vertebrae[0]}-{vertebrae[-1]}")
    what = " + ".join(parts)
    return f"{what[:1].upper()}{what[1:]}; {RESEARCH_USE_SHORT}"[:64]


def _binary_needs_pad_byte(pixel_array: npt.NDArray[np.uint8] | npt.NDArray[np.bool_]) -> bool:
    """Whether a BINARY SEG of ``pixel_array`` would end its Pixel Data with a pad byte (module docstring).

    ``pixel_array`` is one segment (slices x rows x columns) or one-hot (... x segments). Counts the
    frames highdicom writes with ``omit_empty_frames``: one per (slice, segment) holding any pixel of the
    segment. (A label map, the memory fallback, is never switched: FRACTIONAL would need the one-hot
    array that did not fit.)
    """
    rows, columns = pixel_array.shape[1], pixel_array.shape[2]
    if (rows * columns) % 16 == 0:
        return False
    if pixel_array.ndim == 3:
        frames = int(np.count_nonzero(pixel_array.reshape(pixel_array.shape[0], -1).any(axis=1)))
    else:
        frames = int(np.count_nonzero(pixel_array.any(axis=(1, 2))))
    return ((frames * rows * columns + 7) // 8) % 2 == 1


def _column_description(
    number: int, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label="Vertebral column",
        segmented_property_category=ANATOMICAL_STRUCTURE,
        segmented_property_type=VERTEBRAL_COLUMN,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id="Vertebral column",
        display_color=hd.color.CIELabColor.from_rgb(*_COLUMN_RGB),
    )


def _vertebra_description(
    number: int, label: int, index: int, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    name = vertebra_name(label)
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=ANATOMICAL_STRUCTURE,
        segmented_property_type=vertebra_code(label),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id=name,
        display_color=segment_colour(index),
    )


def _source_planes(
    volume: Volume, source: SourceReference, source_datasets: Sequence[Dataset]
) -> tuple[list[Dataset], list[hd.PlanePositionSequence]]:
    """Source datasets in ``k`` order and one plane position per ``k``, checked against the affine."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source_datasets}
    missing = [uid for uid in source.sop_instance_uids if uid not in by_uid]
    if missing:
        raise SegBuildError(f"{len(missing)} source instances not given, e.g. {missing[0]}")
    nk = volume.shape[0]
    if len(source.sop_instance_uids) != nk:
        raise SegBuildError(f"source lists {len(source.sop_instance_uids)} slices, volume has {nk}")
    expected = volume.index_to_lps(np.stack([np.zeros(nk), np.zeros(nk), np.arange(nk)], axis=1))
    multiframe = len(set(source.sop_instance_uids)) == 1 and nk > 1
    if multiframe:
        # One Enhanced CT instance: positions come from the volume's affine, frame order is k.
        ordered = [by_uid[source.sop_instance_uids[0]]]
        positions = [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, tuple(p)) for p in expected]
        return ordered, positions
    ordered = [by_uid[uid] for uid in source.sop_instance_uids]
    positions = []
    for k, ds in enumerate(ordered):
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        if np.linalg.norm(ipp - expected[k]) > _POSITION_TOLERANCE_MM:
            raise SegBuildError(
                f"source instance {ds.SOPInstanceUID} lies at {ipp.tolist()} but slice {k} of the volume "
                f"is at {expected[k].round(3).tolist()}"
            )
        if (int(ds.Rows), int(ds.Columns)) != volume.shape[1:]:
            raise SegBuildError(
                f"source instance {ds.SOPInstanceUID} is {ds.Rows}x{ds.Columns}, volume is "
                f"{volume.shape[1]}x{volume.shape[2]}"
            )
        positions.append(hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, ds.ImagePositionPatient))
    return ordered, positions
