"""Synthetic CT spine phantoms with exact ground truth (VerSe labels and centroids in LPS mm).

>>> from inference.phantoms import generate_phantom
>>> ph = generate_phantom(seed=3, fov="lumbar", spacing=(4.0, 4.0, 4.0))
>>> 22 in ph.centroids  # L3
True

See ``docs/phantoms.md`` for the anatomy, the randomisation and the ground-truth conventions.
"""

from inference.phantoms.dicom_writer import write_dicom_series
from inference.phantoms.generate import Phantom, generate_phantom
from inference.phantoms.spec import FOV_NAMES, VARIANTS, PhantomSpec

__all__ = [
    "FOV_NAMES",
    "VARIANTS",
    "Phantom",
    "PhantomSpec",
    "generate_phantom",
    "write_dicom_series",
]
