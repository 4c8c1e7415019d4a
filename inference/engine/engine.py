"""The two-stage engine: ``Engine.from_weights(dir).predict(volume) -> Result``.

Stage 1 (ISE-VNet) segments the vertebral column on a world-aligned ~4 mm grid with overlapping
sliding windows; seed points every ~12 mm along the segmented column start stage 2. Stage 2 (3D DSNT,
one vertebra at a time) looks at a 128 mm crop around each seed and answers with the body centroid of
the nearest vertebra and its level evidence; crops are re-centred on their answer until they settle, and
answers on one vertebra are merged. The chain labelling (``inference.chain``) then names the whole
column at once.

The engine is a plain library: no DICOM networking, no database. Build it once and reuse it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from dicom_io.result import Landmark, Result
from dicom_io.volume import Volume
from inference.engine.chain import STANDARD_CHAIN, drop_costs, label_chain, with_region_evidence
from inference.engine.networks import ISEVNet, VertebraLocaliser
from inference.engine.plan import HU_OUTSIDE, EnginePlan, Stage1Plan, Stage2Plan, normalise_hu
from inference.engine.resample import Grid, resample, volume_bounds_lps, world_box_grid
from inference.engine.weights import WeightsError, default_weights_dir, verify_checksums

log = logging.getLogger(__name__)

#: Stage-2 crops per forward pass.
CROP_BATCH = 8
#: Stage-1 windows whose densest voxel is below this (HU) are air only and skipped.
AIR_HU = -500.0


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


def seed_points(mask: npt.NDArray[np.bool_], grid: Grid, step_mm: float) -> npt.NDArray[np.float64]:
    """Points (LPS mm) every ``step_mm`` along the segmented column, head to foot.

    The grid's k axis points superior. The mask is cut into slabs of ``step_mm``; in each slab the
    connected part of the column nearest the previous seed (the largest one for the first slab) gives
    the seed, so bone that stage 1 confuses with spine beside the column does not drag the seeds off it.
    """
    n_k = mask.shape[0]
    per = max(1, int(round(step_mm / grid.spacing[2])))
    seeds: list[npt.NDArray[np.float64]] = []
    prev: npt.NDArray[np.float64] | None = None
    for k0 in range(n_k - 1, -1, -per):
        slab = mask[max(0, k0 - per + 1):k0 + 1]
        proj = slab.any(axis=0)
        if not proj.any():
            continue
        lab, n = ndimage.label(proj)
        best, best_score = 0, None
        for c in range(1, n + 1):
            jj, ii = np.nonzero(lab == c)
            centre_ij = np.array([ii.mean(), jj.mean()])
            if prev is None:
                score = -float(len(ii))
            else:
                score = float(np.linalg.norm((centre_ij - prev) * np.asarray(grid.spacing[:2])))
            if best_score is None or score < best_score:
                best, best_score = c, score
        jj, ii = np.nonzero(lab == best)
        prev = np.array([ii.mean(), jj.mean()])
        k_mid = max(0, k0 - per + 1) + (min(per, k0 + 1) - 1) / 2
        seeds.append(grid.index_to_lps([prev[0], prev[1], k_mid]))
    return np.array(seeds, dtype=np.float64).reshape(-1, 3)


def crop_grid_at(centre: npt.ArrayLike, plan: Stage2Plan) -> Grid:
    """A world-aligned stage-2 crop grid centred on ``centre`` (LPS mm)."""
    sp = plan.spacing_mm
    aff = np.eye(4)
    aff[:3, :3] *= sp
    half = (np.asarray(plan.crop[::-1], dtype=np.float64) - 1) / 2 * sp
    aff[:3, 3] = np.asarray(centre, dtype=np.float64) - half
    return Grid(plan.crop, aff)


@dataclass
class Vertebra:
    """One vertebra found by stage 2: body centroid, level probabilities, how many crops agreed."""

    position_lps: npt.NDArray[np.float64]
    probs: npt.NDArray[np.float64]  # over plan.labels (renormalised without "none")
    p_none: float
    votes: int
    #: Region evidence over :data:`~inference.engine.chain.REGIONS` (C, T, L), where the network has a
    #: region head.
    p_region: npt.NDArray[np.float64] | None = None


def merge_answers(points: npt.NDArray[np.float64], probs: npt.NDArray[np.float64], merge_mm: float,
                  regions: int = 0) -> list[Vertebra]:
    """Answers closer than ``merge_mm`` are one vertebra (most certain first); averaged. ``probs``:
    levels, "none", then ``regions`` region probabilities."""
    n_cls = probs.shape[1] - regions
    order = np.argsort(probs[:, n_cls - 1])
    used = np.zeros(len(points), bool)
    out: list[Vertebra] = []
    for n in order:
        if used[n]:
            continue
        near = (~used) & (np.linalg.norm(points - points[n], axis=1) < merge_mm)
        used |= near
        p = probs[near].mean(axis=0)
        levels = p[: n_cls - 1] / max(float(p[: n_cls - 1].sum()), 1e-12)
        out.append(Vertebra(points[near].mean(axis=0), levels, float(p[n_cls - 1]), int(near.sum()),
                            p[n_cls:] if regions else None))
    return out


def inside_margin(volume: Volume, point: npt.ArrayLike, margin_mm: float) -> bool:
    """Whether ``point`` lies at least ``margin_mm`` inside the scanned volume along each voxel axis."""
    ijk = volume.lps_to_index(point)
    n = np.asarray(volume.shape[::-1], dtype=np.float64)
    sp = np.asarray(volume.spacing, dtype=np.float64)
    return bool(np.all(ijk * sp >= margin_mm) and np.all((n - 1 - ijk) * sp >= margin_mm))


def gap_seeds(landmarks: list[Landmark]) -> npt.NDArray[np.float64]:
    """Points (LPS mm) where a named chain skips levels: between two consecutive landmarks whose names
    are k > 1 apart in the standard chain, k - 1 points evenly spaced on the line between them (the
    detector missed a vertebra the chain says is there). T12 -> T13 -> L1 and L5 -> L6 are no gaps; T11 ->
    L1 is (by name it is the 11-rib variant or a missed T12: a search there finds nothing new in the
    first case)."""
    index = {lab: i for i, lab in enumerate(STANDARD_CHAIN)}
    out: list[npt.NDArray[np.float64]] = []
    for a, b in zip(landmarks[:-1], landmarks[1:], strict=True):
        if a.label not in index or b.label not in index:
            continue
        k = index[b.label] - index[a.label]
        pa, pb = np.asarray(a.position_lps), np.asarray(b.position_lps)
        out.extend(pa + (pb - pa) * j / k for j in range(1, k))
    return np.array(out, dtype=np.float64).reshape(-1, 3)


Answer = Callable[[npt.NDArray[np.float64]], tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]


def settle_seeds(seeds: npt.NDArray[np.float64], answer: Answer, p: Stage2Plan
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Walk each seed to a fixed point of ``answer`` (crops centred on points -> their body centroids and
    class probabilities: levels, "no vertebra", regions); return the settled answers worth keeping.

    An answer counts once it is a fixed point (its own crop gives it back); crops that keep moving
    (between two vertebrae) are left out. A seed is given up after more than ``p.none_walks`` "no
    vertebra" answers; before that it walks on to the point its crop gave."""
    active = np.arange(len(seeds))
    current = seeds.copy()
    final_pts = np.zeros_like(seeds)
    n_cls = len(p.labels) + 1
    final_probs = np.zeros((len(seeds), n_cls + p.network.region_classes))
    keep = np.zeros(len(seeds), bool)
    nones = np.zeros(len(seeds), np.int64)  # "no vertebra" answers so far, per seed
    for it in range(p.max_iters):
        if active.size == 0:
            break
        pts, probs = answer(current[active])
        moved = np.linalg.norm(pts - current[active], axis=1)
        final_pts[active] = pts
        final_probs[active] = probs
        p_none = probs[:, n_cls - 1]
        keep[active] = (p_none < p.none_threshold) & (moved < 2 * p.converge_mm)
        nones[active] += p_none >= p.none_threshold
        settled = (moved < p.converge_mm) | (nones[active] > p.none_walks) | (it == p.max_iters - 1)
        current[active] = pts
        active = active[~settled]
        # Seeds that have walked onto the same vertebra need not walk on together.
        distinct: list[int] = []
        for n in active:
            if all(np.linalg.norm(current[n] - current[m]) >= p.converge_mm * 2 for m in distinct):
                distinct.append(int(n))
        active = np.array(distinct, dtype=np.int64)
    return final_pts[keep], final_probs[keep]


class Engine:
    """Both stages with their plan, on one device. Thread-compatible, not thread-safe."""

    def __init__(self, plan: EnginePlan, stage1: ISEVNet, stage2: VertebraLocaliser,
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
        stage2 = VertebraLocaliser(plan.stage2.network)
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

    @torch.inference_mode()
    def crops(self, volume: Volume, centres: npt.NDArray[np.float64]
              ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Stage 2 on crops centred at ``centres``: (body centroids LPS ``(N, 3)``, class probabilities
        ``(N, labels + 1 + region classes)``: the levels, "no vertebra", then the regions where the
        network has a region head)."""
        p = self.plan.stage2
        n_cls = len(p.labels) + 1
        points = np.zeros((len(centres), 3))
        probs = np.zeros((len(centres), n_cls + p.network.region_classes))
        for b0 in range(0, len(centres), CROP_BATCH):
            grids = [crop_grid_at(c, p) for c in centres[b0:b0 + CROP_BATCH]]
            images = [normalise_hu(resample(volume.array, volume.affine, g, fill=HU_OUTSIDE)) for g in grids]
            x = torch.from_numpy(np.stack(images))[:, None].to(self.device)
            with _autocast(self.device):
                _, coords, logits = self.stage2(x, grids[0].spacing)
            mm = coords.float().cpu().numpy().astype(np.float64)
            for n, g in enumerate(grids):
                points[b0 + n] = g.mm_to_lps(mm[n])
            logits = logits.float()
            probs[b0:b0 + len(grids), :n_cls] = torch.softmax(logits[:, :n_cls], dim=1).cpu().numpy()
            if p.network.region_classes:
                probs[b0:b0 + len(grids), n_cls:] = torch.softmax(logits[:, n_cls:], dim=1).cpu().numpy()
        return points, probs

    def find_vertebrae(self, volume: Volume, seeds: npt.NDArray[np.float64]) -> list[Vertebra]:
        """Seeds -> settled crop answers -> one entry per vertebra (cut vertebrae at the edge dropped)."""
        p = self.plan.stage2
        pts, probs = settle_seeds(seeds, lambda centres: self.crops(volume, centres), p)
        found = merge_answers(pts, probs, p.merge_mm, p.network.region_classes)
        return [v for v in found if inside_margin(volume, v.position_lps, p.edge_margin_mm)]

    def name_chain(self, vertebrae: list[Vertebra]) -> list[Landmark]:
        """Label the found vertebrae as one chain (cranial first), confidence = P(assigned level)."""
        if not vertebrae:
            return []
        verts = sorted(vertebrae, key=lambda v: -float(v.position_lps[2]))
        pos = np.stack([v.position_lps for v in verts])
        logp = np.log(np.clip(np.stack([v.probs for v in verts]), 1e-6, 1.0))
        drop = drop_costs([v.p_none for v in verts], self.plan.chain)
        regions = [v.p_region for v in verts]
        if self.plan.chain.region_weight > 0 and all(r is not None for r in regions):
            logp = with_region_evidence(logp, np.stack([r for r in regions if r is not None]),
                                        self.plan.stage2.labels, self.plan.chain.region_weight)
        chain = label_chain(pos, logp, self.plan.stage2.labels, self.plan.chain, drop)
        index = {lab: c for c, lab in enumerate(self.plan.stage2.labels)}
        out = []
        for v, lab in zip(verts, chain.labels, strict=True):
            if lab is None:
                continue
            conf = float(v.probs[index[lab]]) * (1.0 - v.p_none)
            x, y, z = (float(t) for t in v.position_lps)
            out.append(Landmark(label=lab, position_lps=(x, y, z), confidence=conf))
        return out

    # --- whole pipeline -------------------------------------------------------------------------------

    def predict(self, volume: Volume) -> Result:
        """Spine mask on the volume's grid, labelled landmarks and per-stage timings."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        grid, prob = self.segment_coarse(volume)
        coarse_mask = largest_components(prob >= self.plan.stage1.threshold)
        mask = self._mask_on_volume_grid(volume, grid, np.where(coarse_mask, prob, 0.0).astype(np.float32))
        seeds = seed_points(coarse_mask, grid, self.plan.stage2.seed_step_mm)
        timings["stage1"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        vertebrae = self.find_vertebrae(volume, seeds) if len(seeds) else []
        timings["stage2"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        landmarks = self.name_chain(vertebrae)
        # Look again where the named chain skips a level; name again if that finds a vertebra. The crops
        # of that search count as stage 2.
        gaps = gap_seeds(landmarks) if self.plan.stage2.fill_gaps else np.zeros((0, 3))
        if len(gaps):
            t3 = time.perf_counter()
            found = [v for v in self.find_vertebrae(volume, gaps)
                     if all(np.linalg.norm(v.position_lps - w.position_lps) >= self.plan.stage2.merge_mm
                            for w in vertebrae)]
            searched = time.perf_counter() - t3
            timings["stage2"] += searched
            t2 += searched
            if found:
                landmarks = self.name_chain(vertebrae + found)
        timings["postprocess"] = time.perf_counter() - t2
        log.info("engine %s: %d landmarks from %d seeds (stage1 %.2f s, stage2 %.2f s)", self.plan.version,
                 len(landmarks), len(seeds), timings["stage1"], timings["stage2"])
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
