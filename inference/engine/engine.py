"""The two-stage engine: ``Engine.from_weights(dir).predict(volume) -> Result``.

Stage 1 (ISE-VNet) segments the vertebral column on a world-aligned ~4 mm grid with overlapping
sliding windows; the mask's bounding box plus a margin is the region of interest (ROI). Stage 2 (3D
DSNT) resamples the ROI at ~2 mm, runs overlapping crops, and merges each label's crop answers by a
presence-weighted average; post-processing enforces anatomy and calibrates confidences.

The engine is a plain library: no DICOM networking, no database. Build it once and reuse it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from dicom_io.result import Result
from dicom_io.volume import Volume
from inference.engine.dsnt import heatmap_spread_mm
from inference.engine.networks import DSNTLocaliser, ISEVNet
from inference.engine.plan import HU_OUTSIDE, EnginePlan, Stage1Plan, normalise_hu
from inference.engine.postprocess import Candidate, postprocess
from inference.engine.resample import Grid, resample, volume_bounds_lps, world_box_grid

log = logging.getLogger(__name__)

#: Where shipped weights live: ``weights/<version>/`` at the repository root.
WEIGHTS_ROOT = Path(__file__).resolve().parents[2] / "weights"
CHECKSUM_FILE = "SHA256SUMS"
#: Stage-1 windows whose densest voxel is below this (HU) are air only and skipped.
AIR_HU = -500.0


class WeightsError(Exception):
    """Raised when a weights directory is missing, incomplete or fails its checksums."""


def _version_key(name: str) -> tuple[tuple[int, ...], str]:
    nums = tuple(int(n) for n in re.findall(r"\d+", name))
    return nums, name


def default_weights_dir(root: Path | None = None) -> Path:
    """The newest shipped weights version under ``weights/`` (by version number in the folder name)."""
    base = WEIGHTS_ROOT if root is None else Path(root)
    versions = [p for p in base.iterdir() if (p / "engine.json").is_file()] if base.is_dir() else []
    if not versions:
        raise WeightsError(f"no engine weights under {base} (expected {base}/<version>/engine.json)")
    return max(versions, key=lambda p: _version_key(p.name))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksums(directory: Path) -> None:
    """Check every file listed in ``SHA256SUMS`` (``<hex>  <name>`` lines); raise WeightsError on mismatch."""
    sums = directory / CHECKSUM_FILE
    if not sums.is_file():
        raise WeightsError(f"{directory}: missing {CHECKSUM_FILE}")
    for line in sums.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = directory / name.strip().lstrip("*")
        if not path.is_file():
            raise WeightsError(f"{directory}: {name} listed in {CHECKSUM_FILE} is missing")
        if sha256_file(path) != digest:
            raise WeightsError(f"{directory}: sha256 mismatch for {name}")


def pick_device(device: str | None = None) -> torch.device:
    """CUDA when available (or when asked for), else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device) -> AbstractContextManager[object]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)`` (last one flush with the end)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, max(1, stride)))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def tiles_3d(shape: tuple[int, int, int], tile: tuple[int, int, int], stride: tuple[int, int, int]
             ) -> Iterator[tuple[int, int, int]]:
    for k in tile_starts(shape[0], tile[0], stride[0]):
        for j in tile_starts(shape[1], tile[1], stride[1]):
            for i in tile_starts(shape[2], tile[2], stride[2]):
                yield (k, j, i)


def stage1_grid(volume_shape: tuple[int, int, int], affine: npt.NDArray[np.float64], plan: Stage1Plan
                ) -> Grid:
    lo, hi = volume_bounds_lps(volume_shape, affine)
    return world_box_grid(lo, hi, plan.spacing_mm, multiple=plan.network.divisor, min_shape=plan.patch)


def largest_components(mask: npt.NDArray[np.bool_], keep_fraction: float = 0.2) -> npt.NDArray[np.bool_]:
    """Keep connected components at least ``keep_fraction`` of the largest one (drops specks)."""
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    keep = np.flatnonzero(sizes >= keep_fraction * sizes.max()) + 1
    return np.isin(lab, keep)


def roi_box(mask: npt.NDArray[np.bool_], grid: Grid, margin_mm: float
            ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """World (LPS) bounding box of a mask on ``grid`` plus a margin; None for an empty mask."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    lo_kji, hi_kji = idx.min(axis=0), idx.max(axis=0)
    corners = np.array([[i, j, k] for i in (lo_kji[2], hi_kji[2]) for j in (lo_kji[1], hi_kji[1])
                        for k in (lo_kji[0], hi_kji[0])], dtype=np.float64)
    pts = grid.index_to_lps(corners)
    half_voxel = 0.5 * max(grid.spacing)
    return pts.min(axis=0) - margin_mm - half_voxel, pts.max(axis=0) + margin_mm + half_voxel


@dataclass
class _Stage2Tile:
    grid: Grid
    coords_lps: npt.NDArray[np.float64]  # (C, 3)
    presence: npt.NDArray[np.float64]  # (C,)
    spread_mm: npt.NDArray[np.float64]  # (C,)


class Engine:
    """Both stages with their plan, on one device. Thread-compatible, not thread-safe."""

    def __init__(self, plan: EnginePlan, stage1: ISEVNet, stage2: DSNTLocaliser,
                 device: torch.device | None = None) -> None:
        self.plan = plan
        self.device = device or pick_device()
        self.stage1 = stage1.to(self.device).eval()
        self.stage2 = stage2.to(self.device).eval()

    @classmethod
    def from_weights(cls, directory: Path | str | None = None, device: str | None = None,
                     verify: bool = True) -> Engine:
        """Load ``engine.json`` + both state dicts from ``directory`` (default: newest shipped version)."""
        path = default_weights_dir() if directory is None else Path(directory)
        if not path.is_dir():
            raise WeightsError(f"weights directory {path} does not exist")
        if verify:
            verify_checksums(path)
        plan = EnginePlan.load(path)
        stage1 = ISEVNet(plan.stage1.network)
        stage2 = DSNTLocaliser(plan.stage2.network)
        for net, name in ((stage1, plan.stage1.weights), (stage2, plan.stage2.weights)):
            try:
                state = torch.load(path / name, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                raise WeightsError(f"{path}: missing {name}") from None
            net.load_state_dict(state)
        log.info("engine %s loaded from %s", plan.version, path)
        return cls(plan, stage1, stage2, pick_device(device))

    # --- stage 1 --------------------------------------------------------------------------------------

    @torch.inference_mode()
    def segment_coarse(self, volume: Volume) -> tuple[Grid, npt.NDArray[np.float32]]:
        """Spine probability on the world-aligned stage-1 grid."""
        p = self.plan.stage1
        grid = stage1_grid(volume.shape, volume.affine, p)
        image = normalise_hu(resample(volume.array, volume.affine, grid, fill=HU_OUTSIDE))
        return grid, self._sliding_window(image, p)

    def _sliding_window(self, image: npt.NDArray[np.float32], p: Stage1Plan) -> npt.NDArray[np.float32]:
        prob = np.zeros(image.shape, np.float32)
        count = np.zeros(image.shape, np.float32)
        pk, pj, pi = p.patch
        air = normalise_hu(np.array([AIR_HU], np.float32))[0]
        for k, j, i in tiles_3d(image.shape, p.patch, p.stride):  # type: ignore[arg-type]
            patch = image[k:k + pk, j:j + pj, i:i + pi]
            if float(patch.max()) < air:  # only air (outside the body or the scan): no spine here
                count[k:k + pk, j:j + pj, i:i + pi] += 1.0
                continue
            x = torch.from_numpy(np.ascontiguousarray(patch))[None, None]
            with _autocast(self.device):
                logits = self.stage1(x.to(self.device))
            prob[k:k + pk, j:j + pj, i:i + pi] += torch.sigmoid(logits.float())[0, 0].cpu().numpy()
            count[k:k + pk, j:j + pj, i:i + pi] += 1.0
        return (prob / np.maximum(count, 1.0)).astype(np.float32)

    # --- stage 2 --------------------------------------------------------------------------------------

    def roi_grid(self, lo: npt.NDArray[np.float64], hi: npt.NDArray[np.float64]) -> Grid:
        p = self.plan.stage2
        return world_box_grid(lo, hi, p.spacing_mm, multiple=p.network.divisor, min_shape=p.crop)

    @torch.inference_mode()
    def localise(self, volume: Volume, roi: Grid) -> list[Candidate]:
        """Stage 2 on the ROI grid: merged per-label candidates (LPS mm, presence, spread)."""
        p = self.plan.stage2
        image = normalise_hu(resample(volume.array, volume.affine, roi, fill=HU_OUTSIDE))
        stride = tuple(c - o for c, o in zip(p.crop, p.overlap, strict=True))
        tiles: list[_Stage2Tile] = []
        ck, cj, ci = p.crop
        for k, j, i in tiles_3d(image.shape, p.crop, stride):  # type: ignore[arg-type]
            crop_grid = roi.sub_grid((k, j, i), p.crop)
            x = torch.from_numpy(np.ascontiguousarray(image[k:k + ck, j:j + cj, i:i + ci]))[None, None]
            spacing = crop_grid.spacing
            with _autocast(self.device):
                heatmaps, coords, presence = self.stage2(x.to(self.device), spacing)
            hm_spacing, offset = self.stage2.heatmap_geometry(spacing)
            centre = coords.float() - torch.tensor(offset, device=coords.device)
            spread = heatmap_spread_mm(heatmaps.float(), hm_spacing, centre)
            tiles.append(_Stage2Tile(
                grid=crop_grid,
                coords_lps=crop_grid.mm_to_lps(coords[0].float().cpu().numpy().astype(np.float64)),
                presence=torch.sigmoid(presence[0].float()).cpu().numpy().astype(np.float64),
                spread_mm=spread[0].cpu().numpy().astype(np.float64),
            ))
        return merge_tiles(tiles, p.labels)

    # --- whole pipeline -------------------------------------------------------------------------------

    def predict(self, volume: Volume) -> Result:
        """Spine mask on the volume's grid, labelled landmarks and per-stage timings."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        grid, prob = self.segment_coarse(volume)
        coarse_mask = largest_components(prob >= self.plan.stage1.threshold)
        box = roi_box(coarse_mask, grid, self.plan.stage1.roi_margin_mm)
        mask = self._mask_on_volume_grid(volume, grid, np.where(coarse_mask, prob, 0.0).astype(np.float32))
        timings["stage1"] = time.perf_counter() - t0
        if box is None:
            log.info("stage 1 found no spine; no landmarks")
            timings["stage2"] = 0.0
            timings["postprocess"] = 0.0
            return Result(mask=mask, landmarks=[], timings=timings, model_version=self.plan.version)
        t1 = time.perf_counter()
        candidates = self.localise(volume, self.roi_grid(*box))
        timings["stage2"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        landmarks = postprocess(candidates, self.plan.stage2.presence_threshold, self.plan.confidence)
        timings["postprocess"] = time.perf_counter() - t2
        log.info("engine %s: %d landmarks (stage1 %.2f s, stage2 %.2f s)", self.plan.version, len(landmarks),
                 timings["stage1"], timings["stage2"])
        return Result(mask=mask, landmarks=landmarks, timings=timings, model_version=self.plan.version)

    def _mask_on_volume_grid(self, volume: Volume, grid: Grid, prob: npt.NDArray[np.float32]
                             ) -> npt.NDArray[np.uint8]:
        # Resample the probability as 0..255 bytes, then threshold in place: the full-size result is the
        # only volume-sized array created (uint8).
        prob_u8 = np.round(prob * 255.0).astype(np.uint8)
        target = Grid(volume.shape, volume.affine)
        out = resample(prob_u8, grid.affine, target, fill=0, antialias=False, dtype=np.uint8)
        threshold = int(round(self.plan.stage1.threshold * 255))
        np.greater_equal(out, threshold, out=out.view(np.bool_))
        return out.astype(np.uint8, copy=False)


def merge_tiles(tiles: list[_Stage2Tile], labels: tuple[int, ...]) -> list[Candidate]:
    """Presence-weighted average of each label's position over the crops that see it."""
    out: list[Candidate] = []
    if not tiles:
        return out
    pres = np.stack([t.presence for t in tiles])  # (T, C)
    pos = np.stack([t.coords_lps for t in tiles])  # (T, C, 3)
    spr = np.stack([t.spread_mm for t in tiles])  # (T, C)
    for c, label in enumerate(labels):
        p = pres[:, c]
        best = float(p.max())
        # Crops that are nearly as sure as the best one vote; weights are their presence probabilities.
        w = np.where(p >= 0.5 * best, p, 0.0)
        if w.sum() <= 0:
            continue
        w = w / w.sum()
        position = (w[:, None] * pos[:, c]).sum(axis=0)
        spread = float((w * spr[:, c]).sum())
        out.append(Candidate(label=label, position_lps=(float(position[0]), float(position[1]),
                                                        float(position[2])),
                             presence=best, spread_mm=spread))
    return out
