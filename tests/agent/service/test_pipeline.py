"""run_pipeline on its own: one spooled series in, SEG + SR + landmarks + manifest out (no ledger)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from agent.service.manifest import MANIFEST_NAME, read_manifest
from agent.service.pipeline import NoVertebraFound, run_pipeline
from dicom_io.result import Landmark, Result
from dicom_io.volume import Volume
from inference.phantoms import Phantom, generate_phantom, write_dicom_series


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Phantom, Path]:
    phantom = generate_phantom(seed=920_002, fov="lumbar", spacing=(2.0, 2.0, 4.0))
    folder = tmp_path_factory.mktemp("series")
    write_dicom_series(phantom, folder)
    return phantom, folder


class TruthPredictor:
    """The phantom's own centroids; a mask of bone, or none at all."""

    def __init__(self, phantom: Phantom, *, with_mask: bool = True) -> None:
        self.phantom = phantom
        self.with_mask = with_mask

    def predict(self, volume: Volume) -> Result:
        landmarks = [Landmark(label, pos, 0.9) for label, pos in sorted(self.phantom.centroids.items())]
        mask = (volume.array > 400).astype(np.uint8) if self.with_mask else np.zeros(volume.shape, np.uint8)
        return Result(mask=mask, landmarks=landmarks, timings={"stage1": 0.1}, model_version="truth")


def test_writes_seg_sr_landmarks_and_a_manifest_in_send_order(
    series: tuple[Phantom, Path], tmp_path: Path
) -> None:
    phantom, folder = series
    out = tmp_path / "out"
    stages: list[str] = []
    output = run_pipeline(folder, out, TruthPredictor(phantom), max_instances=10_000, on_stage=stages.append)

    assert stages == ["load", "engine", "write"]
    assert sorted(p.name for p in out.iterdir()) == ["landmarks.json", MANIFEST_NAME, "seg.dcm", "sr.dcm"]
    assert output.seg_path == out / "seg.dcm" and output.sr_path == out / "sr.dcm"
    assert output.manifest_path == out / MANIFEST_NAME
    assert json.loads((out / MANIFEST_NAME).read_text()) == {"send": ["seg.dcm", "sr.dcm"]}
    assert read_manifest(out) == output.dicom_files == [out / "seg.dcm", out / "sr.dcm"]
    assert pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True).Modality == "SEG"
    assert pydicom.dcmread(out / "sr.dcm", stop_before_pixels=True).Modality == "SR"
    landmarks = json.loads((out / "landmarks.json").read_text())
    assert [lm["label"] for lm in landmarks["landmarks"]] == sorted(phantom.centroids)
    assert {"load", "stage1", "write"} <= set(output.timings)


def test_without_a_mask_only_the_sr_is_written_and_listed(
    series: tuple[Phantom, Path], tmp_path: Path
) -> None:
    phantom, folder = series
    out = tmp_path / "out"
    output = run_pipeline(folder, out, TruthPredictor(phantom, with_mask=False), max_instances=10_000)
    assert output.seg_path is None
    assert read_manifest(out) == [out / "sr.dcm"]
    assert not (out / "seg.dcm").exists()


def test_no_vertebra_writes_nothing(series: tuple[Phantom, Path], tmp_path: Path) -> None:
    _, folder = series

    class Blind:
        def predict(self, volume: Volume) -> Result:
            return Result(mask=np.zeros(volume.shape, np.uint8), landmarks=[], model_version="blind")

    with pytest.raises(NoVertebraFound, match="no vertebra"):
        run_pipeline(folder, tmp_path / "out", Blind(), max_instances=10_000)
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()
