"""Engine: geometry, determinism, weights loading/checksums, output files, training smoke test.

These use tiny random-weight networks so they run in seconds; the shipped weights are exercised in
``test_engine_shipped.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from dicom_io.labels import ENGINE_LABELS
from dicom_io.result import Landmark, Result
from dicom_io.volume import Volume
from inference.engine.engine import (
    Engine,
    WeightsError,
    _Stage2Tile,
    default_weights_dir,
    merge_tiles,
    roi_box,
    tile_starts,
)
from inference.engine.networks import DSNTLocaliser, ISEVNet, NetworkConfig
from inference.engine.plan import EnginePlan, Stage1Plan, Stage2Plan
from inference.engine.resample import Grid
from inference.phantoms import generate_phantom
from inference.training.shipping import write_checksums
from inference.training.verse import read_centroids, read_nifti_volume, write_nifti, write_result

TINY = NetworkConfig(base=2, levels=2, convs_per_level=(1, 1), se_reduction=2)


def tiny_plan() -> EnginePlan:
    s1 = Stage1Plan(network=TINY, patch=(32, 32, 32), stride=(24, 24, 24))
    s2 = Stage2Plan(network=replace(TINY, out_channels=len(ENGINE_LABELS)), crop=(48, 48, 48),
                    overlap=(0, 0, 0), presence_threshold=0.0)
    return EnginePlan(version="tiny-test", stage1=s1, stage2=s2)


def tiny_engine(seed: int = 0) -> Engine:
    torch.manual_seed(seed)
    plan = tiny_plan()
    return Engine(plan, ISEVNet(plan.stage1.network), DSNTLocaliser(plan.stage2.network), torch.device("cpu"))


def make_small_volume() -> Volume:
    """A 40x36x32-voxel (4 mm) box around a phantom's lumbar spine: small enough for random weights."""
    ph = generate_phantom(seed=3, fov="lumbar", spacing=(4.0, 4.0, 4.0))
    vol = ph.volume
    spine = np.mean([np.asarray(p) for p in ph.centroids.values()], axis=0)
    centre = np.round(vol.lps_to_index(spine)).astype(int)[::-1]  # (k, j, i)
    centre = np.clip(centre, 0, np.asarray(vol.shape) - 1)
    lo = np.clip(centre - np.array([20, 18, 16]), 0, None)
    sl = tuple(slice(int(a), int(a) + n) for a, n in zip(lo, (40, 36, 32), strict=True))
    aff = vol.affine.copy()
    aff[:3, 3] = vol.index_to_lps(lo[::-1].astype(float))
    return Volume(np.ascontiguousarray(vol.array[sl]), aff)


@pytest.fixture(scope="module")
def small_volume() -> Volume:
    return make_small_volume()


def test_tile_starts_cover_and_end_flush() -> None:
    assert tile_starts(10, 16, 8) == [0]
    assert tile_starts(40, 16, 12) == [0, 12, 24]
    s = tile_starts(41, 16, 12)
    assert s[0] == 0 and s[-1] == 41 - 16


def test_predict_shapes_timings_and_determinism(small_volume: Volume) -> None:
    engine = tiny_engine()
    a = engine.predict(small_volume)
    b = engine.predict(small_volume)
    assert a.mask.shape == small_volume.shape and a.mask.dtype == np.uint8
    assert set(a.timings) == {"stage1", "stage2", "postprocess"}
    assert a.model_version == "tiny-test"
    assert np.array_equal(a.mask, b.mask)
    assert [(lm.label, lm.position_lps, lm.confidence) for lm in a.landmarks] == [
        (lm.label, lm.position_lps, lm.confidence) for lm in b.landmarks
    ]


def test_mask_follows_input_orientation(small_volume: Volume) -> None:
    """The same image stored with k reversed gives the same mask, reversed (world-aligned grids)."""
    engine = tiny_engine()
    flipped_aff = small_volume.affine.copy()
    nk = small_volume.shape[0]
    flipped_aff[:3, 3] = small_volume.index_to_lps([0, 0, nk - 1])
    flipped_aff[:3, 2] *= -1
    flipped = Volume(np.ascontiguousarray(small_volume.array[::-1]), flipped_aff)
    grid_a, prob_a = engine.segment_coarse(small_volume)
    grid_b, prob_b = engine.segment_coarse(flipped)
    assert np.allclose(grid_a.affine, grid_b.affine) and np.allclose(prob_a, prob_b, atol=1e-4)
    mask_a = engine._mask_on_volume_grid(small_volume, grid_a, prob_a)
    mask_b = engine._mask_on_volume_grid(flipped, grid_b, prob_b)
    assert mask_a.shape == mask_b.shape == small_volume.shape
    assert np.mean(mask_a == mask_b[::-1]) > 0.99


def test_roi_box_is_world_bbox_plus_margin() -> None:
    mask = np.zeros((10, 10, 10), bool)
    mask[2:5, 3, 4:6] = True
    grid = Grid((10, 10, 10), np.diag([2.0, 2.0, 2.0, 1.0]))
    box = roi_box(mask, grid, margin_mm=5.0)
    assert box is not None
    lo, hi = box
    assert np.allclose(lo, [8 - 6, 6 - 6, 4 - 6]) and np.allclose(hi, [10 + 6, 6 + 6, 8 + 6])
    assert roi_box(np.zeros_like(mask), grid, 5.0) is None


def test_merge_tiles_presence_weighted() -> None:
    g = Grid((4, 4, 4), np.eye(4))
    t1 = _Stage2Tile(g, np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]), np.array([0.9, 0.1]), np.full(2, 2.0))
    t2 = _Stage2Tile(g, np.array([[3.0, 0.0, 0.0], [9.0, 9.0, 9.0]]), np.array([0.6, 0.8]), np.full(2, 4.0))
    c = {cand.label: cand for cand in merge_tiles([t1, t2], (20, 21))}
    assert c[20].position_lps[0] == pytest.approx(3.0 * 0.6 / 1.5)
    assert c[20].presence == pytest.approx(0.9)
    # Label 21: the 0.1 crop falls under half the best presence and does not vote.
    assert c[21].position_lps == (9.0, 9.0, 9.0)


def _save_tiny_weights(directory: Path, engine: Engine) -> None:
    directory.mkdir(parents=True)
    engine.plan.save(directory)
    torch.save(engine.stage1.state_dict(), directory / engine.plan.stage1.weights)
    torch.save(engine.stage2.state_dict(), directory / engine.plan.stage2.weights)
    write_checksums(directory)


def test_from_weights_round_trip_and_checksums(tmp_path: Path, small_volume: Volume) -> None:
    engine = tiny_engine(seed=1)
    _save_tiny_weights(tmp_path / "v1", engine)
    loaded = Engine.from_weights(tmp_path / "v1", device="cpu")
    assert loaded.plan == engine.plan
    a, b = engine.predict(small_volume), loaded.predict(small_volume)
    assert [lm.position_lps for lm in a.landmarks] == [lm.position_lps for lm in b.landmarks]
    with open(tmp_path / "v1" / "stage2.pt", "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WeightsError, match="sha256 mismatch for stage2.pt"):
        Engine.from_weights(tmp_path / "v1")
    with pytest.raises(WeightsError, match="does not exist"):
        Engine.from_weights(tmp_path / "nope")


def test_default_weights_dir_picks_newest_version(tmp_path: Path) -> None:
    for name in ("v0.2.0", "v0.10.0", "v0.9.1"):
        (tmp_path / name).mkdir()
        EnginePlan(version=name).save(tmp_path / name)
    (tmp_path / "v9-incomplete").mkdir()
    assert default_weights_dir(tmp_path).name == "v0.10.0"
    with pytest.raises(WeightsError, match="no engine weights"):
        default_weights_dir(tmp_path / "empty")


def test_written_centroids_read_back_by_the_verse_reader(tmp_path: Path, small_volume: Volume) -> None:
    lms = [Landmark(20, (1.5, -30.25, 12.0), 0.9), Landmark(21, (2.0, -28.0, -20.5), 0.8)]
    result = Result(mask=np.zeros(small_volume.shape, np.uint8), landmarks=lms, timings={"stage1": 0.1})
    paths = write_result(tmp_path, result, small_volume)
    back = read_centroids(paths["centroids"], nib.load(str(paths["mask"])))  # type: ignore[arg-type]
    for lm in lms:
        assert np.allclose(back[lm.label], lm.position_lps, atol=1e-2)


def test_nifti_round_trip_keeps_lps_geometry(tmp_path: Path, small_volume: Volume) -> None:
    write_nifti(tmp_path / "ct.nii.gz", small_volume.array, small_volume.affine)
    back = read_nifti_volume(tmp_path / "ct.nii.gz")
    assert np.allclose(back.affine, small_volume.affine, atol=1e-4)
    assert np.allclose(back.array, small_volume.array)


def test_training_smoke_checkpoint_and_resume(tmp_path: Path) -> None:
    from inference.training.training import TrainConfig, Trainer

    plan = tiny_plan()
    for stage in ("stage1", "stage2"):
        cfg = TrainConfig(stage=stage, out_dir=tmp_path / stage, epochs=1, iters_per_epoch=2, phantoms=2,
                          val_subjects=1, cache_dir=tmp_path / "cache", stage1=plan.stage1,
                          stage2=plan.stage2)
        Trainer(cfg).run()
        assert (tmp_path / stage / "model.pt").is_file()
        cfg.resume = True
        cfg.epochs = 2
        trainer = Trainer(cfg)
        assert trainer.iteration == 2
        trainer.run()
        rows = (tmp_path / stage / "metrics.csv").read_text().splitlines()
        assert len(rows) == 3 and rows[0].startswith("epoch,iterations,lr,loss")
