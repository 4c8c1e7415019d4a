"""predict / evaluate / train commands: outputs on disk and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from agent.cli import app
from agent.errors import UserError
from inference.phantoms import generate_phantom, write_dicom_series
from inference.training.shipping import write_checksums
from inference.training.verse import write_nifti, write_verse
from tests.inference.engine.test_engine import make_small_volume, tiny_engine

runner = CliRunner()


def write_tiny_weights(d: Path, seed: int = 2) -> Path:
    """A complete weights folder (plan, both stages, SHA256SUMS) of the tiny untrained test engine."""
    d.mkdir()
    engine = tiny_engine(seed=seed)
    engine.plan.save(d)
    torch.save(engine.stage1.state_dict(), d / engine.plan.stage1.weights)
    torch.save(engine.stage2.state_dict(), d / engine.plan.stage2.weights)
    write_checksums(d)
    return d


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights") / "v0.0.1-tiny")


def test_predict_nifti_writes_verse_json_landmarks_and_mask(tmp_path: Path, tiny_weights: Path) -> None:
    vol = make_small_volume()
    write_nifti(tmp_path / "ct.nii.gz", vol.array, vol.affine)
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", "--input", str(tmp_path / "ct.nii.gz"), "--out", str(out),
                              "--weights", str(tiny_weights), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    ctd = json.loads((out / "prediction_ctd.json").read_text())
    assert "direction" in ctd[0]
    lms = json.loads((out / "prediction_landmarks.json").read_text())
    assert lms["model_version"] == "tiny-test" and set(lms["timings_s"]) >= {"stage1", "stage2"}
    assert len(ctd) - 1 == len(lms["landmarks"])
    assert (out / "prediction_msk.nii.gz").is_file()


def test_predict_dicom_series_folder(tmp_path: Path, tiny_weights: Path) -> None:
    ph = generate_phantom(seed=5, fov="lumbar", spacing=(4.0, 4.0, 4.0), shape=(40, 32, 32))
    write_dicom_series(ph, tmp_path / "series")
    res = runner.invoke(app, ["predict", "--input", str(tmp_path / "series"), "--out", str(tmp_path / "o"),
                              "--weights", str(tiny_weights)])
    assert res.exit_code == 0, res.output
    import nibabel as nib

    mask = nib.load(str(tmp_path / "o" / "prediction_msk.nii.gz"))
    assert mask.shape == ph.volume.shape[::-1]  # type: ignore[attr-defined]


def test_evaluate_verse_folder_writes_markdown_and_json(tmp_path: Path, tiny_weights: Path) -> None:
    ph = generate_phantom(seed=6, fov="lumbar", spacing=(4.0, 4.0, 4.0), shape=(40, 32, 32))
    write_verse(ph, tmp_path / "verse", "sub-ph006")
    res = runner.invoke(app, ["evaluate", "--data", str(tmp_path / "verse"), "--weights", str(tiny_weights),
                              "--out", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    summary = report["summary"]
    assert summary["subjects"] == 1
    assert summary["regions"]["lumbar"]["gt_vertebrae"] == len([k for k in ph.centroids if 20 <= k <= 25])
    assert 0.0 <= summary["stage1_dice_mean"] <= 1.0
    assert "| lumbar |" in (tmp_path / "report.md").read_text()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[3], timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "--input", "/no/such/ct.nii.gz", "--out", "/tmp/x"], "no such file or folder"),
        (["evaluate", "--out", "/tmp/x"], "exactly one of --data DIR or --phantoms N"),
        (["evaluate", "--phantoms", "2", "--seed", "1000", "--out", "/tmp/x"], "overlaps the training"),
        (["train", "stage3", "--out", "/tmp/x"], "stage must be stage1 or stage2"),
        (["predict", "--input", "/", "--out", "/tmp/x", "--weights", "/no/such/weights"], "does not exist"),
    ],
)
def test_cli_refusals_are_user_errors(args: list[str], message: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    assert isinstance(res.exception, UserError) and message in str(res.exception)


def test_cli_error_is_one_line_without_traceback_in_a_real_process() -> None:
    res = _cli("predict", "--input", "/no/such/ct.nii.gz", "--out", "/tmp/x")
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no such file or folder" in lines[0] and "Traceback" not in res.stderr
