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

from dicom_io.labels import SACRUM_LABEL
from dicom_io.volume import Volume
from inference.engine.plan import HU_OUTSIDE, Stage1Plan, Stage2Plan, normalise_hu
from inference.engine.resample import Grid, random_rotation, resample, volume_bounds_lps
from inference.training.augment import AppearanceRanges, cut_field_of_view, random_appearance

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
    """A sampling grid around ``centre``; augmented: rotated (+-15 degrees) and scaled per axis (0.85-1.15,
    so vertebra sizes and aspect ratios vary beyond the generator's own range)."""
    rot = random_rotation(rng, 15.0) if augment else np.eye(3)
    sp = spacing * (rng.uniform(0.85, 1.15, size=3) if augment else np.ones(3))
    aff = np.eye(4)
    aff[:3, :3] = rot * sp[None, :]
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
        hu = random_appearance(hu, plan.spacing_mm, rng)
        if subject.centroids and rng.random() < AppearanceRanges().p_fov_cut:
            pts = np.stack(list(subject.centroids.values()))
            near = pts[np.argmin(np.linalg.norm(pts - centre, axis=1))]
            cut_field_of_view(hu, lab, grid.lps_to_index(near)[::-1], plan.spacing_mm, rng)
    return normalise_hu(hu)[None], (lab > 0).astype(np.float32)[None]


@dataclass
class Stage2Sample:
    image: npt.NDArray[np.float32]  # (1, D, H, W)
    target_mm: npt.NDArray[np.float32]  # (3,) crop-frame mm (i, j, k) of the nearest body centroid
    has_target: bool  # a vertebra's body centroid lies within POSITIVE_MM of the crop centre
    cls: int  # index into plan.labels, or len(plan.labels) for "no vertebra here"
    spacing: tuple[float, float, float]


#: A crop whose centre lies within this of a body centroid is about that vertebra.
POSITIVE_MM = 20.0
#: Training crops are centred this far (sigma, mm; clipped at twice) from the chosen body centroid.
CENTRE_JITTER_MM = 7.0


#: Share of stage-2 crops centred on the top of the sacrum where the subject has one. S1 is bone shaped
#: much like a vertebral body right under L5, and the crops "anywhere in the subject" hardly ever land
#: on it: v0.7.0 read S1 as a vertebra (P(none) 0.03-0.2, level "L5") on most phantoms with a sacrum in
#: view, which the chain then named L6 or which blocked a true L6.
P_SACRUM_CROP = 0.08
#: The top of the sacrum: its voxels within this distance (mm, along the body axis) of its highest one.
SACRUM_TOP_MM = 30.0
#: ... and within this distance (mm, left-right) of its midline.
SACRUM_HALF_WIDTH_MM = 20.0


def sacrum_top_point(subject: Subject, rng: np.random.Generator) -> npt.NDArray[np.float64] | None:
    """A random voxel (LPS mm) of the sacrum's top ``SACRUM_TOP_MM`` near its midline (S1's body and the
    roots of its alae), or None where the subject has no sacrum."""
    idx = np.argwhere(subject.labels == SACRUM_LABEL)
    if idx.size == 0:
        return None
    pts = subject.volume.index_to_lps(idx[:, ::-1].astype(np.float64))
    top = pts[pts[:, 2] >= pts[:, 2].max() - SACRUM_TOP_MM]
    mid = top[np.abs(top[:, 0] - top[:, 0].mean()) <= SACRUM_HALF_WIDTH_MM]  # S1's body, not the alae' tips
    top = mid if len(mid) else top  # a top made of two alae only (a tilted or odd sacrum)
    return np.asarray(top[rng.integers(len(top))], dtype=np.float64)


def stage2_sample(subject: Subject, plan: Stage2Plan, rng: np.random.Generator, augment: bool = True
                  ) -> Stage2Sample:
    """A crop centred near one vertebra (or, 8 %, on the top of the sacrum; or, 15 %, anywhere in the
    subject) with the target of the vertebra nearest its centre: body centroid in crop mm and level class
    (or "none": S1 is not a vertebra)."""
    pts = np.stack([subject.centroids[k] for k in sorted(subject.centroids)]) if subject.centroids else None
    labs = sorted(subject.centroids)
    s1 = sacrum_top_point(subject, rng) if rng.random() < P_SACRUM_CROP else None
    if s1 is not None:
        centre = s1 + _jitter(rng)
    elif pts is not None and rng.random() < 0.85:
        centre = pts[rng.integers(len(pts))] + _jitter(rng)
    else:
        lo, hi = volume_bounds_lps(subject.volume.shape, subject.volume.affine)
        centre = rng.uniform(lo, hi)
    grid = _random_grid_affine(centre, plan.crop, plan.spacing_mm, rng, augment)
    hu = resample(subject.volume.array, subject.volume.affine, grid, fill=HU_OUTSIDE)
    if augment:
        hu = random_appearance(hu, plan.spacing_mm, rng)
        if rng.random() < AppearanceRanges().p_fov_cut:
            cut_field_of_view(hu, None, grid.lps_to_index(centre)[::-1], plan.spacing_mm, rng)
    return stage2_target(grid, normalise_hu(hu)[None], centre, labs, pts, plan.labels)


def _jitter(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    jitter = rng.normal(0, CENTRE_JITTER_MM, size=3)
    norm = float(np.linalg.norm(jitter))
    if norm > 2 * CENTRE_JITTER_MM:
        jitter *= 2 * CENTRE_JITTER_MM / norm
    return jitter


def stage2_target(grid: Grid, image: npt.NDArray[np.float32], centre: npt.NDArray[np.float64],
                  labs: Sequence[int], pts: npt.NDArray[np.float64] | None, labels: Sequence[int]
                  ) -> Stage2Sample:
    none = len(labels)
    if pts is None or len(pts) == 0:
        return Stage2Sample(image, np.zeros(3, np.float32), False, none, grid.spacing)
    d = np.linalg.norm(pts - centre, axis=1)
    n = int(np.argmin(d))
    if d[n] > POSITIVE_MM or labs[n] not in labels:
        return Stage2Sample(image, np.zeros(3, np.float32), False, none, grid.spacing)
    target = (grid.lps_to_index(pts[n]) * np.asarray(grid.spacing)).astype(np.float32)
    return Stage2Sample(image, target, True, list(labels).index(labs[n]), grid.spacing)
