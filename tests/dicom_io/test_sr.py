from __future__ import annotations

from io import BytesIO

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes

from dicom_io.codes import PRIVATE_SCHEME_DESIGNATOR, RESEARCH_USE_DISCLAIMER
from dicom_io.result import Landmark, Result
from dicom_io.seg import build_seg
from dicom_io.sr import SrBuildError, build_sr
from tests.dicom_io.ct_series import CTSeries, labelled_result


def _roundtrip(sr: hd.sr.Comprehensive3DSR) -> hd.sr.Comprehensive3DSR:
    buffer = BytesIO()
    sr.save_as(buffer)
    buffer.seek(0)
    read = hd.sr.srread(buffer)
    assert isinstance(read, hd.sr.Comprehensive3DSR)
    return read


def _report(sr: hd.sr.Comprehensive3DSR) -> hd.sr.MeasurementReport:
    assert isinstance(sr.content, hd.sr.MeasurementReport)
    return sr.content


def _groups(sr: hd.sr.Comprehensive3DSR) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    return list(_report(sr).get_planar_roi_measurement_groups())


def _certainties(sr: hd.sr.Comprehensive3DSR) -> dict[str, hd.sr.Measurement]:
    """The "Certainty of Finding" of each TID 1501 group, by Tracking Unique Identifier."""
    found: dict[str, hd.sr.Measurement] = {}
    for group in _report(sr).get_image_measurement_groups():
        (measurement,) = group.get_measurements()
        found[str(group.tracking_uid)] = measurement
    return found


def _finding(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) -> hd.sr.CodedConcept:
    assert group.finding_type is not None
    return group.finding_type


def test_points_tracking_and_codes_round_trip(ct_series: CTSeries) -> None:
    result = labelled_result(ct_series.volume, (22, 23, 24))
    sr = _roundtrip(build_sr(ct_series.datasets, result, series_number=91, algorithm_version="v1"))

    groups = _groups(sr)
    assert [g.tracking_identifier for g in groups] == ["L3", "L4", "L5"]
    certainties = _certainties(sr)
    # One TID 1501 group per vertebra, joined to its point by the tracking identifier and UID.
    assert [str(g.tracking_identifier) for g in _report(sr).get_image_measurement_groups()] == [
        "L3",
        "L4",
        "L5",
    ]
    assert certainties.keys() == {str(g.tracking_uid) for g in groups}
    by_name = {lm.name: lm for lm in result.landmarks}
    for group in groups:
        landmark = by_name[str(group.tracking_identifier)]
        roi = group.roi
        assert isinstance(roi, hd.sr.ImageRegion3D)
        assert roi.graphic_type == hd.sr.GraphicTypeValues3D.POINT
        assert roi.frame_of_reference_uid == ct_series.datasets[0].FrameOfReferenceUID
        # written to 0.1 mm (stored as 32-bit floats)
        np.testing.assert_allclose(roi.value[0], np.round(landmark.position_lps, 1), atol=1e-4)
        assert [site.value.value for site in group.finding_sites] == [_finding(group).value]
        assert _finding(group).scheme_designator == "SCT"
        assert group.get_measurements() == []  # the certainty sits in the vertebra's TID 1501 group
        certainty = certainties[str(group.tracking_uid)]
        assert certainty.name.value == "111012" and certainty.unit.value == "%"
        assert certainty.value == round(100 * landmark.confidence)  # a whole percentage
        texts = {
            item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
            for item in group[0].ContentSequence
            if item.ValueType == "TEXT"
        }
        assert (texts["Algorithm Name"], texts["Algorithm Version"]) == ("spine-agent", "v1")
    assert len({g.tracking_uid for g in groups}) == 3


def test_report_says_it_is_a_research_result(ct_series: CTSeries) -> None:
    result = labelled_result(ct_series.volume, (22,))
    sr = _roundtrip(build_sr(ct_series.datasets, result, series_number=91, algorithm_version="v1"))
    assert "research use only" in sr.SeriesDescription and len(sr.SeriesDescription) <= 64
    (evaluations,) = [
        item
        for item in _report(sr)[0].ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"
    ]
    (comment,) = evaluations.ContentSequence
    assert comment.ValueType == "TEXT" and comment.ConceptNameCodeSequence[0].CodeValue == "121106"
    assert comment.TextValue == RESEARCH_USE_DISCLAIMER
    assert "not a medical device" in RESEARCH_USE_DISCLAIMER and "synthetic" in RESEARCH_USE_DISCLAIMER


def test_report_metadata_observer_and_evidence(ct_series: CTSeries) -> None:
    result = labelled_result(ct_series.volume, (22, 23))
    seg = build_seg(ct_series.volume, ct_series.datasets, result, series_number=90, algorithm_version="v1")
    sr = _roundtrip(
        build_sr(
            ct_series.datasets,
            result,
            series_number=91,
            algorithm_version="v1",
            segmentation=seg,
            device_observer_uid="1.2.3.4",
        )
    )
    src = ct_series.datasets[0]
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.PatientID == src.PatientID
    assert sr.SeriesInstanceUID not in (src.SeriesInstanceUID, seg.SeriesInstanceUID)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    observer = _report(sr).get_observer_contexts(observer_type=codes.DCM.Device)
    device = observer[0].observer_identifying_attributes
    assert isinstance(device, hd.sr.DeviceObserverIdentifyingAttributes)
    assert device.uid == "1.2.3.4"
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {ds.SOPInstanceUID for ds in ct_series.datasets} | {seg.SOPInstanceUID}
    # The SR group and the SEG segment of one vertebra share a tracking UID.
    seg_uids = {s.SegmentLabel: s.TrackingUID for s in seg.SegmentSequence}
    assert {g.tracking_identifier: g.tracking_uid for g in _groups(sr)} == {
        "L3": seg_uids["L3"],
        "L4": seg_uids["L4"],
    }
    assert any(
        i.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
        for i in sr.ContributingEquipmentSequence
    )


def test_variants_are_privately_coded_in_anatomical_order(ct_series: CTSeries) -> None:
    landmarks = [
        Landmark(25, (1.0, 2.0, 60.0), 0.5),
        Landmark(28, (1.0, 2.0, 120.0), 0.6),
        Landmark(20, (1.0, 2.0, 100.0), 0.7),
    ]
    result = Result(mask=np.zeros(ct_series.volume.shape, np.uint8), landmarks=landmarks)
    sr = _roundtrip(build_sr(ct_series.datasets, result, series_number=91, algorithm_version="v1"))
    groups = _groups(sr)
    assert [g.tracking_identifier for g in groups] == ["T13", "L1", "L6"]
    assert _finding(groups[0]).scheme_designator == PRIVATE_SCHEME_DESIGNATOR
    assert _finding(groups[0]).meaning == "Thirteenth thoracic vertebra"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME_DESIGNATOR


@pytest.mark.parametrize(
    ("landmarks", "message"),
    [
        ([], "no landmarks"),
        ([Landmark(27, (0.0, 0.0, 0.0), 0.5)], "27"),
        ([Landmark(20, (0.0, 0.0, 0.0), 0.5), Landmark(20, (0.0, 0.0, 9.0), 0.5)], "two landmarks"),
        ([Landmark(20, (0.0, float("nan"), 0.0), 0.5)], "finite"),
        ([Landmark(20, (0.0, 0.0, 0.0), 1.5)], "confidence"),
    ],
)
def test_bad_landmarks_are_refused(ct_series: CTSeries, landmarks: list[Landmark], message: str) -> None:
    result = Result(mask=np.zeros(ct_series.volume.shape, np.uint8), landmarks=landmarks)
    with pytest.raises(SrBuildError, match=message):
        build_sr(ct_series.datasets, result, series_number=91, algorithm_version="v1")


def test_mixed_frames_of_reference_are_refused(ct_series: CTSeries) -> None:
    datasets = [ds.copy() for ds in ct_series.datasets]
    datasets[1].FrameOfReferenceUID = "1.2.3"
    with pytest.raises(SrBuildError, match="FrameOfReferenceUID"):
        build_sr(datasets, labelled_result(ct_series.volume), series_number=91, algorithm_version="v1")
