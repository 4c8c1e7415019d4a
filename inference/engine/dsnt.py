"""3D differentiable spatial-to-numerical transform (DSNT) in millimetres.

After Nibali et al. 2018, "Numerical Coordinate Regression with Convolutional Neural Networks"
(reference code: anibali/dsntnn). Two changes make the head "spatially generalised":

* the expectation is taken over voxel-centre coordinates expressed in millimetres of the crop
  (``index * spacing``) instead of dsntnn's normalised (-1, 1) grid, so the same trained head gives
  millimetre answers at any crop size and any spacing;
* the regularisation target is a Gaussian whose sigma is given in millimetres.

Coordinates are ordered ``(i, j, k)`` like :class:`dicom_io.volume.Volume` indices, while heatmaps are
laid out ``(..., k, j, i)`` like its arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def flat_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the three trailing spatial axes of ``(..., D, H, W)`` logits (dsntnn's flat_softmax)."""
    shape = logits.shape
    flat = logits.reshape(*shape[:-3], -1).float()
    return torch.softmax(flat, dim=-1).reshape(shape)


def _axis_mm(n: int, spacing: float, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device, dtype=torch.float32) * float(spacing)


def dsnt(heatmaps: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Expected ``(i, j, k)`` position in mm (crop frame, voxel ``(0,0,0)`` centre at 0) of each heatmap.

    ``heatmaps``: ``(..., D, H, W)`` probabilities summing to one over the spatial axes;
    ``spacing``: ``(si, sj, sk)`` in mm. Returns ``(..., 3)``.
    """
    d, h, w = heatmaps.shape[-3:]
    dev = heatmaps.device
    hm = heatmaps.float()
    pk = hm.sum(dim=(-1, -2))  # (..., D)
    pj = hm.sum(dim=(-1, -3))  # (..., H)
    pi = hm.sum(dim=(-2, -3))  # (..., W)
    ei = (pi * _axis_mm(w, spacing[0], dev)).sum(-1)
    ej = (pj * _axis_mm(h, spacing[1], dev)).sum(-1)
    ek = (pk * _axis_mm(d, spacing[2], dev)).sum(-1)
    return torch.stack([ei, ej, ek], dim=-1)


def heatmap_spread_mm(heatmaps: torch.Tensor, spacing: Sequence[float], centre: torch.Tensor) -> torch.Tensor:
    """Root of the summed per-axis variance (mm) of each heatmap around ``centre`` (``(..., 3)``)."""
    d, h, w = heatmaps.shape[-3:]
    dev = heatmaps.device
    hm = heatmaps.float()
    pk = hm.sum(dim=(-1, -2))
    pj = hm.sum(dim=(-1, -3))
    pi = hm.sum(dim=(-2, -3))
    vi = (pi * (_axis_mm(w, spacing[0], dev) - centre[..., 0:1]) ** 2).sum(-1)
    vj = (pj * (_axis_mm(h, spacing[1], dev) - centre[..., 1:2]) ** 2).sum(-1)
    vk = (pk * (_axis_mm(d, spacing[2], dev) - centre[..., 2:3]) ** 2).sum(-1)
    return torch.sqrt(vi + vj + vk + 1e-12)


def gaussian_heatmaps(
    centres_mm: torch.Tensor, shape: Sequence[int], spacing: Sequence[float], sigma_mm: float
) -> torch.Tensor:
    """Normalised isotropic Gaussians ``(..., D, H, W)`` centred at ``centres_mm`` (``(..., 3)``, i/j/k)."""
    d, h, w = (int(s) for s in shape)
    dev = centres_mm.device
    c = centres_mm.float()
    gi = torch.exp(-((_axis_mm(w, spacing[0], dev) - c[..., 0:1]) ** 2) / (2 * sigma_mm**2))
    gj = torch.exp(-((_axis_mm(h, spacing[1], dev) - c[..., 1:2]) ** 2) / (2 * sigma_mm**2))
    gk = torch.exp(-((_axis_mm(d, spacing[2], dev) - c[..., 2:3]) ** 2) / (2 * sigma_mm**2))
    g = gk[..., :, None, None] * gj[..., None, :, None] * gi[..., None, None, :]
    total = g.sum(dim=(-1, -2, -3), keepdim=True)
    return g / total.clamp_min(1e-12)


def js_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between distributions over the trailing 3 axes; ``(...)``."""
    p = p.float()
    q = q.float()
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * (torch.log(a + eps) - torch.log(b + eps))).sum(dim=(-1, -2, -3))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def dsnt_loss(
    heatmaps: torch.Tensor,
    coords_mm: torch.Tensor,
    target_mm: torch.Tensor,
    mask: torch.Tensor,
    spacing: Sequence[float],
    sigma_mm: float,
    js_weight: float = 1.0,
    distance_scale_mm: float = 10.0,
    offset: Sequence[float] = (0.0, 0.0, 0.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DSNT loss over the landmarks selected by ``mask`` (``(B, C)`` bool): returns (total, dist, js).

    ``dist`` is the mean Euclidean error in mm; the total divides it by ``distance_scale_mm`` so that it
    sits on the same scale as the JS term (which is bounded by ln 2), as dsntnn's normalised
    coordinates do implicitly. ``spacing`` and ``offset`` place the heatmap voxels in the coordinate
    frame (voxel ``n`` at ``offset + n * spacing``), for heatmaps coarser than the crop.
    """
    sel = mask.bool()
    if not bool(sel.any()):
        zero = heatmaps.sum() * 0.0
        return zero, zero.detach(), zero.detach()
    dist = torch.linalg.vector_norm(coords_mm[sel] - target_mm[sel].float(), dim=-1).mean()
    shift = torch.tensor([float(v) for v in offset], device=target_mm.device)
    target_hm = gaussian_heatmaps(target_mm[sel].float() - shift, heatmaps.shape[-3:], spacing, sigma_mm)
    js = js_divergence(heatmaps[sel], target_hm).mean()
    total = dist / distance_scale_mm + js_weight * js
    return total, dist.detach(), js.detach()
