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
from tests.dicom_io.ct_series import CTSeries, binary_result, labelled_result, write_ct_series


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


def test_descriptions_say_what_the_seg_holds_and_that_it_is_research(ct_series: CTSeries) -> None:
    def descriptions(result: Result, budget: int = 1 << 30) -> tuple[str, str]:
        seg = build_seg(
            ct_series.volume,
            ct_series.datasets,
            result,
            series_number=90,
            algorithm_version="v1",
            max_overlap_bytes=budget,
        )
        assert len(seg.SeriesDescription) <= 64 and len(seg.ContentDescription) <= 64
        return str(seg.SeriesDescription), str(seg.ContentDescription)

    series, content = descriptions(binary_result(ct_series.volume))
    assert series == "Spine segmentation (spine-agent, research use only)"
    assert content == "Vertebral column; research use only"
    lumbar = labelled_result(ct_series.volume, (22, 23, 24))
    assert descriptions(lumbar)[1] == "Vertebral column + 3 vertebrae L3-L5; research use only"
    assert descriptions(lumbar, budget=1)[1] == "3 vertebrae L3-L5; research use only"  # label-map fallback
    assert descriptions(labelled_result(ct_series.volume, (22,)))[1] == (
        "Vertebral column + vertebra L3; research use only"
    )


def test_geometry_that_would_pad_the_bit_stream_is_written_fractional(tmp_path: Path) -> None:
    """Rows x columns not a multiple of 16 and an odd frame count: OHIF cannot read the padded BINARY
    Pixel Data, so the SEG is FRACTIONAL with the same 0/1 pixels (dicom_io.seg docstring)."""
    odd = write_ct_series(tmp_path / "ct", slices=11, rows=30, columns=30)  # 900 bits a frame
    result = binary_result(odd.volume)
    frames = int(result.mask.reshape(result.mask.shape[0], -1).any(axis=1).sum())
    assert (frames * 900 + 7) // 8 % 2 == 1  # the case in point: BINARY would need a pad byte
    seg = _roundtrip(build_seg(odd.volume, odd.datasets, result, series_number=90, algorithm_version="v1"))
    assert seg.SegmentationType == "FRACTIONAL" and seg.MaximumFractionalValue == 1
    assert seg.SegmentationFractionalType == "PROBABILITY" and seg.BitsAllocated == 8
    np.testing.assert_array_equal(_mask_per_source_slice(seg, odd, 1) > 0, result.mask > 0)


def test_regular_ct_geometry_stays_binary(ct_series: CTSeries) -> None:
    seg = build_seg(
        ct_series.volume,
        ct_series.datasets,
        labelled_result(ct_series.volume, (22, 23)),
        series_number=90,
        algorithm_version="v1",
    )
    assert seg.SegmentationType == "BINARY" and seg.BitsAllocated == 1  # 64 x 64: always byte-even
