"""Reading our own results back: landmarks from a TID 1500 SR, the spine mask from a SEG.

Used by the demo (which reads what the PACS received) and by tests; tolerant of anything highdicom
reads, strict about what it returns.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicom_io.labels import LABEL_BY_NAME
from dicom_io.result import Landmark
from dicom_io.volume import Volume


def landmarks_from_sr(dataset: Dataset) -> list[Landmark]:
    """One :class:`Landmark` per measurement group with a 3D point, labelled by its tracking identifier.

    The confidence is the "Certainty of Finding" (%) of a group with the same Tracking Unique Identifier
    (our SRs keep it in a TID 1501 group beside the point's TID 1410 group, see :mod:`dicom_io.sr`), or of
    the point's own group (reports written before that split); 1.0 when there is none.
    """
    sr = hd.sr.Comprehensive3DSR.from_dataset(dataset, copy=False)
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError("not a TID 1500 Measurement Report")
    certainty: dict[str, float] = {}
    point_groups = report.get_planar_roi_measurement_groups()
    for group in [*report.get_image_measurement_groups(), *point_groups]:
        for measurement in group.get_measurements():
            if measurement.name.value == "111012":  # DCM Certainty of Finding, in %
                certainty[str(group.tracking_uid)] = float(measurement.value) / 100.0
    landmarks: list[Landmark] = []
    for group in point_groups:
        roi = group.roi
        name = str(group.tracking_identifier)
        if not isinstance(roi, hd.sr.ImageRegion3D) or name not in LABEL_BY_NAME:
            continue
        point = np.asarray(roi.value, dtype=np.float64).reshape(-1, 3)[0]
        landmarks.append(
            Landmark(
                label=LABEL_BY_NAME[name],
                position_lps=(float(point[0]), float(point[1]), float(point[2])),
                confidence=certainty.get(str(group.tracking_uid), 1.0),
            )
        )
    return landmarks


def mask_from_seg(dataset: Dataset, volume: Volume) -> npt.NDArray[np.uint8]:
    """The union of all segments of our SEG on ``volume``'s grid (1 inside, 0 outside)."""
    if volume.source is None:
        raise ValueError("the volume has no source references to match SEG frames against")
    seg = hd.seg.Segmentation.from_dataset(dataset, copy=False)
    uids = list(dict.fromkeys(volume.source.sop_instance_uids))
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    present = [uid for uid in uids if uid in referenced]
    mask = np.zeros(volume.shape, dtype=np.uint8)
    if not present:
        return mask
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=present, ignore_spatial_locations=True, combine_segments=False
    )
    union = np.asarray(np.asarray(pixels).any(axis=-1), dtype=np.uint8)
    index = {uid: k for k, uid in enumerate(volume.source.sop_instance_uids)}
    for n, uid in enumerate(present):
        mask[index[uid]] = union[n]
    return mask
