"""Comprehensive 3D SR (TID 1500 Measurement Report) of the labelled vertebral landmarks, via highdicom.

Document layout (PS3.16 TID 1500):

* observation context: a device observer (TID 1004) for the agent: name "spine-agent", manufacturer,
  model, a Device Observer UID stable per host;
* procedure reported: (LN 25045-6 "CT unspecified body region");
* per vertebra, in cranio-caudal order, two measurement groups that share the vertebra's Tracking
  Identifier ("L3") and Tracking Unique Identifier (the same UID as the vertebra's segment in the SEG
  when one is given, so the objects can be joined), both with Finding = Finding Site = the vertebra's
  code (SNOMED CT; L6/T13 in the private "99SPINEAGENT" scheme, see :mod:`dicom_io.codes`) and the
  Algorithm Identification (TID 4019: "spine-agent", model version, family "Artificial Intelligence"):

  - where: a TID 1410 "Planar ROI Measurements" group whose Image Region is a SCOORD3D POINT at the
    landmark (the vertebra centroid, LPS mm, rounded to 0.1 mm) in the source series' Frame of Reference;
  - how sure: a TID 1501 "Measurement and Qualitative Evaluation" group holding (DCM 111012 "Certainty of
    Finding") = the engine's confidence as a whole percentage (UCUM "%").

  One group holding both would be simpler, but OHIF v3 (3.13) then lists nothing: its SR reader looks
  for the coordinates *under* a group's first numeric item, which TID 1410 forbids (highdicom refuses
  it). OHIF merges groups by Tracking Unique Identifier, so split this way the measurement panel lists one
  entry per vertebra, named by its finding site, and draws the point (``docs/viewers.md``);
* a "Qualitative Evaluations" container with the research-use disclaimer as a TEXT comment.

Finding Category and Geometric Purpose of Region (newer optional TID 1410 rows) are left out: PixelMed's
validator (2022 templates) reports them as "not in template", and the centroid meaning is stated here
and in ``docs/viewers.md``. The evidence lists the source series' instances and the SEG, so a PACS
can find what the report is about; the Contributing Equipment Sequence names the algorithm as IHE AI
Results asks.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, TM

from dicom_io.codes import (
    ALGORITHM_FAMILY,
    ALGORITHM_NAME,
    CERTAINTY_OF_FINDING,
    PERCENT,
    RESEARCH_USE_DISCLAIMER,
    ai_contributing_equipment,
    private_coding_scheme_identification,
    uses_private_scheme,
    vertebra_code,
)
from dicom_io.labels import CRANIO_CAUDAL
from dicom_io.result import Landmark, Result

__all__ = [
    "SrBuildError",
    "build_sr",
    "certainty_percent",
    "default_device_observer_uid",
    "segment_tracking_uids",
]

logger = logging.getLogger(__name__)

#: Procedure Reported (CID 100).
PROCEDURE_REPORTED = codes.LN.CTUnspecifiedBodyRegion

#: TID 1500's optional container of report-level qualitative evaluations, and the concept of the
#: disclaimer's TEXT item in it: (DCM 121106 "Comment").
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT = Code("121106", "DCM", "Comment")

#: Landmark coordinates are written to 0.1 mm: the engine is good to millimetres, and a viewer shows
#: the numbers to a reader.
POSITION_DECIMALS = 1


class SrBuildError(ValueError):
    """Raised when the landmarks or the source series cannot make a valid report; the message says why."""


def default_device_observer_uid() -> str:
    """A Device Observer UID stable for this host (derived from the host name), for TID 1004."""
    return str(generate_uid(entropy_srcs=[ALGORITHM_NAME, socket.gethostname()]))


def segment_tracking_uids(segmentation: Dataset) -> dict[tuple[str, str], str]:
    """Tracking UID of each segment of a SEG, keyed by its property type ``(scheme, code value)``."""
    uids: dict[tuple[str, str], str] = {}
    for segment in segmentation.get("SegmentSequence", []):
        if "TrackingUID" not in segment:
            continue
        code = segment.SegmentedPropertyTypeCodeSequence[0]
        uids[(str(code.CodingSchemeDesignator), str(code.CodeValue))] = str(segment.TrackingUID)
    return uids


def build_sr(
    source_datasets: Sequence[Dataset],
    result: Result,
    *,
    series_number: int,
    algorithm_version: str,
    segmentation: Dataset | None = None,
    manufacturer: str = "spine-agent project",
    manufacturer_model_name: str = ALGORITHM_NAME,
    device_serial_number: str = "0",
    device_observer_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_description: str = "Vertebra landmarks (spine-agent, research use only)",
    content_datetime: datetime | None = None,
    disclaimer: str = RESEARCH_USE_DISCLAIMER,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 Comprehensive 3D SR of ``result.landmarks`` on the source series.

    Args:
        source_datasets: the source CT instances (headers suffice); they share one study, series and
            Frame of Reference, and the first gives patient and study.
        result: the engine's result; every landmark's label must be a VerSe vertebra label.
        series_number: Series Number of the new SR series (in the source study).
        algorithm_version: the model version, written into Algorithm Identification and equipment.
        segmentation: the SEG built from the same result (optional): referenced as evidence, and its
            segments' Tracking UIDs are reused for the matching vertebrae.
        manufacturer, manufacturer_model_name, device_serial_number: General Equipment and the device
            observer of the report.
        device_observer_uid: Device Observer UID (default: :func:`default_device_observer_uid`).
        series_instance_uid, sop_instance_uid: fixed UIDs (new ones when omitted).
        series_description: Series Description of the SR series.
        content_datetime: when the result was made (now, UTC, when omitted).
        disclaimer: the research-use statement written as the report's comment.

    Raises:
        SrBuildError: no source, mixed series or Frames of Reference, no landmark, an unknown label, a
            label twice, a non-finite position or a confidence outside [0, 1].
    """
    if not source_datasets:
        raise SrBuildError("no source instances: the report needs its evidence")
    frame_of_reference_uid = _single_value(source_datasets, "FrameOfReferenceUID")
    _single_value(source_datasets, "SeriesInstanceUID")
    _single_value(source_datasets, "StudyInstanceUID")
    landmarks = _checked_landmarks(result.landmarks)
    if not landmarks:
        # TID 1500 with no measurement group says nothing; the job reports "no vertebra found" instead.
        raise SrBuildError("no landmarks: a measurement report needs at least one vertebra")
    if segmentation is not None and segmentation.StudyInstanceUID != source_datasets[0].StudyInstanceUID:
        raise SrBuildError("the SEG belongs to another study than the source series")

    tracking_uids = segment_tracking_uids(segmentation) if segmentation is not None else {}
    algorithm = hd.sr.AlgorithmIdentification(
        name=ALGORITHM_NAME, version=algorithm_version, family=ALGORITHM_FAMILY
    )
    groups = [
        group
        for landmark in landmarks
        for group in _landmark_groups(landmark, frame_of_reference_uid, algorithm, tracking_uids)
    ]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid or default_device_observer_uid(),
            name=ALGORITHM_NAME,
            manufacturer_name=manufacturer,
            model_name=manufacturer_model_name,
            serial_number=device_serial_number,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_disclaimer_container(disclaimer))
    evidence = [*source_datasets, *([segmentation] if segmentation is not None else [])]
    when = content_datetime or datetime.now(UTC)
    labels = [landmark.label for landmark in landmarks]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description,
        manufacturer_model_name=manufacturer_model_name,
        software_versions=algorithm_version,
        device_serial_number=device_serial_number,
        coding_schemes=[private_coding_scheme_identification()] if uses_private_scheme(labels) else None,
    )
    # The document describes the result's moment, not the moment it was encoded.
    sr.ContentDate = DA(when.date())
    sr.ContentTime = TM(when.time().replace(microsecond=0, tzinfo=None))
    # Appended after construction: highdicom's ContributingEquipment rejects the IHE AIR purpose code.
    sr["ContributingEquipmentSequence"].value.append(
        ai_contributing_equipment(
            manufacturer=manufacturer,
            model_name=manufacturer_model_name,
            software_version=algorithm_version,
            contribution_datetime=when,
        )
    )
    logger.debug("SR %s: %d vertebrae", sr.SOPInstanceUID, len(landmarks))
    return sr


def _single_value(datasets: Sequence[Dataset], keyword: str) -> str:
    values = {str(ds.get(keyword, "")) for ds in datasets}
    if len(values) != 1 or "" in values:
        raise SrBuildError(f"source instances must share one non-empty {keyword}, found {sorted(values)}")
    return values.pop()


def _checked_landmarks(landmarks: Sequence[Landmark]) -> list[Landmark]:
    seen: set[int] = set()
    for landmark in landmarks:
        try:
            vertebra_code(landmark.label)
        except ValueError as exc:
            raise SrBuildError(str(exc)) from None
        if landmark.label in seen:
            raise SrBuildError(f"vertebra {landmark.name} (label {landmark.label}) has two landmarks")
        seen.add(landmark.label)
        if len(landmark.position_lps) != 3 or not all(math.isfinite(v) for v in landmark.position_lps):
            raise SrBuildError(f"landmark {landmark.name} has no finite 3D position: {landmark.position_lps}")
        if not 0.0 <= landmark.confidence <= 1.0:
            raise SrBuildError(
                f"landmark {landmark.name} has confidence {landmark.confidence} outside [0, 1]"
            )
    return sorted(landmarks, key=lambda lm: CRANIO_CAUDAL.index(lm.label))


def _landmark_groups(
    landmark: Landmark,
    frame_of_reference_uid: str,
    algorithm: hd.sr.AlgorithmIdentification,
    tracking_uids: Mapping[tuple[str, str], str],
) -> tuple[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations, hd.sr.MeasurementsAndQualitativeEvaluations]:
    """The vertebra's "where" group (TID 1410, its point) and "how sure" group (TID 1501, its certainty)."""
    code = vertebra_code(landmark.label)
    tracking_uid = tracking_uids.get((code.scheme_designator, code.value)) or hd.UID()
    position = [round(float(v), POSITION_DECIMALS) for v in landmark.position_lps]
    point = hd.sr.ImageRegion3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.asarray([position], dtype=np.float64),
        frame_of_reference_uid=frame_of_reference_uid,
    )
    where = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=landmark.name),
        referenced_region=point,
        finding_type=code,
        finding_sites=[hd.sr.FindingSite(anatomic_location=code)],
        algorithm_id=algorithm,
    )
    certainty = hd.sr.Measurement(
        name=CERTAINTY_OF_FINDING,
        value=certainty_percent(landmark.confidence),
        unit=PERCENT,
    )
    how_sure = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=landmark.name),
        finding_type=code,
        finding_sites=[hd.sr.FindingSite(anatomic_location=code)],
        algorithm_id=algorithm,
        measurements=[certainty],
    )
    return where, how_sure


def certainty_percent(confidence: float) -> int:
    """The engine's confidence in [0, 1] as the whole percentage the report states."""
    return int(round(100.0 * confidence))


def _disclaimer_container(disclaimer: str) -> hd.sr.ContainerContentItem:
    """TID 1500's report-level "Qualitative Evaluations" container holding the disclaimer as a comment."""
    if not disclaimer.strip():
        raise SrBuildError("the research-use disclaimer is empty")
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=COMMENT, value=disclaimer, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        ]
    )
    return container
