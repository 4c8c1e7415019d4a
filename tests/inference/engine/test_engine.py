"""Engine: geometry, determinism, weights loading/checksums, output files, training smoke test.

These use tiny random-weight networks so they run in seconds; the shipped weights are exercised in
``test_engine_shipped.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from dicom_io.labels import ENGINE_LABELS
from dicom_io.result import Landmark, Result
from dicom_io.volume import Volume
from inference.engine.engine import (
    Engine,
    Vertebra,
    WeightsError,
    crop_grid_at,
    default_weights_dir,
    merge_answers,
    seed_points,
    tile_starts,
)
from inference.engine.networks import ISEVNet, NetworkConfig, VertebraLocaliser
from inference.engine.plan import EnginePlan, Stage1Plan, Stage2Plan
from inference.engine.resample import Grid
from inference.phantoms import generate_phantom
from inference.training.shipping import write_checksums
from inference.training.verse import read_centroids, read_nifti_volume, write_nifti, write_result

TINY = NetworkConfig(base=2, levels=2, convs_per_level=(1, 1), se_reduction=2)


def tiny_plan() -> EnginePlan:
    s1 = Stage1Plan(network=TINY, patch=(32, 32, 32), stride=(24, 24, 24))
    s2 = Stage2Plan(network=replace(TINY, out_channels=len(ENGINE_LABELS) + 1, region_classes=3),
                    crop=(32, 32, 32), none_threshold=1.01)
    return EnginePlan(version="tiny-test", stage1=s1, stage2=s2)


def tiny_engine(seed: int = 0) -> Engine:
    torch.manual_seed(seed)
    plan = tiny_plan()
    return Engine(plan, ISEVNet(plan.stage1.network), VertebraLocaliser(plan.stage2.network),
                  torch.device("cpu"))


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


def test_seed_points_follow_the_column_not_the_bone_beside_it() -> None:
    grid = Grid((30, 20, 20), np.diag([4.0, 4.0, 4.0, 1.0]))
    mask = np.zeros(grid.shape, bool)
    mask[:, 8:11, 9:12] = True  # the column: i 9-11, j 8-10, every slice
    mask[0:12, 2:4, 1:3] = True  # other bone (e.g. a hip) in the lower slices only, smaller
    seeds = seed_points(mask, grid, step_mm=12.0)
    assert len(seeds) == 10  # 30 slices x 4 mm / 12 mm
    assert np.all(np.diff(seeds[:, 2]) < 0)  # head to foot
    assert np.allclose(seeds[:, 0], 10 * 4.0) and np.allclose(seeds[:, 1], 9 * 4.0)
    assert len(seed_points(np.zeros_like(mask), grid, 12.0)) == 0


def test_crop_grid_is_centred_and_world_aligned() -> None:
    plan = tiny_plan().stage2
    g = crop_grid_at((10.0, -20.0, 30.0), plan)
    centre = g.index_to_lps((np.asarray(plan.crop[::-1]) - 1) / 2)
    assert np.allclose(centre, (10.0, -20.0, 30.0))
    assert np.allclose(g.affine[:3, :3], np.eye(3) * plan.spacing_mm)


def test_merge_answers_groups_by_distance_and_averages() -> None:
    pts = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, -30.0]])
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.2, 0.2], [0.1, 0.7, 0.2]])
    found = merge_answers(pts, probs, merge_mm=10.0)
    assert len(found) == 2
    first = next(v for v in found if v.votes == 2)
    assert np.allclose(first.position_lps, [1.0, 0.0, 0.0])
    assert first.p_none == pytest.approx(0.15)
    assert np.allclose(first.probs, np.array([0.7, 0.15]) / 0.85)


def test_merge_answers_averages_the_region_evidence() -> None:
    pts = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    # two levels, "none", then three regions
    probs = np.array([[0.8, 0.1, 0.1, 0.1, 0.8, 0.1], [0.6, 0.2, 0.2, 0.1, 0.6, 0.3]])
    (v,) = merge_answers(pts, probs, merge_mm=10.0, regions=3)
    assert v.p_none == pytest.approx(0.15)
    assert np.allclose(v.probs, np.array([0.7, 0.15]) / 0.85)
    assert v.p_region is not None and np.allclose(v.p_region, [0.1, 0.7, 0.2])
    (old,) = merge_answers(pts, probs[:, :3], merge_mm=10.0)
    assert old.p_region is None


def test_name_chain_weighs_the_region_evidence() -> None:
    """Level evidence leaning one level low everywhere names T10-L3 as T11-L4; the region head's "ribs
    on the first three, none below" names them right (with the plan's region weight 0: one low)."""
    engine = tiny_engine()
    labels = engine.plan.stage2.labels
    true = [17, 18, 19, 20, 21, 22]
    z = np.cumsum([0.0] + [-24.0 if lab <= 19 else -35.0 for lab in true[1:]])
    verts = []
    for n, lab in enumerate(true):
        probs = np.full(len(labels), 0.55 / (len(labels) - 2))
        probs[labels.index(lab + 1)] = 0.3
        probs[labels.index(lab)] = 0.15
        region = np.array([0.02, 0.9, 0.08]) if lab <= 19 else np.array([0.02, 0.08, 0.9])
        verts.append(Vertebra(np.array([0.0, 0.0, z[n]]), probs, 0.05, 1, region))
    assert [m.name for m in engine.name_chain(verts)] == ["T10", "T11", "T12", "L1", "L2", "L3"]
    engine.plan = replace(engine.plan, chain=replace(engine.plan.chain, region_weight=0.0))
    assert [m.name for m in engine.name_chain(verts)] == ["T11", "T12", "L1", "L2", "L3", "L4"]


def test_name_chain_orders_cranial_first_and_names_by_evidence() -> None:
    engine = tiny_engine()
    labels = engine.plan.stage2.labels
    verts = []
    for n, lab in enumerate((22, 20, 21)):  # given out of order
        probs = np.full(len(labels), 0.2 / (len(labels) - 1))
        probs[labels.index(lab)] = 0.8
        z = {20: 0.0, 21: -34.0, 22: -68.0}[lab]
        verts.append(Vertebra(np.array([0.0, 0.0, z]), probs, 0.1, 1 + n))
    marks = engine.name_chain(verts)
    assert [m.name for m in marks] == ["L1", "L2", "L3"]
    assert marks[0].confidence == pytest.approx(0.8 * 0.9)


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


def _tiny_stage2_trainer(tmp_path: Path) -> tuple[EnginePlan, Any, np.ndarray, tuple[float, float, float]]:
    """A stage-2 trainer of the tiny plan in eval mode, one noise crop and its spacing."""
    from inference.training.training import TrainConfig, Trainer

    plan = tiny_plan()
    cfg = TrainConfig(stage="stage2", out_dir=tmp_path / "s2", epochs=1, iters_per_epoch=1, phantoms=1,
                      val_subjects=1, cache_dir=tmp_path / "cache", stage1=plan.stage1, stage2=plan.stage2)
    trainer = Trainer(cfg)
    trainer.model.eval()
    image = np.random.default_rng(0).normal(0, 0.3, (1, *plan.stage2.crop)).astype(np.float32)
    sp = plan.stage2.spacing_mm
    return plan, trainer, image, (sp, sp, sp)


def test_the_variant_levels_weigh_more_in_the_level_loss(tmp_path: Path) -> None:
    """T13 and L6 (one vertebra in a phantom of 15, in 6-7 % of phantoms) carry RARE_LEVEL_WEIGHT times the
    cross-entropy of any other level, so the head learns to report them."""
    import torch.nn.functional as F

    from dicom_io.labels import LABEL_BY_NAME
    from inference.training.datasets import Stage2Sample
    from inference.training.training import RARE_LEVEL_WEIGHT

    plan, trainer, image, spacing = _tiny_stage2_trainer(tmp_path)
    with torch.no_grad():
        _, _, logits = trainer.model(torch.from_numpy(image)[None], spacing)
    ratios = {}
    for name in ("T12", "T13", "L5", "L6"):
        cls = plan.stage2.labels.index(LABEL_BY_NAME[name])
        sample = Stage2Sample(image, np.zeros(3, np.float32), False, cls, spacing)
        with torch.no_grad():
            _, parts = trainer._stage2_loss(sample)
        n_cls = len(plan.stage2.labels) + 1
        plain = float(F.cross_entropy(logits[:, :n_cls], torch.tensor([cls]), label_smoothing=0.05))
        ratios[name] = parts["class_ce"] / plain
    assert ratios["T12"] == pytest.approx(1.0, rel=1e-4) and ratios["L5"] == pytest.approx(1.0, rel=1e-4)
    assert ratios["T13"] == pytest.approx(RARE_LEVEL_WEIGHT, rel=1e-4), ratios
    assert ratios["L6"] == pytest.approx(RARE_LEVEL_WEIGHT, rel=1e-4), ratios
    assert RARE_LEVEL_WEIGHT > 1.0


def test_the_region_head_learns_ribs_or_none(tmp_path: Path) -> None:
    """The region cross-entropy (C, T, L; T13 is T, L6 is L) is added to the loss for a vertebra and left
    out for a crop of no vertebra; validation reports how often the region is right."""
    import torch.nn.functional as F

    from dicom_io.labels import LABEL_BY_NAME
    from inference.training.datasets import Stage2Sample
    from inference.training.training import CLASS_WEIGHT, REGION_WEIGHT

    plan, trainer, image, spacing = _tiny_stage2_trainer(tmp_path)
    n_cls = len(plan.stage2.labels) + 1
    with torch.no_grad():
        _, _, logits = trainer.model(torch.from_numpy(image)[None], spacing)
    assert logits.shape[1] == n_cls + 3
    for name, region in (("C7", 0), ("T12", 1), ("T13", 1), ("L1", 2), ("L6", 2)):
        cls = plan.stage2.labels.index(LABEL_BY_NAME[name])
        sample = Stage2Sample(image, np.zeros(3, np.float32), False, cls, spacing)
        with torch.no_grad():
            loss, parts = trainer._stage2_loss(sample)
        want = float(F.cross_entropy(logits[:, n_cls:], torch.tensor([region]), label_smoothing=0.05))
        assert parts["region_ce"] == pytest.approx(want, rel=1e-4), name
    with torch.no_grad():
        loss, parts = trainer._stage2_loss(Stage2Sample(image, np.zeros(3, np.float32), False, n_cls - 1,
                                                        spacing))
    assert np.isnan(parts["region_ce"])
    loc = float(loss) - CLASS_WEIGHT * parts["class_ce"]  # the same image: the same DSNT term for all
    with torch.no_grad():
        vloss, vparts = trainer._stage2_loss(Stage2Sample(image, np.zeros(3, np.float32), False, 0, spacing))
    want = loc + CLASS_WEIGHT * (vparts["class_ce"] + REGION_WEIGHT * vparts["region_ce"])
    assert float(vloss) == pytest.approx(want, rel=1e-4)
    assert 0.0 <= trainer.validate()["region_acc"] <= 1.0
