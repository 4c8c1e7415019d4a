"""The README's main job: the demo runs the whole loop, and its figures agree with `evaluate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from agent.cli.demo import run_demo

pytestmark = pytest.mark.slow


def test_demo_loop_and_its_error_agrees_with_evaluate(tmp_path: Path) -> None:
    steps: list[str] = []
    report = run_demo(tmp_path / "demo", seed=900_001, fov="thoracolumbar", progress=steps.append)
    assert report.job_state == "SUCCEEDED"
    assert steps[0].startswith("generating") and any("engine" in s for s in steps)
    assert len(report.received_files) == 2  # SEG + SR came back to the local PACS
    assert report.png is not None
    overlay = imread(str(report.png))[..., :3]  # decoded: the CT and the yellow landmark labels are drawn
    assert overlay.std() > 0.05
    assert np.all(np.abs(overlay - np.array([1.0, 0.835, 0.31])) < 0.08, axis=-1).sum() > 50
    # Measured with weights v0.6.0 (CPU): T5-L3, 11/11 identified, mean 0.54 mm (v0.5.0: 0.59; v0.4.0: 0.7 mm;
    # v0.3.0: 0.87 mm; v0.1.0-phantom: 9/11, 6.8 mm). The engine is deterministic; the margins are for
    # other CPUs' arithmetic, not for a regression (one vertebra lost or one level off fails).
    assert [lm.name for lm in report.landmarks] == ["T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12",
                                                    "L1", "L2", "L3"]
    assert report.identification_rate == 1.0
    assert report.mean_error_mm < 1.2

    out = tmp_path / "evaluation"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "evaluate",
            "--data",
            str(report.verse_dir),
            "--predictions",
            str(report.predictions_json.parent),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    overall = json.loads(out.with_suffix(".json").read_text())["summary"]["regions"]["all"]
    assert overall["id_rate"] == pytest.approx(report.identification_rate, abs=1e-4)
    assert overall["mean_error_mm"] == pytest.approx(report.mean_error_mm, abs=0.01)
