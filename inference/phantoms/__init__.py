"""Synthetic CT spine phantoms with exact ground truth (VerSe labels and centroids in LPS mm).

>>> from inference.phantoms import PhantomSpec, generate_phantom
>>> ph = generate_phantom(seed=3, fov="lumbar", spacing=(4.0, 4.0, 4.0))
>>> sorted(ph.centroids)[:2]  # doctest: +SKIP
"""

from inference.phantoms.generate import Phantom, generate_phantom
from inference.phantoms.spec import FOV_NAMES, VARIANTS, PhantomSpec

__all__ = [
    "FOV_NAMES",
    "VARIANTS",
    "Phantom",
    "PhantomSpec",
    "generate_phantom",
]
