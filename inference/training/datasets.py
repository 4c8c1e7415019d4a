"""Training and evaluation subjects (phantoms generated on the fly, or a VerSe-format folder) and the
per-stage training samples drawn from them, with augmentation.

Augmentation moves the *sampling grid* (random rotation, scale, position) rather than the image, so the
same resampling code path serves training and inference, and landmark targets stay exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dicom_io.volume import Volume
from inference.engine.plan import HU_OUTSIDE, Stage1Plan, Stage2Plan, normalise_hu
from inference.engine.resample import Grid, random_rotation, resample, volume_bounds_lps, world_box_grid

log = logging.getLogger(__name__)

#: Field of view for training phantoms: the generator's own clinical mix (abdomen, chest, neck, lumbar,
#: whole spine; see docs/anchors.md "Real anatomy").
TRAIN_FOV = "random"


@dataclass
class Subject:
    """One annotated CT: volume, VerSe label map on its grid, and centroids (label -> LPS mm)."""

    name: str
    volume: Volume
    labels: npt.NDArray[np.uint8]
    centroids: dict[int, npt.NDArray[np.float64]]


def crop_subject(subject: Subject, margin_mm: float) -> Subject:
    """The subject cut down to the labelled spine's bounding box plus a margin (for stage-2 caches)."""
    idx = np.argwhere(subject.labels > 0)
    if idx.size == 0:
        return subject
    vox_margin = np.ceil(margin_mm / np.asarray(subject.volume.spacing)[::-1]).astype(int)
    lo = np.maximum(idx.min(axis=0) - vox_margin, 0)
    hi = np.minimum(idx.max(axis=0) + vox_margin + 1, subject.labels.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    aff = subject.volume.affine.copy()
    aff[:3, 3] = subject.volume.index_to_lps(lo[::-1].astype(float))
    vol = Volume(np.ascontiguousarray(subject.volume.array[sl]), aff)
    return Subject(subject.name, vol, np.ascontiguousarray(subject.labels[sl]), dict(subject.centroids))


def save_subject(subject: Subject, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    labs = np.array(sorted(subject.centroids), dtype=np.int64)
    pts = np.array([subject.centroids[int(k)] for k in labs], dtype=np.float64).reshape(-1, 3)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, array=subject.volume.array, affine=subject.volume.affine, labels=subject.labels,
             centroid_labels=labs, centroid_points=pts)
    tmp.replace(path)


def load_subject(path: Path, name: str) -> Subject:
    with np.load(path) as z:
        vol = Volume(z["array"].astype(np.float32, copy=False), z["affine"])
        cents = {int(k): p for k, p in zip(z["centroid_labels"], z["centroid_points"], strict=True)}
        return Subject(name, vol, z["labels"].astype(np.uint8, copy=False), cents)


def phantom_subject(seed: int, fov: str, spacing: float | None) -> Subject:
    """Generate one phantom with the project's generator."""
    from inference.phantoms import generate_phantom

    sp = None if spacing is None else (spacing, spacing, spacing)
    ph = generate_phantom(seed=seed, fov=fov, spacing=sp)
    cents = {int(k): np.asarray(v, dtype=np.float64) for k, v in ph.centroids.items()}
    return Subject(f"phantom-{fov}-{seed}", ph.volume, np.asarray(ph.labels, dtype=np.uint8), cents)


class SubjectPool:
    """Subjects by index, generated (or read) lazily, kept in memory and cached on disk."""

    def __init__(self, names: Sequence[str], make: Callable[[int], Subject], cache_dir: Path | None = None,
                 transform: Callable[[Subject], Subject] | None = None, keep_in_memory: bool = True) -> None:
        self.names = list(names)
        self._keep = keep_in_memory
        self._make = make
        self._cache_dir = cache_dir
        self._transform = transform
        self._memory: dict[int, Subject] = {}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Subject:
        if index in self._memory:
            return self._memory[index]
        path = None if self._cache_dir is None else self._cache_dir / f"{self.names[index]}.npz"
        if path is not None and path.is_file():
            subject = load_subject(path, self.names[index])
        else:
            subject = self._make(index)
            if self._transform is not None:
                subject = self._transform(subject)
            if path is not None:
                save_subject(subject, path)
        if self._keep:
            self._memory[index] = subject
        return subject


def phantom_pool(first_seed: int, count: int, spacing: float | None, cache_dir: Path | None = None,
                 fov: str = TRAIN_FOV, crop_margin_mm: float | None = None, keep_in_memory: bool = True
                 ) -> SubjectPool:
    seeds = [first_seed + n for n in range(count)]
    names = [f"phantom-{fov}-{s}-{spacing or 'native'}" for s in seeds]

    def make(i: int) -> Subject:
        return phantom_subject(seeds[i], fov, spacing)

    transform = None if crop_margin_mm is None else (lambda s: crop_subject(s, crop_margin_mm))
    return SubjectPool(names, make, cache_dir, transform, keep_in_memory)


def verse_pool(root: Path, keep_in_memory: bool = True) -> SubjectPool:
    """Subjects of a VerSe-format folder, read lazily with the phantoms package's VerSe reader.

    A subject without a vertebra mask gets an empty label map (its stage-1 Dice is then meaningless).
    """
    from inference.training.verse import find_verse_subjects, read_verse_subject

    found = find_verse_subjects(root)
    names = [ct.name.removesuffix("_ct.nii.gz") for ct, _, _ in found]

    def make(i: int) -> Subject:
        ct, mask, ctd = found[i]
        vs = read_verse_subject(ct, mask, ctd)
        labels = (np.zeros(vs.volume.shape, np.uint8) if vs.labels is None
                  else np.asarray(vs.labels, dtype=np.uint8))
        return Subject(vs.subject, vs.volume, labels,
                       {int(k): np.asarray(v, dtype=np.float64) for k, v in vs.centroids.items()})

    return SubjectPool(names, make, keep_in_memory=keep_in_memory)


# --- augmentation -------------------------------------------------------------------------------------


def augment_intensity(hu: npt.NDArray[Any], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Random HU gain/offset and noise, applied inside the body only (air stays air)."""
    out = hu.astype(np.float32, copy=True)
    body = out > -500
    gain = np.float32(rng.uniform(0.85, 1.15))
    offset = np.float32(rng.uniform(-60, 60))
    out[body] = out[body] * gain + offset
    sigma = rng.uniform(0, 40)
    out += rng.normal(0, sigma, size=out.shape).astype(np.float32)
    return out


def _random_grid_affine(centre: npt.NDArray[np.float64], shape: tuple[int, int, int], spacing: float,
                        rng: np.random.Generator, augment: bool) -> Grid:
    rot = random_rotation(rng, 10.0) if augment else np.eye(3)
    sp = spacing * (rng.uniform(0.9, 1.1) if augment else 1.0)
    aff = np.eye(4)
    aff[:3, :3] = rot * sp
    half = (np.asarray(shape[::-1], dtype=np.float64) - 1) / 2
    aff[:3, 3] = centre - aff[:3, :3] @ half
    return Grid(shape, aff)


def stage1_sample(subject: Subject, plan: Stage1Plan, rng: np.random.Generator, augment: bool = True
                  ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """A patch ``(1, D, H, W)`` of normalised CT and its spine-mask target."""
    lo, hi = volume_bounds_lps(subject.volume.shape, subject.volume.affine)
    if subject.centroids and rng.random() < 0.75:
        pts = np.stack(list(subject.centroids.values()))
        centre = pts[rng.integers(len(pts))] + rng.normal(0, 30, size=3)
    else:
        centre = rng.uniform(lo, hi)
    grid = _random_grid_affine(centre, plan.patch, plan.spacing_mm, rng, augment)
    hu = resample(subject.volume.array, subject.volume.affine, grid, fill=HU_OUTSIDE)
    lab = resample(subject.labels, subject.volume.affine, grid, nearest=True, fill=0, dtype=np.uint8)
    if augment:
        hu = augment_intensity(hu, rng)
    return normalise_hu(hu)[None], (lab > 0).astype(np.float32)[None]


@dataclass
class Stage2Sample:
    image: npt.NDArray[np.float32]  # (1, D, H, W)
    target_mm: npt.NDArray[np.float32]  # (C, 3) crop-frame mm (i, j, k); 0 where absent
    present: npt.NDArray[np.bool_]  # (C,)
    spacing: tuple[float, float, float]


def gt_roi(subject: Subject, margin_mm: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """World bounding box of the labelled vertebrae plus a margin (what stage 1 should find)."""
    idx = np.argwhere(subject.labels > 0)[:, ::-1].astype(np.float64)  # (i, j, k)
    if idx.size == 0:
        pts = np.stack(list(subject.centroids.values()))
    else:
        lo_i, hi_i = idx.min(axis=0), idx.max(axis=0)
        corners = np.array([[a, b, c] for a in (lo_i[0], hi_i[0]) for b in (lo_i[1], hi_i[1])
                            for c in (lo_i[2], hi_i[2])])
        pts = subject.volume.index_to_lps(corners)
    return pts.min(axis=0) - margin_mm, pts.max(axis=0) + margin_mm


def stage2_sample(subject: Subject, plan: Stage2Plan, rng: np.random.Generator, augment: bool = True
                  ) -> Stage2Sample:
    """A crop of the (jittered) GT ROI at ~2 mm with per-label targets in crop millimetres."""
    margin = rng.uniform(6.0, 24.0) if augment else 12.0
    lo, hi = gt_roi(subject, margin)
    if augment:
        shift = rng.normal(0, 5.0, size=3)
        lo, hi = lo + shift, hi + shift
    rot = random_rotation(rng, 10.0) if augment else None
    spacing = plan.spacing_mm * (rng.uniform(0.9, 1.1) if augment else 1.0)
    roi = world_box_grid(lo, hi, spacing, multiple=1, min_shape=plan.crop, rotation=rot)
    start = tuple(int(rng.integers(0, max(1, n - c + 1))) for n, c in zip(roi.shape, plan.crop, strict=True))
    crop = roi.sub_grid(start, plan.crop)  # type: ignore[arg-type]
    hu = resample(subject.volume.array, subject.volume.affine, crop, fill=HU_OUTSIDE)
    if augment:
        hu = augment_intensity(hu, rng)
    return stage2_targets(subject, crop, normalise_hu(hu)[None], plan.labels)


def stage2_targets(subject: Subject, crop: Grid, image: npt.NDArray[np.float32], labels: Sequence[int]
                   ) -> Stage2Sample:
    target = np.zeros((len(labels), 3), np.float32)
    present = np.zeros(len(labels), bool)
    upper = (np.asarray(crop.shape[::-1], dtype=np.float64) - 1.0)
    for c, label in enumerate(labels):
        if label not in subject.centroids:
            continue
        ijk = crop.lps_to_index(subject.centroids[label])
        if np.all(ijk >= 0) and np.all(ijk <= upper):
            present[c] = True
            target[c] = (ijk * np.asarray(crop.spacing)).astype(np.float32)
    return Stage2Sample(image=image, target_mm=target, present=present, spacing=crop.spacing)
