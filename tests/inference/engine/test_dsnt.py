"""DSNT in millimetres: exact expectation, spatial generalisation, JS regulariser, loss."""

from __future__ import annotations

import pytest
import torch

from inference.engine.dsnt import (
    dsnt,
    dsnt_loss,
    flat_softmax,
    gaussian_heatmaps,
    heatmap_spread_mm,
    js_divergence,
)


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((16, 12, 10), (2.0, 2.0, 2.0)), ((8, 20, 6), (0.8, 1.5, 3.0)), ((40, 24, 24), (4.0, 4.0, 4.0))],
)
def test_dsnt_one_hot_gives_exact_mm(
    shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> None:
    d, h, w = shape
    hm = torch.zeros(1, 1, d, h, w)
    k, j, i = d - 3, h // 2, 1
    hm[0, 0, k, j, i] = 1.0
    c = dsnt(hm, spacing)[0, 0]
    assert torch.allclose(c, torch.tensor([i * spacing[0], j * spacing[1], k * spacing[2]]), atol=1e-5)


def test_dsnt_two_point_mass_gives_midpoint() -> None:
    hm = torch.zeros(1, 1, 10, 10, 10)
    hm[0, 0, 2, 3, 4] = 0.5
    hm[0, 0, 6, 3, 4] = 0.5
    c = dsnt(hm, (2.0, 2.0, 2.0))[0, 0]
    assert torch.allclose(c, torch.tensor([8.0, 6.0, 8.0]))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (1.7, 2.3, 3.1)])
def test_gaussian_expectation_is_its_centre_at_any_spacing(spacing: tuple[float, float, float]) -> None:
    centre = torch.tensor([[20.0, 17.0, 30.0]])
    g = gaussian_heatmaps(centre, (60, 48, 48), spacing, sigma_mm=3.0)
    assert torch.allclose(g.sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(dsnt(g, spacing), centre, atol=1e-3)
    spread = heatmap_spread_mm(g, spacing, centre)
    assert spread.item() == pytest.approx(3.0 * 3**0.5, rel=0.05)


def test_flat_softmax_normalises_each_channel() -> None:
    x = torch.randn(2, 3, 4, 5, 6)
    p = flat_softmax(x)
    assert torch.allclose(p.sum(dim=(-1, -2, -3)), torch.ones(2, 3), atol=1e-6)


def test_js_zero_for_matching_gaussian_and_positive_otherwise() -> None:
    sp = (2.0, 2.0, 2.0)
    a = gaussian_heatmaps(torch.tensor([[20.0, 20.0, 20.0]]), (24, 24, 24), sp, 4.0)
    b = gaussian_heatmaps(torch.tensor([[30.0, 20.0, 20.0]]), (24, 24, 24), sp, 4.0)
    assert js_divergence(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert 0.05 < js_divergence(a, b).item() <= 0.6932


def test_loss_only_counts_masked_landmarks_and_reports_mm() -> None:
    sp = (2.0, 2.0, 2.0)
    target = torch.tensor([[[10.0, 10.0, 10.0], [99.0, 99.0, 99.0]]])
    hm = gaussian_heatmaps(torch.tensor([[[16.0, 10.0, 10.0], [0.0, 0.0, 0.0]]]), (16, 16, 16), sp, 4.0)
    coords = dsnt(hm, sp)
    mask = torch.tensor([[True, False]])
    total, dist, js = dsnt_loss(hm, coords, target, mask, sp, sigma_mm=4.0)
    assert dist.item() == pytest.approx(6.0, abs=0.3)
    assert js.item() > 0
    empty, _, _ = dsnt_loss(hm, coords, target, torch.zeros(1, 2, dtype=torch.bool), sp, 4.0)
    assert empty.item() == 0.0


def test_loss_gradient_moves_prediction_towards_target() -> None:
    sp = (2.0, 2.0, 2.0)
    logits = torch.zeros(1, 1, 12, 12, 12, requires_grad=True)
    target = torch.tensor([[[18.0, 6.0, 10.0]]])
    opt = torch.optim.SGD([logits], lr=50.0)
    distances: list[float] = []
    for _ in range(30):
        hm = flat_softmax(logits)
        loss, dist, _ = dsnt_loss(hm, dsnt(hm, sp), target, torch.tensor([[True]]), sp, 3.0)
        distances.append(dist.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert dist.item() < 0.5 * distances[0]
