from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from dicom_io.codes import PRIVATE_SCHEME_DESIGNATOR
from dicom_io.result import Result
from dicom_io.seg import SegBuildError, build_seg, vertebra_labels_in_mask
from tests.dicom_io.ct_series import CTSeries, binary_result, labelled_result


def _roundtrip(seg: hd.seg.Segmentation) -> hd.seg.Segmentation:
    buffer = BytesIO()
    seg.save_as(buffer)
    buffer.seek(0)
    return hd.seg.segread(buffer)


def _mask_per_source_slice(seg: hd.seg.Segmentation, ct: CTSeries, segment: int) -> np.ndarray:
    uids = list(ct.volume.source.sop_instance_uids)  # type: ignore[union-attr]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[segment], ignore_spatial_locations=False
    )
    return np.asarray(pixels[..., 0])


def test_binary_mask_gives_one_column_segment_on_the_source_grid(ct_series: CTSeries) -> None:
    result = binary_result(ct_series.volume)
    seg = _roundtrip(
        build_seg(ct_series.volume, ct_series.datasets, result, series_number=90, algorithm_version="v1")
    )

    assert seg.number_of_segments == 1
    desc = seg.get_segment_description(1)
    assert desc.segmented_property_type.value == "421060004"
    assert desc.segmented_property_category.value == "91723000"
    algorithm = desc.algorithm_identification
    assert algorithm is not None
    assert (algorithm[0].AlgorithmName, algorithm[0].AlgorithmVersion) == ("spine-agent", "v1")
    assert algorithm[0].AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    np.testing.assert_array_equal(_mask_per_source_slice(seg, ct_series, 1), result.mask)
    # Only slices with spine are stored.
    assert int(seg.NumberOfFrames) == int(result.mask.reshape(result.mask.shape[0], -1).any(axis=1).sum())


def test_seg_belongs_to_the_source_study_in_a_new_series(ct_series: CTSeries) -> None:
    src = ct_series.datasets[0]
    seg = build_seg(
        ct_series.volume,
        ct_series.datasets,
        binary_result(ct_series.volume),
        series_number=90,
        algorithm_version="v1",
    )
    for keyword in (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "AccessionNumber",
        "StudyID",
    ):
        assert seg[keyword].value == src[keyword].value, keyword
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID and seg.SeriesNumber == 90
    referenced = {
        item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in ct_series.datasets}
    frame = seg.PerFrameFunctionalGroupsSequence[0]
    assert frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID in referenced


def test_contributing_equipment_names_the_algorithm_ihe_air_style(ct_series: CTSeries) -> None:
    seg = build_seg(
        ct_series.volume,
        ct_series.datasets,
        binary_result(ct_series.volume),
        series_number=90,
        algorithm_version="v7",
    )
    items = seg.ContributingEquipmentSequence
    ai = [i for i in items if i.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"]
    assert len(ai) == 1
    assert ai[0].PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
    assert ai[0].ManufacturerModelName == "spine-agent" and ai[0].SoftwareVersions == "v7"
    # The CT scanner stays listed as acquisition equipment.
    assert any(i.PurposeOfReferenceCodeSequence[0].CodeValue == "109101" for i in items)


def test_labelled_mask_gives_column_plus_one_segment_per_vertebra(ct_series: CTSeries) -> None:
    result = labelled_result(ct_series.volume, (22, 23, 24))
    seg = _roundtrip(
        build_seg(ct_series.volume, ct_series.datasets, result, series_number=90, algorithm_version="v1")
    )

    assert seg.number_of_segments == 4
    assert seg.SegmentsOverlap == "YES"
    labels = [seg.get_segment_description(n).segment_label for n in range(1, 5)]
    assert labels == ["Vertebral column", "L3", "L4", "L5"]
    assert seg.get_segment_description(2).segmented_property_type.value == "36470004"
    assert seg.get_segment_description(3).tracking_id == "L4"
    np.testing.assert_array_equal(_mask_per_source_slice(seg, ct_series, 1), result.mask > 0)
    for number, label in ((2, 22), (3, 23), (4, 24)):
        np.testing.assert_array_equal(_mask_per_source_slice(seg, ct_series, number), result.mask == label)


def test_overlap_budget_drops_only_the_redundant_column(ct_series: CTSeries) -> None:
    result = labelled_result(ct_series.volume, (22, 23, 24))
    seg = _roundtrip(
        build_seg(
            ct_series.volume,
            ct_series.datasets,
            result,
            series_number=90,
            algorithm_version="v1",
            max_overlap_bytes=1,
        )
    )
    assert [seg.get_segment_description(n).segment_label for n in range(1, 4)] == ["L3", "L4", "L5"]
    assert seg.SegmentsOverlap == "NO"
    for number, label in ((1, 22), (2, 23), (3, 24)):
        np.testing.assert_array_equal(_mask_per_source_slice(seg, ct_series, number), result.mask == label)


def test_variants_use_the_private_scheme_and_declare_it(ct_series: CTSeries) -> None:
    result = labelled_result(ct_series.volume, (19, 28, 20, 25))
    seg = build_seg(ct_series.volume, ct_series.datasets, result, series_number=90, algorithm_version="v1")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Vertebral column", "T12", "T13", "L1", "L6"]
    assert seg.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME_DESIGNATOR
    t13 = seg.SegmentSequence[2].SegmentedPropertyTypeCodeSequence[0]
    assert (t13.CodeValue, t13.CodingSchemeDesignator) == ("T13", PRIVATE_SCHEME_DESIGNATOR)


def test_source_order_does_not_matter_and_files_work(ct_series: CTSeries) -> None:
    headers = [dcmread(path, stop_before_pixels=True) for path in reversed(ct_series.files)]
    result = binary_result(ct_series.volume)
    seg = _roundtrip(build_seg(ct_series.volume, headers, result, series_number=90, algorithm_version="v1"))
    np.testing.assert_array_equal(_mask_per_source_slice(seg, ct_series, 1), result.mask)


def test_mismatches_fail_with_a_reason(ct_series: CTSeries, tmp_path: Path) -> None:
    volume, datasets = ct_series.volume, ct_series.datasets
    good = binary_result(volume)
    with pytest.raises(SegBuildError, match="shape"):
        build_seg(
            volume, datasets, Result(mask=good.mask[1:], landmarks=[]), series_number=1, algorithm_version="v"
        )
    with pytest.raises(SegBuildError, match="empty"):
        build_seg(
            volume,
            datasets,
            Result(mask=np.zeros_like(good.mask), landmarks=[]),
            series_number=1,
            algorithm_version="v",
        )
    with pytest.raises(SegBuildError, match="not given"):
        build_seg(volume, datasets[:-1], good, series_number=1, algorithm_version="v")
    moved = [ds.copy() for ds in datasets]
    moved[3].ImagePositionPatient = [0.0, 0.0, 0.0]
    with pytest.raises(SegBuildError, match="lies at"):
        build_seg(volume, moved, good, series_number=1, algorithm_version="v")
    bad = good.mask.copy()
    bad[0, 0, 0] = 27
    with pytest.raises(SegBuildError, match="27"):
        vertebra_labels_in_mask(np.where(bad > 0, np.maximum(bad, 2), 0).astype(np.uint8))
