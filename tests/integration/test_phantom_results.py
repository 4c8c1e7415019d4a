"""SEG + SR from a project phantom written as DICOM and loaded back by ``dicom_io.series.load_series``:
the writers work on the real loader's Volume, the ground-truth labels round-trip through the SEG, and the
phantom's centroids through the SR's points (written to 0.1 mm)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from dicom_io.result import Landmark, Result
from dicom_io.seg import build_seg
from dicom_io.series import load_series
from dicom_io.sr import build_sr
from dicom_io.validate import validate_seg
from inference.phantoms import generate_phantom, write_dicom_series
from tests.conftest import require_tool


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    phantom = generate_phantom(seed=11, fov="lumbar", spacing=(4.0, 4.0, 4.0))
    series_dir = tmp_path_factory.mktemp("phantom")
    write_dicom_series(phantom, series_dir)
    landmarks = [Landmark(label, pos, 0.95) for label, pos in sorted(phantom.centroids.items())]
    return series_dir, Result(mask=phantom.labels.copy(), landmarks=landmarks, model_version="phantom-truth")


def test_phantom_truth_round_trips_through_seg_and_sr(
    phantom_case: tuple[Path, Result], tmp_path: Path
) -> None:
    series_dir, truth = phantom_case
    volume = load_series(series_dir)
    assert volume.source is not None
    headers = [dcmread(p, stop_before_pixels=True) for p in sorted(series_dir.glob("*.dcm"))]
    result = Result(mask=truth.mask, landmarks=truth.landmarks, model_version=truth.model_version)
    assert result.mask.shape == volume.shape

    seg = build_seg(volume, headers, result, series_number=9901, algorithm_version="phantom-truth")
    sr = build_sr(headers, result, series_number=9902, algorithm_version="phantom-truth", segmentation=seg)

    buffer = BytesIO()
    seg.save_as(buffer)
    buffer.seek(0)
    read_seg = hd.seg.segread(buffer)
    labels = sorted({int(v) for v in np.unique(truth.mask) if v})
    assert read_seg.number_of_segments == len(labels) + 1
    pixels = read_seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.source.sop_instance_uids),
        segment_numbers=[1],
        ignore_spatial_locations=False,
    )
    np.testing.assert_array_equal(pixels[..., 0], truth.mask > 0)

    buffer = BytesIO()
    sr.save_as(buffer)
    buffer.seek(0)
    read_sr = hd.sr.srread(buffer)
    assert isinstance(read_sr.content, hd.sr.MeasurementReport)
    points = {
        str(g.tracking_identifier): g.roi.value[0]
        for g in read_sr.content.get_planar_roi_measurement_groups()
        if g.roi is not None
    }
    assert set(points) == {lm.name for lm in truth.landmarks}
    for landmark in truth.landmarks:
        np.testing.assert_allclose(points[landmark.name], landmark.position_lps, atol=0.051)


@pytest.mark.integration
def test_phantom_seg_passes_dciodvfy(phantom_case: tuple[Path, Result], tmp_path: Path) -> None:
    require_tool("dciodvfy")
    series_dir, truth = phantom_case
    volume = load_series(series_dir)
    headers = [dcmread(p, stop_before_pixels=True) for p in sorted(series_dir.glob("*.dcm"))]
    path = tmp_path / "seg.dcm"
    build_seg(volume, headers, truth, series_number=9901, algorithm_version="phantom-truth").save_as(path)
    (report,) = validate_seg(path)
    assert report.ok, report.summary()
