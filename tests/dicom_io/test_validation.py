"""Every SEG and SR the writers produce passes the reference validators with zero errors.

Marked ``integration``: needs dicom3tools (dciodvfy), java + PixelMed (pixelmed-apps) and DCMTK
(dsrdump). Locally a missing tool skips; with CI set it fails (``tests.support.require_tool``).
The only warning allowed is dciodvfy's "Unrecognized defined term = <99SPINEAGENT>" when L6/T13 are
present: the private coding scheme is deliberate (docs/viewers.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_io.codes import PRIVATE_SCHEME_DESIGNATOR
from dicom_io.result import Result
from dicom_io.seg import build_seg
from dicom_io.sr import build_sr
from dicom_io.validate import (
    PIXELMED_JAR_ENV,
    ValidationReport,
    find_pixelmed_jar,
    run_dciodvfy,
    run_dsrdump,
    run_pixelmed_sr_validator,
    validate_seg,
    validate_sr,
)
from tests.dicom_io.ct_series import CTSeries, binary_result, labelled_result, write_ct_series
from tests.support import require, require_tool

pytestmark = pytest.mark.integration

_ALLOWED_WARNING = f"Unrecognized defined term = <{PRIVATE_SCHEME_DESIGNATOR}>"


@pytest.fixture
def sr_tools() -> None:
    for tool in ("dciodvfy", "java", "dsrdump"):
        require_tool(tool)
    try:
        find_pixelmed_jar()
    except FileNotFoundError as exc:
        require(False, f"{exc}; install pixelmed-apps or set {PIXELMED_JAR_ENV}")


def _assert_clean(reports: list[ValidationReport], *, private_codes: bool) -> None:
    for report in reports:
        assert report.ok, report.summary()
        unexpected = [w for w in report.warnings if not (private_codes and _ALLOWED_WARNING in w)]
        assert not unexpected, report.summary()


def _results(ct: CTSeries) -> dict[str, tuple[Result, bool]]:
    return {
        "binary": (binary_result(ct.volume), False),
        "lumbar": (labelled_result(ct.volume, (22, 23, 24)), False),
        "variants": (labelled_result(ct.volume, (19, 28, 20, 25)), True),
    }


def test_every_seg_passes_dciodvfy(ct_series: CTSeries, tmp_path: Path) -> None:
    require_tool("dciodvfy")
    for name, (result, private_codes) in _results(ct_series).items():
        for budget in (1 << 30, 1):  # overlapping column + vertebrae, and the label-map fallback
            path = tmp_path / f"seg-{name}-{budget}.dcm"
            build_seg(
                ct_series.volume,
                ct_series.datasets,
                result,
                series_number=90,
                algorithm_version="v1",
                max_overlap_bytes=budget,
            ).save_as(path)
            _assert_clean(validate_seg(path), private_codes=private_codes)


def test_fractional_seg_of_odd_geometry_passes_dciodvfy(tmp_path: Path) -> None:
    """30 x 30 slices: the writer's FRACTIONAL fallback (dicom_io.seg) is as valid as BINARY."""
    require_tool("dciodvfy")
    odd = write_ct_series(tmp_path / "ct", slices=11, rows=30, columns=30)
    result = binary_result(odd.volume)
    seg = build_seg(odd.volume, odd.datasets, result, series_number=90, algorithm_version="v1")
    assert seg.SegmentationType == "FRACTIONAL"
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    _assert_clean(validate_seg(path), private_codes=False)


def test_every_sr_passes_dciodvfy_pixelmed_and_dsrdump(
    ct_series: CTSeries, tmp_path: Path, sr_tools: None
) -> None:
    for name, (result, private_codes) in _results(ct_series).items():
        if name == "binary":
            continue  # same landmarks as "lumbar"
        seg = build_seg(
            ct_series.volume, ct_series.datasets, result, series_number=90, algorithm_version="v1"
        )
        path = tmp_path / f"sr-{name}.dcm"
        build_sr(
            ct_series.datasets, result, series_number=91, algorithm_version="v1", segmentation=seg
        ).save_as(path)
        reports = validate_sr(path)
        assert [r.tool for r in reports] == ["dciodvfy", "DicomSRValidator", "dsrdump"]
        _assert_clean(reports, private_codes=private_codes)


def test_validators_do_report_errors(ct_series: CTSeries, tmp_path: Path, sr_tools: None) -> None:
    """The wrappers are only worth something if a broken file fails them."""
    result = labelled_result(ct_series.volume, (22, 23))
    path = tmp_path / "sr.dcm"
    build_sr(ct_series.datasets, result, series_number=91, algorithm_version="v1").save_as(path)
    broken = dcmread(path)
    del broken.Modality
    containers = {c.ConceptNameCodeSequence[0].CodeValue: c for c in broken.ContentSequence}
    measurements = containers["126010"]
    measurements.ConceptNameCodeSequence[0].CodeValue = "999999"  # not "Imaging Measurements" any more
    # nor "Qualitative Evaluations" (the disclaimer): the report now holds none of the containers TID 1500
    # requires one of
    containers["C0034375"].ConceptNameCodeSequence[0].CodeValue = "999998"
    for group in measurements.ContentSequence:
        for item in group.ContentSequence:
            if item.ValueType == "NUM":
                del item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence
    broken_path = tmp_path / "broken.dcm"
    broken.save_as(broken_path)

    assert any("Modality" in e for e in run_dciodvfy(broken_path).errors)
    assert not run_pixelmed_sr_validator(broken_path).ok
    assert not run_dsrdump(broken_path).ok
