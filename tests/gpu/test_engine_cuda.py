"""The shipped engine on CUDA (fp16 autocast) against the same engine on the CPU (float32).

``gpu``-marked: skipped without CUDA, in CI too (CI has no GPU; tests/conftest.py exempts this marker
from "no skips in CI"). Run it where a GPU is lent: ``pytest -m gpu tests/gpu``.

The comparison is relative, so it holds for any shipped weights: the same vertebrae with the same labels,
centroids within 1.5 mm (fp16 rounding moves a soft-argmax centroid by far less than a voxel), the
confidences within 0.05 and the spine masks overlapping with Dice >= 0.97. A CUDA path that mixes up
devices, loses the autocast's float32 outputs or overflows in fp16 fails one of these.
"""

from __future__ import annotations

import numpy as np
import pytest

from inference.engine.engine import Engine, WeightsError, default_weights_dir
from inference.phantoms import generate_phantom
from tests.support import require

pytestmark = pytest.mark.gpu


def _shipped(device: str) -> Engine:
    try:
        directory = default_weights_dir()
    except WeightsError as exc:
        require(False, f"no shipped weights: {exc}")
        raise
    return Engine.from_weights(directory, device=device)


def test_cuda_engine_agrees_with_the_cpu_engine() -> None:
    import torch

    require(torch.cuda.is_available(), "needs CUDA")
    phantom = generate_phantom(seed=700001, fov="lumbar", spacing=(2.0, 2.0, 2.0))
    cpu = _shipped("cpu").predict(phantom.volume)
    gpu_engine = _shipped("cuda")
    assert next(gpu_engine.stage1.parameters()).device.type == "cuda"
    gpu = gpu_engine.predict(phantom.volume)

    assert cpu.model_version == gpu.model_version
    assert len(cpu.landmarks) > 0, "the CPU engine found nothing: the comparison would be empty"
    assert [lm.label for lm in gpu.landmarks] == [lm.label for lm in cpu.landmarks]
    for c, g in zip(cpu.landmarks, gpu.landmarks, strict=True):
        shift = float(np.linalg.norm(np.subtract(c.position_lps, g.position_lps)))
        assert shift <= 1.5, f"{c.name}: CUDA centroid {shift:.2f} mm from the CPU one"
        assert abs(c.confidence - g.confidence) <= 0.05, c.name
    assert gpu.mask.shape == cpu.mask.shape and gpu.mask.dtype == cpu.mask.dtype
    a, b = cpu.mask > 0, gpu.mask > 0
    dice = 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())
    assert dice >= 0.97, f"CPU/CUDA spine masks: Dice {dice:.3f}"
