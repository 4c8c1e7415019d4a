"""The two networks: ISE-VNet (stage 1, spine mask) and the per-vertebra 3D DSNT localiser (stage 2).

Both are rebuilt from a small JSON-able config (:class:`NetworkConfig`) stored beside the weights.
The building blocks follow Milletari et al. 2016 (V-Net: residual stages, strided-conv down-sampling,
PReLU) with instance norm, and Roy et al. 2018 concurrent spatial and channel squeeze-and-excitation
(scSE; 3D version as in Hsuxu/Magic-VNet). Kernels are 3x3x3 rather than V-Net's 5x5x5 to stay
cheap on CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from inference.engine.dsnt import dsnt, flat_softmax

#: Level-head designs of :class:`VertebraLocaliser` (see ``NetworkConfig.class_head``).
CLASS_HEADS = ("pooled", "grid")
#: The "grid" head's map of the bottleneck: (along the spine, front-back, left-right) cells.
GRID_CELLS = (8, 2, 2)
GRID_CHANNELS = 16


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of one stage; ``levels`` resolutions, ``base`` channels at full resolution."""

    in_channels: int = 1
    out_channels: int = 1
    base: int = 8
    levels: int = 4
    #: Residual convolutions per encoder level (V-Net uses 1, 2, 3, 3).
    convs_per_level: tuple[int, ...] = (1, 2, 2, 2)
    se_reduction: int = 4
    #: Decoder level the output heads read (0: full resolution; 1: half resolution, cheaper, and for
    #: DSNT heatmaps a 8x smaller softmax that concentrates much faster in training).
    head_level: int = 0
    #: Stage 2's level head: "pooled" (v0.2: mean and max of the whole bottleneck, blind to where in the
    #: crop a feature lies) or "grid" (v0.3: the bottleneck kept as a coarse map, full resolution along
    #: the spine and 2 x 2 across it, so the head can tell the rib pair just above the centre from the
    #: one just below it - the T12/L1 question - as well as the pooled summary).
    class_head: str = "pooled"
    #: Stage 2's region head (v0.7): logits over the regions C, T, L (rib-bearing or not, whatever the
    #: count), read from the level head's hidden layer and appended after the level logits; 0 = none.
    #: SPINEPS' labelling weighs such region evidence beside the level evidence in its chain.
    region_classes: int = 0

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {self.in_channels}, "
                             f"{self.out_channels}")
        if self.base < 2:
            raise ValueError(f"base must be >= 2, got {self.base}")
        if self.levels < 2:
            raise ValueError(f"levels must be >= 2, got {self.levels}")
        if len(self.convs_per_level) != self.levels:
            raise ValueError(
                f"convs_per_level needs one entry per level ({self.levels}), got {self.convs_per_level}"
            )
        if any(n < 1 for n in self.convs_per_level):
            raise ValueError(f"convs_per_level entries must be >= 1, got {self.convs_per_level}")
        if not 0 <= self.head_level < self.levels:
            raise ValueError(f"head_level must be in [0, {self.levels - 1}], got {self.head_level}")
        if self.class_head not in CLASS_HEADS:
            raise ValueError(f"class_head must be one of {', '.join(CLASS_HEADS)}, got {self.class_head!r}")
        if self.region_classes < 0:
            raise ValueError(f"region_classes must be >= 0, got {self.region_classes}")

    @property
    def head_channels(self) -> int:
        return int(self.base * 2**self.head_level)

    @property
    def head_stride(self) -> int:
        return int(2**self.head_level)

    @property
    def divisor(self) -> int:
        """Input spatial sizes must be multiples of this."""
        return int(2 ** (self.levels - 1))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["convs_per_level"] = list(self.convs_per_level)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NetworkConfig:
        d = dict(d)
        d["convs_per_level"] = tuple(d["convs_per_level"])
        return cls(**d)


class SCSE3d(nn.Module):
    """Concurrent spatial and channel squeeze-and-excitation (Roy et al. 2018), 3D."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channel = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            nn.Conv3d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, channels, 1),
            nn.Sigmoid(),
        )
        self.spatial = nn.Sequential(nn.Conv3d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel(x) + x * self.spatial(x)


def _conv_norm_act(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.PReLU(cout),
    )


class ResidualSEStage(nn.Module):
    """V-Net stage: ``n`` conv-IN-PReLU layers with a residual connection, then scSE."""

    def __init__(self, cin: int, cout: int, n: int, reduction: int) -> None:
        super().__init__()
        layers = [_conv_norm_act(cin, cout)] + [_conv_norm_act(cout, cout) for _ in range(n - 1)]
        self.body = nn.Sequential(*layers)
        self.skip: nn.Module = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1, bias=False)
        self.se = SCSE3d(cout, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.body(x) + self.skip(x))


class _Down(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv3d(cin, cout, 2, stride=2, bias=False),
            nn.InstanceNorm3d(cout, affine=True),
            nn.PReLU(cout),
        )


class _Up(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.ConvTranspose3d(cin, cout, 2, stride=2, bias=False),
            nn.InstanceNorm3d(cout, affine=True),
            nn.PReLU(cout),
        )


class ISEVNetBackbone(nn.Module):
    """Residual SE V-Net encoder-decoder; returns full-resolution features with ``base`` channels."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        c = [config.base * 2**i for i in range(config.levels)]
        r = config.se_reduction
        self.stem = ResidualSEStage(config.in_channels, c[0], config.convs_per_level[0], r)
        self.downs = nn.ModuleList([_Down(c[i], c[i + 1]) for i in range(config.levels - 1)])
        self.enc = nn.ModuleList(
            [ResidualSEStage(c[i + 1], c[i + 1], config.convs_per_level[i + 1], r)
             for i in range(config.levels - 1)]
        )
        self.ups = nn.ModuleList([_Up(c[i + 1], c[i]) for i in range(config.levels - 1)])
        self.dec = nn.ModuleList(
            [ResidualSEStage(2 * c[i], c[i], max(1, config.convs_per_level[i]), r)
             for i in range(config.levels - 1)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder features at ``config.head_level`` (full resolution for level 0)."""
        return self.features(x)[0]

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoder features at ``config.head_level``, bottleneck features at the coarsest level)."""
        div = self.config.divisor
        if any(s % div for s in x.shape[-3:]):
            raise ValueError(f"input spatial shape {tuple(x.shape[-3:])} must be a multiple of {div}")
        skips = [self.stem(x)]
        h = skips[0]
        for down, enc in zip(self.downs, self.enc, strict=True):
            h = enc(down(h))
            skips.append(h)
        bottleneck = h
        for i in reversed(range(self.config.head_level, self.config.levels - 1)):
            h = self.dec[i](torch.cat([self.ups[i](h), skips[i]], dim=1))
        return h, bottleneck


class ISEVNet(nn.Module):
    """Stage 1: spine-column segmentation logits ``(B, out_channels, D, H, W)``."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ISEVNetBackbone(config)
        if config.head_level != 0:
            raise ValueError("ISEVNet segments at full resolution: head_level must be 0")
        self.head = nn.Conv3d(config.base, config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class VertebraLocaliser(nn.Module):
    """Stage 2 (v0.2): one vertebra at a time, as the seed paper's DSNT module localises "individual
    vertebrae".

    Input: a crop centred near one vertebra. Outputs ``(heatmap, coords_mm, class_logits)``: ONE heatmap
    (flat softmax) whose DSNT expectation is the body centroid of the vertebra nearest the crop centre,
    in crop millimetres ``(i, j, k)``; and logits over ``out_channels`` classes: the vertebra's level
    (the engine's labels in anatomical order) plus a last class "no vertebra here" (a crop on other bone,
    or on a vertebra cut by the edge of the scan). The level logits come from the bottleneck, which sees
    the whole crop (a few neighbours, ribs, sacrum) - the evidence the chain labelling weighs: pooled
    (v0.2) or, with ``class_head="grid"`` (v0.3), also as a coarse map that keeps where along the spine
    each feature lies. With ``region_classes`` (v0.7) the logits go on with the region's (C, T, L), from
    the same hidden layer: ``out_channels + region_classes`` in all.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ISEVNetBackbone(config)
        self.heatmap_head = nn.Conv3d(config.head_channels, 1, 1)
        deep = config.base * 2 ** (config.levels - 1)
        features = 2 * deep
        if config.class_head == "grid":
            self.grid_pool = nn.AdaptiveAvgPool3d(GRID_CELLS)
            self.grid_reduce = nn.Sequential(nn.Conv3d(deep, GRID_CHANNELS, 1), nn.PReLU(GRID_CHANNELS))
            features += GRID_CHANNELS * GRID_CELLS[0] * GRID_CELLS[1] * GRID_CELLS[2]
        hidden = 64 if config.class_head == "pooled" else 128
        self.class_head = nn.Sequential(
            nn.Linear(features, hidden), nn.PReLU(hidden), nn.Dropout(0.1),
            nn.Linear(hidden, config.out_channels),
        )
        self.region_head = nn.Linear(hidden, config.region_classes) if config.region_classes else None

    def heatmap_geometry(self, spacing: tuple[float, float, float]
                         ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(spacing, offset) in mm of the heatmap voxels in the crop frame: heatmap voxel ``n`` is centred
        at ``offset + n * spacing`` (a level-``l`` voxel covers ``2**l`` input voxels)."""
        s = self.config.head_stride
        hs = (spacing[0] * s, spacing[1] * s, spacing[2] * s)
        off = tuple(0.5 * (s - 1) * v for v in spacing)
        return hs, (off[0], off[1], off[2])

    def forward(
        self, x: torch.Tensor, spacing: tuple[float, float, float]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats, deep = self.backbone.features(x)
        heatmap = flat_softmax(self.heatmap_head(feats))
        hm_spacing, offset = self.heatmap_geometry(spacing)
        coords = dsnt(heatmap, hm_spacing) + torch.tensor(offset, device=heatmap.device)
        deep = deep.float()
        summary = [deep.mean(dim=(-1, -2, -3)), deep.amax(dim=(-1, -2, -3))]
        if self.config.class_head == "grid":
            summary.append(self.grid_reduce(self.grid_pool(deep)).flatten(1))
        hidden = self.class_head[:-1](torch.cat(summary, dim=1))
        logits = self.class_head[-1](hidden)
        if self.region_head is not None:
            logits = torch.cat([logits, self.region_head(hidden)], dim=1)
        return heatmap, coords, logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
