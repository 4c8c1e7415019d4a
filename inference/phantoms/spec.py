"""The parameters of one phantom: everything random is drawn here (or from the seed), so a spec is a recipe.

``PhantomSpec.random(seed, ...)`` draws domain-randomised anatomy, acquisition and field of view from
independent random streams, so choosing another spacing or matrix for the same seed changes the image
grid only: the anatomy, its ground truth and the physical field of view stay the same.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.phantoms.anatomy import level_index, level_positions
from inference.phantoms.streams import STREAM_ACQUISITION, STREAM_ANATOMY, STREAM_FOV, stream

#: Fields of view, named like the studies they imitate. Real scans are rarely whole-spine (anchors.md).
FOV_NAMES: tuple[str, ...] = (
    "whole",
    "cervical",
    "thoracic",
    "lumbar",
    "abdomen_pelvis",
    "chest",
    "thoracolumbar",
)
#: How often each field of view is drawn for ``fov="random"`` (most clinical CT is abdomen or chest).
FOV_WEIGHTS: dict[str, float] = {
    "whole": 0.14,
    "cervical": 0.14,
    "thoracic": 0.12,
    "lumbar": 0.16,
    "abdomen_pelvis": 0.2,
    "chest": 0.16,
    "thoracolumbar": 0.08,
}
VARIANTS: tuple[str, ...] = ("none", "L6", "T13", "11_ribs", "lumbarised_S1", "sacralised_L5")
CONTRASTS: tuple[str, ...] = ("none", "arterial", "venous", "oral", "venous_oral")


def normalise_fov(fov: str) -> str:
    name = fov.strip().lower().replace("-", "_")
    if name in ("abdomen", "abdomenpelvis", "abdomen_pelvis"):
        return "abdomen_pelvis"
    if name == "random" or name in FOV_NAMES:
        return name
    raise ValueError(f"unknown phantom field of view {fov!r}; choose one of {', '.join(FOV_NAMES)} or random")


@dataclass(frozen=True)
class PhantomSpec:
    """Every parameter of a phantom. Lengths in mm, angles in degrees, densities in HU.

    Grid: voxel ``(i, j, k)`` lies at ``origin + (i*si, j*sj, k*sk)`` in LPS; ``shape`` is ``(nk, nj, ni)``;
    ``k`` increases toward the head (the first slice is the most inferior).
    """

    seed: int
    fov: str
    # --- image grid and acquisition
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    slice_thickness: float
    #: Field-of-view ends along the spine, in "level units": 0 = C1 centre, 1 = C2 centre, ... (fractions
    #: interpolate between vertebral centres; negative values reach the skull).
    fov_top_level: float
    fov_bottom_level: float
    #: In-plane reconstruction field of view (mm, square) and its centre offset from the body centre.
    fov_width_mm: float
    fov_offset_mm: tuple[float, float]
    # --- anatomy
    variant: str = "none"
    body_scale: float = 1.0  # lateral/AP size of the trunk
    adiposity: float = 1.0  # subcutaneous and visceral fat
    vertebra_scale: float = 1.0
    cervical_lordosis: float = 25.0
    thoracic_kyphosis: float = 35.0
    lumbar_lordosis: float = 50.0
    sacral_slope: float = 40.0
    pelvic_tilt: float = 0.0  # rotation of the whole spine in the sagittal plane
    #: Scoliosis: lateral deviation curves as (amplitude mm, centre level, half-width levels).
    scoliosis: tuple[tuple[float, float, float], ...] = ()
    body_roll: float = 0.0  # rotation of the patient about the long axis
    arms_up: bool = True
    cancellous_hu: float = 180.0
    cortical_hu: float = 950.0
    degeneration: float = 0.0  # 0 young spine .. 1 heavy osteophytes and narrowed discs
    #: How massive the vertebral arches are (laminae, articular pillars, facets), 1 = the nominal table.
    #: People differ, and facet arthrosis enlarges the articular processes with age.
    posterior_bulk: float = 1.0
    #: Width (and, by its square root, depth) of the vertebral bodies relative to the nominal table, on top
    #: of ``vertebra_scale``: body breadth varies between people independently of body height (sex,
    #: build), so the same height comes with narrower or broader bodies.
    body_breadth: float = 1.0
    fractures: tuple[int, ...] = ()  # VerSe labels with a compression fracture
    implant_levels: tuple[int, ...] = ()  # VerSe labels fixed with pedicle screws (and rods when >= 2)
    contrast: str = "none"
    # --- image quality
    noise_hu: float = 15.0
    blur_mm: float = 0.5  # in-plane Gaussian PSF sigma
    beam_hardening: float = 1.0
    kvp: float = 120.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.contrast not in CONTRASTS:
            raise ValueError(f"unknown contrast {self.contrast!r}; choose one of {', '.join(CONTRASTS)}")
        if any(s <= 0 for s in self.spacing) or any(n < 1 for n in self.shape):
            raise ValueError(f"invalid phantom grid: spacing {self.spacing}, shape {self.shape}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def random(
        cls,
        seed: int,
        fov: str = "random",
        spacing: tuple[float, float, float] | None = None,
        shape: tuple[int, int, int] | None = None,
        **overrides: Any,
    ) -> PhantomSpec:
        """Draw a domain-randomised phantom; deterministic for ``seed``.

        ``spacing`` ``(si, sj, sk)`` and/or ``shape`` ``(nk, nj, ni)`` override the drawn grid over the same
        physical field of view (only the sampling changes). ``overrides`` set any other field (for example
        ``variant="L6"``); anatomy overrides are applied before the field of view is placed.
        """
        fov_name = normalise_fov(fov)
        rng_a = stream(seed, STREAM_ANATOMY)
        rng_q = stream(seed, STREAM_ACQUISITION)
        rng_f = stream(seed, STREAM_FOV)
        if fov_name == "random":
            names = list(FOV_WEIGHTS)
            p = np.array([FOV_WEIGHTS[n] for n in names])
            fov_name = names[int(rng_f.choice(len(names), p=p / p.sum()))]

        anatomy = _draw_anatomy(rng_a)
        anatomy["fractures"] = _fragility_fractures(stream(seed, STREAM_ANATOMY + 400), anatomy)
        rng_arch = stream(seed, STREAM_ANATOMY + 600)
        anatomy["posterior_bulk"] = _posterior_bulk(rng_arch, anatomy["degeneration"])
        anatomy["body_breadth"] = _body_breadth(stream(seed, STREAM_ANATOMY + 700))
        acquisition = _draw_acquisition(rng_q, fov_name)
        for key in list(overrides):
            if key in anatomy:
                anatomy[key] = overrides.pop(key)
            elif key in acquisition:
                acquisition[key] = overrides.pop(key)
        top, bottom, width, offset = _draw_fov(rng_f, fov_name, anatomy["variant"])
        for key, value in (
            ("fov_top_level", top),
            ("fov_bottom_level", bottom),
            ("fov_width_mm", width),
            ("fov_offset_mm", offset),
        ):
            if key in overrides:
                value = overrides.pop(key)
            acquisition[key] = value

        slice_step = acquisition.pop("_slice_step")
        base = cls(
            seed=int(seed),
            fov=fov_name,
            origin=(0.0, 0.0, 0.0),
            spacing=(1.0, 1.0, 1.0),
            shape=(1, 1, 1),
            **anatomy,
            **acquisition,
        )
        # The physical extent: from the anatomy's level positions (cheap: no voxels).
        centre, extent = field_of_view_box(base, level_positions(base))
        # A 512 matrix over the reconstruction field of view (in-plane pixel 0.5-1 mm).
        pixel = base.fov_width_mm / 512.0
        spec = base.with_grid(
            centre, extent, spacing or (pixel, pixel, slice_step), shape if spacing is None else None
        )
        if shape is not None and spacing is not None:
            spec = spec.with_grid(centre, np.asarray(shape[::-1]) * np.asarray(spacing), spacing, None)
        return dataclasses.replace(spec, **overrides) if overrides else spec

    def with_grid(
        self,
        centre: np.ndarray,
        extent: np.ndarray,
        spacing: tuple[float, float, float],
        shape: tuple[int, int, int] | None,
    ) -> PhantomSpec:
        """This spec on a grid covering the world box ``centre +- extent / 2``."""
        extent = np.asarray(extent, dtype=np.float64)
        if shape is not None:
            n = np.asarray(shape[::-1], dtype=np.float64)
            step = extent / n
        else:
            step = np.asarray(spacing, dtype=np.float64)
            n = np.maximum(np.round(extent / step), 1)
        origin = np.asarray(centre) - (n - 1) / 2 * step
        return dataclasses.replace(
            self,
            origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in step),  # type: ignore[arg-type]
            shape=(int(n[2]), int(n[1]), int(n[0])),
        )

    def resampled(self, spacing: tuple[float, float, float]) -> PhantomSpec:
        """The same phantom (same anatomy and physical field of view) sampled at another spacing."""
        centre, extent = self.world_box()
        return self.with_grid(centre, extent, spacing, None)

    def world_box(self) -> tuple[np.ndarray, np.ndarray]:
        """Centre and extent (mm, x y z) of the field of view covered by the voxels."""
        s = np.asarray(self.spacing)
        n = np.asarray(self.shape[::-1], dtype=np.float64)
        origin = np.asarray(self.origin)
        return origin + (n - 1) / 2 * s, n * s

    @property
    def effective_slice_thickness(self) -> float:
        """Slice profile width actually simulated (never thinner than the slice step)."""
        return max(self.slice_thickness, self.spacing[2])


def field_of_view_box(spec: PhantomSpec, levels: Any) -> tuple[np.ndarray, np.ndarray]:
    """World centre and extent (x, y, z mm) of the field of view described by ``spec``'s level range."""
    z_top = levels.z_at_level(spec.fov_top_level)
    z_bottom = levels.z_at_level(spec.fov_bottom_level)
    cx, cy = levels.body_centre_xy(0.5 * (z_top + z_bottom))
    centre = np.array([cx + spec.fov_offset_mm[0], cy + spec.fov_offset_mm[1], 0.5 * (z_top + z_bottom)])
    extent = np.array([spec.fov_width_mm, spec.fov_width_mm, abs(z_top - z_bottom)])
    return centre, extent


# ---------------------------------------------------------------------- random draws
def _draw_anatomy(rng: np.random.Generator) -> dict[str, Any]:
    variant = str(rng.choice(VARIANTS, p=[0.72, 0.07, 0.06, 0.06, 0.05, 0.04]))
    age = float(rng.uniform(20, 90))
    degeneration = float(np.clip((age - 35) / 55 + rng.normal(0, 0.15), 0, 1))
    # Trabecular HU falls with age (Pickhardt 2013: L1 <= 160 HU osteopenic); anchors: 60-300.
    cancellous = float(np.clip(rng.normal(260 - 2.2 * (age - 20), 35), 60, 300))
    scol: list[tuple[float, float, float]] = []
    kind = rng.uniform()
    if kind < 0.55:
        scol.append((float(rng.normal(0, 3)), float(rng.uniform(8, 20)), float(rng.uniform(4, 8))))
    elif kind < 0.9:
        scol.append(
            (
                float(rng.choice([-1, 1]) * rng.uniform(5, 22)),
                float(rng.uniform(10, 22)),
                float(rng.uniform(3, 6)),
            )
        )
        if rng.uniform() < 0.5:
            scol.append(
                (
                    float(-np.sign(scol[0][0]) * rng.uniform(4, 15)),
                    float(rng.uniform(19, 25)),
                    float(rng.uniform(2.5, 4)),
                )
            )
    else:
        scol.append(
            (
                float(rng.choice([-1, 1]) * rng.uniform(22, 40)),
                float(rng.uniform(11, 21)),
                float(rng.uniform(3, 5)),
            )
        )
    lumbar_lordosis = float(rng.normal(50, 9))
    fractures: list[int] = []
    n_frac = int(
        rng.choice(
            [0, 1, 2],
            p=[1 - 0.2 * degeneration - 0.05, 0.15 * degeneration + 0.04, 0.05 * degeneration + 0.01],
        )
    )
    for _ in range(n_frac):
        fractures.append(int(rng.choice([10, 13, 15, 17, 18, 19, 20, 21, 22, 23])))
    implants: tuple[int, ...] = ()
    if rng.uniform() < 0.08 + 0.1 * degeneration:
        n = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.45, 0.3, 0.1]))
        first = (
            int(rng.integers(20, 25 - n + 1)) if rng.uniform() < 0.8 else int(rng.integers(14, 20 - n + 1))
        )
        implants = tuple(range(first, first + n))
    return {
        "variant": variant,
        "body_scale": float(np.clip(rng.normal(1.0, 0.1), 0.78, 1.3)),
        "adiposity": float(np.clip(rng.lognormal(0, 0.45), 0.25, 3.0)),
        "vertebra_scale": float(np.clip(rng.normal(1.0, 0.05), 0.86, 1.14)),
        "cervical_lordosis": float(rng.normal(22, 12)),
        "thoracic_kyphosis": float(np.clip(rng.normal(38, 9) + 12 * degeneration, 10, 75)),
        "lumbar_lordosis": lumbar_lordosis,
        "sacral_slope": float(np.clip(lumbar_lordosis * 0.65 + rng.normal(7, 6), 20, 60)),
        "pelvic_tilt": float(rng.normal(0, 4)),
        "scoliosis": tuple(scol),
        "body_roll": float(rng.normal(0, 4)),
        "arms_up": bool(rng.uniform() < 0.75),
        "cancellous_hu": cancellous,
        "cortical_hu": float(rng.uniform(700, 1200)),
        "degeneration": degeneration,
        "fractures": tuple(sorted(set(fractures))),
        "implant_levels": implants,
        "contrast": str(rng.choice(CONTRASTS, p=[0.4, 0.12, 0.3, 0.06, 0.12])),
    }


def _posterior_bulk(rng: np.random.Generator, degeneration: float) -> float:
    """Arch mass relative to the nominal table: individual variation (+-20 %) times facet hypertrophy,
    which grows with degeneration (up to +30 % in the most arthritic spines; anchors.md)."""
    return float(rng.uniform(0.8, 1.2) * (1.0 + 0.3 * degeneration * rng.uniform(0.5, 1.0)))


#: Spread (SD) of :attr:`PhantomSpec.body_breadth` and its bounds. With ``vertebra_scale`` (SD 0.05) the
#: body width varies with an SD of about 8 %, as adult lumbar body widths do (about +-3.5 mm around
#: 42-48 mm); the real VerSe scan's T10-L3 bodies are 5-15 % wider than the nominal table.
BODY_BREADTH_SD = 0.06
BODY_BREADTH_BOUNDS = (0.86, 1.2)


def _body_breadth(rng: np.random.Generator) -> float:
    """Body width relative to the nominal table, independent of height (its own random stream, so the
    other draws of a seed stay as they were)."""
    return float(np.clip(rng.normal(1.0, BODY_BREADTH_SD), *BODY_BREADTH_BOUNDS))


#: VerSe labels of osteoporotic (fragility) fractures and their weights: most at the thoracolumbar
#: junction (T11-L2), a second peak mid-thorax (T7-T8).
FRAGILITY_LEVELS = {14: 0.1, 15: 0.12, 18: 0.18, 19: 0.22, 20: 0.22, 21: 0.11, 22: 0.05}


def _fragility_fractures(rng: np.random.Generator, anatomy: dict[str, Any]) -> tuple[int, ...]:
    """Add osteoporotic compression fractures where the bone is thin (its own random stream).

    The chance rises as cancellous bone falls below ~170 HU (Pickhardt's screen: <= 160 HU osteopenic):
    about 1 in 4 at 110 HU and 1 in 2 at 70 HU; a third of those have a second fracture.
    """
    fractures = set(anatomy["fractures"])
    p = float(np.clip((170.0 - anatomy["cancellous_hu"]) / 220.0, 0.0, 0.5))
    if rng.uniform() < p:
        levels = np.array(list(FRAGILITY_LEVELS))
        weights = np.array(list(FRAGILITY_LEVELS.values()))
        for _ in range(1 + int(rng.uniform() < 1 / 3)):
            fractures.add(int(rng.choice(levels, p=weights / weights.sum())))
    return tuple(sorted(fractures))


def _draw_acquisition(rng: np.random.Generator, fov: str) -> dict[str, Any]:
    thickness = float(
        rng.choice(
            [0.625, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0],
            p=[0.12, 0.08, 0.2, 0.1, 0.08, 0.12, 0.08, 0.12, 0.1],
        )
    )
    overlap = thickness > 1.0 and rng.uniform() < 0.2
    step = thickness * (0.8 if overlap else 1.0)
    kvp = float(rng.choice([80.0, 100.0, 120.0, 140.0], p=[0.08, 0.27, 0.55, 0.1]))
    # Image noise grows for thin slices and low kV.
    noise = float(rng.uniform(8, 26) * math.sqrt(2.5 / max(thickness, 0.6)) ** 0.7 * (120 / kvp) ** 0.7)
    return {
        "slice_thickness": thickness,
        "noise_hu": noise,
        "blur_mm": float(rng.uniform(0.3, 0.8)),
        "beam_hardening": float(rng.uniform(0.3, 1.6)),
        "kvp": kvp,
        "_slice_step": step,
    }


# FOV ends in level units (0 = C1). Names map to indices in level_positions (variant-aware) at use time.
_FOV_RANGES: dict[str, tuple[tuple[str, float, float], tuple[str, float, float]]] = {
    "whole": (("C1", -3.2, -1.4), ("S5", 0.0, 2.5)),
    "cervical": (("C1", -2.6, -0.8), ("T1", 0.2, 2.6)),
    "thoracic": (("C7", -1.2, 0.4), ("L1", -0.8, 1.3)),
    "lumbar": (("T11", -1.0, 0.9), ("S1", 1.0, 3.5)),
    "abdomen_pelvis": (("T9", -0.6, 1.6), ("S5", 1.5, 4.5)),
    "chest": (("C6", -0.7, 1.2), ("L1", -0.6, 1.4)),
    "thoracolumbar": (("T5", -1.5, 2.5), ("L3", -0.5, 2.5)),
}


def _draw_fov(
    rng: np.random.Generator, fov: str, variant: str
) -> tuple[float, float, float, tuple[float, float]]:
    (top_name, t0, t1), (bot_name, b0, b1) = _FOV_RANGES[fov]
    top = level_index(top_name, variant) + float(rng.uniform(t0, t1))
    bottom = level_index(bot_name, variant) + float(rng.uniform(b0, b1))
    pixel_hint = {"cervical": 0.6, "lumbar": 0.7}.get(fov, 0.8)
    width = float(512 * pixel_hint * rng.uniform(0.85, 1.2))
    if fov in ("cervical", "lumbar"):
        # Spine-targeted reconstruction: centred near the spine (posterior of the body centre).
        offset = (
            float(rng.normal(0, 8)),
            float(rng.uniform(20, 70) if fov == "lumbar" else rng.uniform(0, 25)),
        )
    else:
        offset = (float(rng.normal(0, 10)), float(rng.normal(0, 10)))
    return top, bottom, width, offset
