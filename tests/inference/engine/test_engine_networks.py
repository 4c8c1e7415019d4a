"""Network shapes, argument checks, plan round trip and resampling geometry."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from inference.engine.networks import ISEVNet, NetworkConfig, VertebraLocaliser
from inference.engine.plan import EnginePlan
from inference.engine.resample import Grid, resample, world_box_grid


def test_isevnet_output_shape_any_multiple_of_divisor() -> None:
    net = ISEVNet(NetworkConfig(base=4, levels=3, convs_per_level=(1, 1, 1)))
    for shape in [(16, 16, 16), (24, 8, 32)]:
        assert net(torch.zeros(1, 1, *shape)).shape == (1, 1, *shape)


def test_isevnet_rejects_bad_shape() -> None:
    net = ISEVNet(NetworkConfig(base=4, levels=3, convs_per_level=(1, 1, 1)))
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.zeros(1, 1, 10, 16, 16))


def test_vertebra_localiser_outputs_one_heatmap_coords_and_class_logits() -> None:
    cfg = NetworkConfig(out_channels=27, base=4, levels=3, convs_per_level=(1, 1, 1))
    net = VertebraLocaliser(cfg)
    hm, coords, logits = net(torch.zeros(2, 1, 16, 8, 12), (2.0, 2.0, 2.0))
    assert hm.shape == (2, 1, 16, 8, 12)
    assert torch.allclose(hm.sum(dim=(-1, -2, -3)), torch.ones(2, 1), atol=1e-5)
    assert coords.shape == (2, 1, 3) and logits.shape == (2, 27)
    # Coordinates lie inside the crop in mm.
    c = coords.detach()
    assert float(c[..., 0].max()) <= 11 * 2.0 and float(c[..., 2].max()) <= 15 * 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"levels": 3}, "one entry per level"), ({"base": 1}, "base"), ({"out_channels": 0}, "out_channels")],
)
def test_network_config_messages(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NetworkConfig(**kwargs)  # type: ignore[arg-type]


def test_plan_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plan = EnginePlan(version="test")
    plan.save(tmp_path)
    assert EnginePlan.load(tmp_path) == plan


def test_resample_identity_and_world_grid_geometry() -> None:
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(12, 10, 8)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    aff[:3, 3] = [10.0, -5.0, 100.0]
    same = resample(arr, aff, Grid(arr.shape, aff))
    assert np.allclose(same, arr, atol=1e-5)
    # A flipped input orientation resampled onto a world-aligned grid gives back the same image.
    flipped = np.ascontiguousarray(arr[::-1])
    aff_f = aff.copy()
    aff_f[:3, 2] = [0, 0, -3.0]
    aff_f[:3, 3] = aff[:3, :3] @ [0, 0, 11] + aff[:3, 3]
    assert np.allclose(resample(flipped, aff_f, Grid(arr.shape, aff)), arr, atol=1e-5)


def test_world_box_grid_covers_box_and_rounds_shape() -> None:
    g = world_box_grid([0, 0, 0], [50, 30, 100], 4.0, multiple=8, min_shape=(32, 16, 16))
    assert all(n % 8 == 0 for n in g.shape) and g.shape[0] >= 32
    lo, hi = g.corners_lps().min(0), g.corners_lps().max(0)
    assert np.all(lo <= 0) and np.all(hi >= [50, 30, 100])
    p = np.array([12.0, 7.0, 33.0])
    assert np.allclose(g.mm_to_lps(g.lps_to_mm(p)), p)


def test_resample_nearest_keeps_labels() -> None:
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:6, 2:6, 2:6] = 7
    grid = Grid((4, 4, 4), np.diag([2.0, 2.0, 2.0, 1.0]))
    out = resample(lab, np.eye(4), grid, nearest=True, dtype=np.uint8)
    assert set(np.unique(out)) <= {0, 7} and (out == 7).sum() > 0


def test_half_resolution_heads_place_heatmap_voxels_in_crop_mm() -> None:
    cfg = NetworkConfig(out_channels=3, base=4, levels=3, convs_per_level=(1, 1, 1), head_level=1)
    net = VertebraLocaliser(cfg)
    hm, coords, logits = net(torch.zeros(1, 1, 16, 8, 12), (2.0, 2.0, 2.0))
    assert hm.shape == (1, 1, 8, 4, 6) and coords.shape == (1, 1, 3) and logits.shape == (1, 3)
    spacing, offset = net.heatmap_geometry((2.0, 2.0, 2.0))
    assert spacing == (4.0, 4.0, 4.0) and offset == (1.0, 1.0, 1.0)
    # A one-hot heatmap voxel (k, j, i) = (3, 1, 2) covers crop voxels 6-7, 2-3, 4-5: centre 6.5, 2.5, 4.5.
    one_hot = torch.zeros(1, 1, 8, 4, 6)
    one_hot[0, 0, 3, 1, 2] = 1.0
    from inference.engine.dsnt import dsnt

    mm = dsnt(one_hot, spacing)[0, 0] + torch.tensor(offset)
    assert torch.allclose(mm, torch.tensor([4.5 * 2.0, 2.5 * 2.0, 6.5 * 2.0]))
    with pytest.raises(ValueError, match="head_level"):
        NetworkConfig(levels=3, convs_per_level=(1, 1, 1), head_level=3)


def test_grid_level_head_keeps_a_map_along_the_spine() -> None:
    """The v0.3 "grid" head reads the bottleneck as a map (8 cells along the spine, 2 x 2 across) beside
    the pooled summary: its first layer takes both, and a blob moved from above to below the crop centre
    changes the map part of its input, not only the logits."""
    torch.manual_seed(0)
    cfg = NetworkConfig(out_channels=5, base=4, levels=4, convs_per_level=(1, 1, 1, 1), class_head="grid")
    net = VertebraLocaliser(cfg).eval()
    deep = 4 * 2 ** 3
    assert net.class_head[0].in_features == 2 * deep + 16 * 8 * 2 * 2
    above = torch.full((1, 1, 64, 32, 32), -1.0)
    below = above.clone()
    above[..., 40:48, 12:20, 12:20] = 1.0  # a bone-like blob 8 voxels above the centre (k = 32)
    below[..., 16:24, 12:20, 12:20] = 1.0  # the same blob 8 voxels below
    with torch.no_grad():
        maps = [net.grid_reduce(net.grid_pool(net.backbone.features(x)[1])) for x in (above, below)]
    assert maps[0].shape == (1, 16, 8, 2, 2)
    profile = [m.abs().sum(dim=(0, 1, 3, 4)) for m in maps]  # activity per cell along the spine
    assert int(profile[0].argmax()) > int(profile[1].argmax())  # the blob's cell moves with it
    pooled = VertebraLocaliser(NetworkConfig(out_channels=5, base=4, levels=4, convs_per_level=(1, 1, 1, 1)))
    assert not hasattr(pooled, "grid_pool") and pooled.class_head[0].in_features == 2 * deep


def test_class_head_default_and_old_plans() -> None:
    from inference.engine.plan import Stage2Plan

    assert Stage2Plan().network.class_head == "grid"  # new runs train the v0.3 head
    old = Stage2Plan().to_json()
    del old["network"]["class_head"]  # engine.json of v0.2.0 has no such key
    assert Stage2Plan.from_json(old).network.class_head == "pooled"
    with pytest.raises(ValueError, match="class_head"):
        NetworkConfig(class_head="attention")


def test_region_head_appends_region_logits_and_old_plans_have_none() -> None:
    """v0.7: logits over the levels + "none", then over the regions C, T, L, from the same hidden layer;
    a plan written before the region head (v0.6.0) loads without one."""
    from inference.engine.plan import Stage2Plan

    cfg = NetworkConfig(out_channels=27, base=4, levels=3, convs_per_level=(1, 1, 1), region_classes=3)
    net = VertebraLocaliser(cfg)
    _, _, logits = net(torch.zeros(2, 1, 16, 8, 12), (2.0, 2.0, 2.0))
    assert logits.shape == (2, 30)
    assert net.region_head is not None and net.region_head.in_features == net.class_head[-1].in_features
    assert VertebraLocaliser(replace(cfg, region_classes=0)).region_head is None
    assert Stage2Plan().network.region_classes == 3  # new runs train the region head
    old = Stage2Plan().to_json()
    del old["network"]["region_classes"]
    assert Stage2Plan.from_json(old).network.region_classes == 0
    with pytest.raises(ValueError, match="region_classes"):
        NetworkConfig(region_classes=-1)
