"""The engine plan: everything needed to rebuild both stages, stored as ``engine.json`` beside the weights.

Like nnU-Net's plans file, the networks are rebuilt from this description, never from code defaults,
so old weights keep working when the defaults change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dicom_io.labels import ENGINE_LABELS
from inference.engine.chain import ChainPrior
from inference.engine.networks import NetworkConfig

PLAN_FILE = "engine.json"

#: HU window fed to the networks: air .. dense cortical bone / contrast, scaled by 1/1000.
HU_MIN = -1000.0
HU_MAX = 2000.0
#: Value used outside the scanned field of view (air).
HU_OUTSIDE = -1024.0


def normalise_hu(array: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Clip to the HU window and scale to roughly [-1, 2] (float32, new array)."""
    out = np.clip(array, HU_MIN, HU_MAX).astype(np.float32)
    out *= np.float32(1.0 / 1000.0)
    return out


@dataclass(frozen=True)
class Stage1Plan:
    """Coarse spine segmentation (ISE-VNet)."""

    network: NetworkConfig = field(default_factory=lambda: NetworkConfig(base=8, levels=4,
                                                                         convs_per_level=(1, 2, 2, 2)))
    spacing_mm: float = 4.0
    #: Sliding-window patch (k, j, i) and stride in voxels.
    patch: tuple[int, int, int] = (64, 64, 64)
    stride: tuple[int, int, int] = (48, 48, 48)
    threshold: float = 0.5
    #: Margin added around the mask's bounding box to make the stage-2 ROI (mm).
    roi_margin_mm: float = 12.0
    weights: str = "stage1.pt"

    def to_json(self) -> dict[str, Any]:
        return {"network": self.network.to_json(), "spacing_mm": self.spacing_mm, "patch": list(self.patch),
                "stride": list(self.stride), "threshold": self.threshold,
                "roi_margin_mm": self.roi_margin_mm, "weights": self.weights}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stage1Plan:
        return cls(network=NetworkConfig.from_json(d["network"]), spacing_mm=float(d["spacing_mm"]),
                   patch=_triple(d["patch"]), stride=_triple(d["stride"]), threshold=float(d["threshold"]),
                   roi_margin_mm=float(d["roi_margin_mm"]), weights=str(d["weights"]))


@dataclass(frozen=True)
class Stage2Plan:
    """Per-vertebra localisation and level evidence (3D DSNT on one vertebra at a time).

    Crops of ``crop`` voxels at ``spacing_mm`` are centred on seed points along the stage-1 spine; each
    answers "where is the body centroid of the vertebra nearest my centre, and which level is it (or
    none)". A crop is re-centred on its answer until it moves less than ``converge_mm`` (at most
    ``max_iters`` times); answers closer than ``merge_mm`` are one vertebra.
    """

    network: NetworkConfig = field(default_factory=lambda: NetworkConfig(out_channels=len(ENGINE_LABELS) + 1,
                                                                         base=8, levels=4,
                                                                         convs_per_level=(1, 2, 2, 2),
                                                                         head_level=1,
                                                                         class_head="grid",
                                                                         region_classes=3))
    spacing_mm: float = 2.0
    crop: tuple[int, int, int] = (64, 64, 64)
    labels: tuple[int, ...] = ENGINE_LABELS
    #: Seed points every this many mm along the stage-1 spine.
    seed_step_mm: float = 12.0
    max_iters: int = 4
    converge_mm: float = 2.0
    merge_mm: float = 10.0
    #: A crop whose "no vertebra" probability reaches this is dropped.
    none_threshold: float = 0.5
    #: A seed whose crop answers "no vertebra" still walks to that crop's point this many times before
    #: it is given up: stage 1 can put a seed on the posterior elements or beside the column, 30-60 mm
    #: behind the body, where the crop centre is "none" but its heatmap already points at the body.
    #: Plans written before this setting existed read 0 (given up at once), as they were measured.
    none_walks: int = 1
    #: Where the named chain skips a level (a vertebra the search missed between two it found), seeds
    #: are put on the line between the two and the column named again with what they find. Plans
    #: written before this setting existed read False, as they were measured.
    fill_gaps: bool = True
    #: Landmarks closer than this to the edge of the scanned volume are dropped (cut vertebrae).
    edge_margin_mm: float = 8.0
    #: Sigma of the Gaussian the JS term pulls heatmaps towards (mm).
    sigma_mm: float = 4.0
    weights: str = "stage2.pt"

    def __post_init__(self) -> None:
        if self.network.out_channels != len(self.labels) + 1:
            raise ValueError(f"stage 2 network has {self.network.out_channels} classes for "
                             f"{len(self.labels)} labels + 'none'")

    def to_json(self) -> dict[str, Any]:
        return {"network": self.network.to_json(), "spacing_mm": self.spacing_mm, "crop": list(self.crop),
                "labels": list(self.labels), "seed_step_mm": self.seed_step_mm, "max_iters": self.max_iters,
                "converge_mm": self.converge_mm, "merge_mm": self.merge_mm,
                "none_threshold": self.none_threshold, "none_walks": self.none_walks,
                "fill_gaps": self.fill_gaps, "edge_margin_mm": self.edge_margin_mm,
                "sigma_mm": self.sigma_mm, "weights": self.weights}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stage2Plan:
        return cls(network=NetworkConfig.from_json(d["network"]), spacing_mm=float(d["spacing_mm"]),
                   crop=_triple(d["crop"]), labels=tuple(int(v) for v in d["labels"]),
                   seed_step_mm=float(d["seed_step_mm"]), max_iters=int(d["max_iters"]),
                   converge_mm=float(d["converge_mm"]), merge_mm=float(d["merge_mm"]),
                   none_threshold=float(d["none_threshold"]), none_walks=int(d.get("none_walks", 0)),
                   fill_gaps=bool(d.get("fill_gaps", False)),
                   edge_margin_mm=float(d["edge_margin_mm"]),
                   sigma_mm=float(d["sigma_mm"]), weights=str(d["weights"]))


@dataclass(frozen=True)
class EnginePlan:
    version: str = "dev"
    stage1: Stage1Plan = field(default_factory=Stage1Plan)
    stage2: Stage2Plan = field(default_factory=Stage2Plan)
    chain: ChainPrior = field(default_factory=ChainPrior)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "stage1": self.stage1.to_json(), "stage2": self.stage2.to_json(),
                "chain": self.chain.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EnginePlan:
        if "chain" not in d:
            raise ValueError("engine plan without a 'chain' section (weights older than v0.2 are not "
                             "supported by this engine)")
        return cls(version=str(d["version"]), stage1=Stage1Plan.from_json(d["stage1"]),
                   stage2=Stage2Plan.from_json(d["stage2"]), chain=ChainPrior.from_json(d["chain"]))

    def save(self, directory: Path) -> Path:
        path = Path(directory) / PLAN_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: Path) -> EnginePlan:
        path = Path(directory) / PLAN_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no engine plan {path}") from None
        return cls.from_json(data)

    def with_version(self, version: str) -> EnginePlan:
        return replace(self, version=version)


def _triple(v: Any) -> tuple[int, int, int]:
    a, b, c = (int(x) for x in v)
    return (a, b, c)
