"""The routing rules on real DICOM headers: synthetic CT written with pydicom, an Enhanced CT, and the
agent's own SEG and SR as its writers build them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from pydicom import dcmread

from agent.service.routing import InstanceHeader, read_header, skip_reason
from config import ConfigError, RoutingSettings, settings_from_mapping
from dicom_io.seg import build_seg
from dicom_io.sr import build_sr
from tests.agent.service.conftest import write_enhanced_ct, write_series
from tests.dicom_io.ct_series import binary_result, write_ct_series

DEFAULTS = RoutingSettings()
AXIAL = ("ORIGINAL", "PRIMARY", "AXIAL")
LOCALIZER = ("ORIGINAL", "PRIMARY", "LOCALIZER")


def headers_of(files: Sequence[Path]) -> list[InstanceHeader]:
    return [read_header(f) for f in files]


def series_headers(
    tmp_path: Path, *, slices: int = 24, image_types: Sequence[Sequence[str]] | None = None, **attrs: object
) -> list[InstanceHeader]:
    """Write a series, set ``attrs`` (DICOM keywords) on every file, and read the routing headers back."""
    series = write_series(tmp_path / "s", slices=slices, rows=8, columns=8, image_types=image_types)
    for path in series.files:
        if attrs:
            ds = dcmread(path)
            for key, value in attrs.items():
                setattr(ds, key, value)
            ds.save_as(path)
    return headers_of(series.files)


def rules(**values: object) -> RoutingSettings:
    return RoutingSettings(**values)  # type: ignore[arg-type]


def test_the_defaults_suit_hospital_ct() -> None:
    assert DEFAULTS.enabled is True
    assert DEFAULTS.modalities == ["CT"]
    assert DEFAULTS.exclude_image_types == ["LOCALIZER"]
    assert DEFAULTS.min_slices == 20
    assert DEFAULTS.max_slice_thickness_mm == 5.0
    assert DEFAULTS.include_body_parts == DEFAULTS.exclude_body_parts == []
    assert DEFAULTS.include_series_descriptions == DEFAULTS.exclude_series_descriptions == []


def test_a_normal_ct_series_is_processed(tmp_path: Path) -> None:
    headers = series_headers(
        tmp_path, slices=24, BodyPartExamined="LSPINE", SeriesDescription="Spine 2.5 B30f"
    )
    assert [h.frames for h in headers] == [1] * 24
    assert headers[0].slice_thickness_mm == 2.5 and headers[0].modality == "CT"
    assert skip_reason(headers, DEFAULTS) is None


def test_too_few_slices_is_skipped_with_the_key_and_both_numbers(tmp_path: Path) -> None:
    headers = series_headers(tmp_path, slices=12)
    assert skip_reason(headers, DEFAULTS) == "skipped: 12 slices < routing.min_slices 20"
    assert skip_reason(headers, rules(min_slices=12)) is None


def test_a_localizer_series_is_skipped(tmp_path: Path) -> None:
    headers = series_headers(tmp_path, slices=3, image_types=[LOCALIZER] * 3)
    assert skip_reason(headers, DEFAULTS) == (
        "skipped: all 3 instance(s) have ImageType LOCALIZER (routing.exclude_image_types)"
    )
    # with the rule emptied, only the slice count is left to refuse it
    assert skip_reason(headers, rules(exclude_image_types=[])) == "skipped: 3 slices < routing.min_slices 20"


def test_localizers_inside_a_series_are_not_counted(tmp_path: Path) -> None:
    types = [LOCALIZER] * 2 + [AXIAL] * 19
    headers = series_headers(tmp_path, slices=21, image_types=types)
    assert skip_reason(headers, DEFAULTS) == (
        "skipped: 19 slices < routing.min_slices 20 (2 instance(s) left out by routing.exclude_image_types)"
    )
    assert skip_reason(headers, rules(min_slices=19)) is None


def test_image_type_values_are_compared_case_insensitively_and_configurable(tmp_path: Path) -> None:
    headers = series_headers(tmp_path, slices=20, image_types=[("DERIVED", "SECONDARY", "MPR")] * 20)
    assert skip_reason(headers, DEFAULTS) is None
    assert skip_reason(headers, rules(exclude_image_types=["localizer", "Mpr"])) == (
        "skipped: all 20 instance(s) have ImageType MPR (routing.exclude_image_types)"
    )


def test_thick_slices_are_skipped_by_the_median_thickness(tmp_path: Path) -> None:
    headers = series_headers(tmp_path, slices=24, SliceThickness="7.5")
    assert (
        skip_reason(headers, DEFAULTS) == "skipped: slice thickness 7.5 mm > routing.max_slice_thickness_mm 5"
    )
    assert skip_reason(headers, rules(max_slice_thickness_mm=7.5)) is None
    exactly = series_headers(tmp_path / "b", slices=24, SliceThickness="5.0")
    assert skip_reason(exactly, DEFAULTS) is None  # at most 5 mm: 5 mm passes


def test_a_series_without_slice_thickness_passes_that_rule(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", slices=20, rows=8, columns=8)
    for path in series.files:
        ds = dcmread(path)
        del ds.SliceThickness
        ds.save_as(path)
    headers = headers_of(series.files)
    assert {h.slice_thickness_mm for h in headers} == {None}
    assert skip_reason(headers, DEFAULTS) is None


def test_another_modality_is_skipped(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", slices=24, rows=8, columns=8, modality="PT")
    headers = headers_of(series.files)
    assert skip_reason(headers, DEFAULTS) == "skipped: modality PT not in routing.modalities [CT]"
    assert skip_reason(headers, rules(modalities=["CT", "pt"])) is None


def test_an_enhanced_ct_counts_its_frames(tmp_path: Path) -> None:
    enhanced = write_enhanced_ct(tmp_path / "e.dcm", frames=12, step=2.0)
    (header,) = headers_of(enhanced.files)
    assert header.frames == 12 and header.slice_thickness_mm == 2.0
    assert skip_reason([header], DEFAULTS) == "skipped: 12 slices < routing.min_slices 20"
    bigger = write_enhanced_ct(tmp_path / "f.dcm", frames=24, step=6.0)
    assert skip_reason(headers_of(bigger.files), DEFAULTS) == (
        "skipped: slice thickness 6 mm > routing.max_slice_thickness_mm 5"
    )
    assert skip_reason(headers_of(bigger.files), rules(max_slice_thickness_mm=6)) is None


def test_an_enhanced_ct_localizer_is_recognised_by_its_frame_type(tmp_path: Path) -> None:
    enhanced = write_enhanced_ct(tmp_path / "e.dcm", frames=24)
    ds = dcmread(enhanced.files[0])
    ds.SharedFunctionalGroupsSequence[0].CTImageFrameTypeSequence[0].FrameType = [
        "ORIGINAL",
        "PRIMARY",
        "LOCALIZER",
        "NONE",
    ]
    ds.save_as(enhanced.files[0])
    assert skip_reason(headers_of(enhanced.files), DEFAULTS) == (
        "skipped: all 1 instance(s) have ImageType LOCALIZER (routing.exclude_image_types)"
    )


def test_our_own_seg_and_sr_are_never_processed_even_with_routing_off(tmp_path: Path) -> None:
    ct = write_ct_series(tmp_path / "ct")
    seg = build_seg(ct.volume, ct.datasets, binary_result(ct.volume), series_number=9, algorithm_version="v")
    sr = build_sr(
        ct.datasets, binary_result(ct.volume), series_number=10, algorithm_version="v", segmentation=seg
    )
    seg.save_as(tmp_path / "seg.dcm")
    sr.save_as(tmp_path / "sr.dcm")
    seg_header, sr_header = headers_of([tmp_path / "seg.dcm", tmp_path / "sr.dcm"])
    assert not seg_header.is_ct_image and not sr_header.is_ct_image
    for settings in (DEFAULTS, rules(enabled=False), rules(min_slices=1, exclude_image_types=[])):
        reason = skip_reason([seg_header], settings)
        assert reason == (
            "skipped: no CT image among 1 instance(s), only [SEG (Segmentation Storage)]; "
            "SEG, SR and other non-image objects are never processed"
        )
        assert skip_reason([sr_header], settings) == (
            "skipped: no CT image among 1 instance(s), only [SR (Comprehensive 3D SR Storage)]; "
            "SEG, SR and other non-image objects are never processed"
        )
    # A SEG among the CT slices is not counted as a slice.
    ct_headers = headers_of(ct.files)
    assert skip_reason([*ct_headers, seg_header], rules(min_slices=13)) == (
        "skipped: 12 slices < routing.min_slices 13"
    )


def test_routing_off_processes_every_ct_series(tmp_path: Path) -> None:
    headers = series_headers(tmp_path, slices=2, image_types=[LOCALIZER] * 2, SliceThickness="10")
    assert skip_reason(headers, DEFAULTS) is not None
    assert skip_reason(headers, rules(enabled=False)) is None


def test_no_readable_header_means_no_decision() -> None:
    assert skip_reason([], DEFAULTS) is None


@pytest.mark.parametrize(
    ("patterns", "value", "matched"),
    [
        (["lspine"], "LSPINE", True),  # glob, case-insensitive, whole value
        (["*spine*"], "TLSPINE", True),
        (["spine"], "TLSPINE", False),  # a glob without * must match the whole value
        (["?SPINE"], "LSPINE", True),
        (["re:spine"], "TLSPINE", True),  # a regex is searched anywhere
        (["re:^(c|t|l)spine$"], "TLSPINE", False),
        (["re:^(c|t|l)spine$"], "LSPINE", True),
        (["head", "re:brain|skull"], "SKULL", True),
    ],
)
def test_body_part_patterns_glob_and_regex(
    tmp_path: Path, patterns: list[str], value: str, matched: bool
) -> None:
    headers = series_headers(tmp_path, slices=20, BodyPartExamined=value)
    excluded = skip_reason(headers, rules(exclude_body_parts=patterns))
    included = skip_reason(headers, rules(include_body_parts=patterns))
    if matched:
        assert excluded is not None and excluded.startswith(f"skipped: BodyPartExamined {value} matches ")
        assert "routing.exclude_body_parts" in excluded
        assert included is None
    else:
        assert excluded is None
        assert included == (
            f"skipped: BodyPartExamined {value} matches none of routing.include_body_parts {patterns}"
        )


def test_an_include_list_skips_a_series_without_the_attribute(tmp_path: Path) -> None:
    headers = series_headers(tmp_path, slices=20)
    assert skip_reason(headers, rules(include_body_parts=["*SPINE"])) == (
        "skipped: BodyPartExamined (absent) matches none of routing.include_body_parts ['*SPINE']"
    )
    assert skip_reason(headers, rules(include_series_descriptions=["*spine*"])) == (
        "skipped: SeriesDescription (absent) matches none of routing.include_series_descriptions ['*spine*']"
    )
    assert skip_reason(headers, rules(exclude_body_parts=["*"], exclude_series_descriptions=["*"])) is None


def test_series_description_patterns_name_the_pattern_never_the_value(tmp_path: Path) -> None:
    headers = series_headers(tmp_path, slices=20, SeriesDescription="Topogram 0.6 T20s Smith")
    reason = skip_reason(headers, rules(exclude_series_descriptions=["*scout*", "re:topo"]))
    assert reason == "skipped: SeriesDescription matches routing.exclude_series_descriptions 're:topo'"
    assert "Smith" not in reason
    assert skip_reason(headers, rules(include_series_descriptions=["*spine*"])) == (
        "skipped: SeriesDescription matches none of routing.include_series_descriptions ['*spine*']"
    )
    assert skip_reason(headers, rules(include_series_descriptions=["TOPOGRAM*"])) is None


def test_the_first_rule_that_leaves_nothing_names_the_reason(tmp_path: Path) -> None:
    headers = series_headers(
        tmp_path, slices=3, image_types=[LOCALIZER] * 3, SliceThickness="8", BodyPartExamined="HEAD"
    )
    assert "ImageType LOCALIZER" in str(skip_reason(headers, DEFAULTS))


@pytest.mark.parametrize(
    ("routing", "expected"),
    [
        ({"min_slices": 0}, "routing.min_slices = 0: expected greater than or equal to 1"),
        ({"max_slice_thickness_mm": 0}, "routing.max_slice_thickness_mm = 0: expected greater than 0"),
        ({"modalities": []}, "routing.modalities = []: expected at least one modality"),
        ({"modalities": ["SEG"]}, "routing.modalities = ['SEG']: expected image modalities; SEG objects"),
        ({"modalities": ["C T!"]}, "routing.modalities = ['C T!']: expected DICOM modality codes"),
        ({"exclude_image_types": ["a\\b"]}, "routing.exclude_image_types = ['a\\\\b']: expected Image Type"),
        (
            {"exclude_series_descriptions": ["re:(scout"]},
            "routing.exclude_series_descriptions = ['re:(scout']: expected a valid regular expression",
        ),
        ({"include_body_parts": [""]}, "routing.include_body_parts = ['']: expected a non-empty glob"),
        (
            {"include_body_parts": ["re:"]},
            "routing.include_body_parts = ['re:']: expected a regular expression",
        ),
        ({"min_slice": 3}, "routing.min_slice: unknown key"),
    ],
)
def test_config_check_names_the_routing_key_in_one_line(routing: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"routing": routing}, origin="agent.toml")
    message = str(info.value)
    assert message.startswith("agent.toml: ") and "\n" not in message
    assert expected in message


def test_modalities_and_image_types_are_normalised() -> None:
    settings = settings_from_mapping(
        {"routing": {"modalities": [" ct "], "exclude_image_types": ["localizer"]}}
    )
    assert settings.routing.modalities == ["CT"]
    assert settings.routing.exclude_image_types == ["LOCALIZER"]


def test_header_reading_skips_pixel_data(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", slices=1, rows=64, columns=64)
    header = read_header(series.files[0])
    assert header == InstanceHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        modality="CT",
        image_type=AXIAL,
        frames=1,
        slice_thickness_mm=2.5,
        body_part=None,
        series_description=None,
    )
