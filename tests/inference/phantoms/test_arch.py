"""The vertebral arch as CT shows it: denser than the body's cancellous bone (an osteoporotic spine has a
dark body behind a bright arch) and as massive as the person's arches are, which differs between people
and grows with facet arthrosis (so the level head cannot read a level from how heavy an arch looks)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dicom_io.labels import LABEL_BY_NAME
from inference.phantoms import Phantom, PhantomSpec, generate_phantom

L2 = LABEL_BY_NAME["L2"]


def _lumbar(bulk: float | None = None, cancellous: float = 80.0) -> Phantom:
    extra = {} if bulk is None else {"posterior_bulk": bulk}
    return generate_phantom(seed=41, fov="lumbar", spacing=(1.0, 1.0, 1.0), noise_hu=0.0, beam_hardening=0.0,
                            cancellous_hu=cancellous, fractures=(), **extra)


def _arch_and_body(ph: Phantom, label: int, inside_mm: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """HU of the label's voxels more than 22 mm behind its body centroid (the arch), and of a 7 mm ball
    around the body centroid; ``inside_mm``: only voxels at least that deep inside the bone (1 mm grid)."""
    mask = ph.labels == label
    if inside_mm:
        mask = ndimage.binary_erosion(mask, iterations=inside_mm)
    kji = np.argwhere(mask)
    lps = kji[:, ::-1] @ ph.volume.affine[:3, :3].T + ph.volume.affine[:3, 3]
    c = np.asarray(ph.centroids[label])
    hu = ph.volume.array[tuple(kji.T)]
    arch = hu[lps[:, 1] - c[1] > 22.0]
    body = hu[np.linalg.norm(lps - c, axis=1) < 7.0]
    return arch, body


@pytest.fixture(scope="module")
def osteoporotic() -> Phantom:
    return _lumbar()


def test_the_arch_stays_bright_when_the_body_is_osteoporotic(osteoporotic: Phantom) -> None:
    # Inside the cortex (2 mm deep), where a thin cortical shell around cancellous marrow would read as
    # the body does (about 165 HU here) and compact arch bone reads about 480 HU.
    arch, body = _arch_and_body(osteoporotic, L2, inside_mm=2)
    assert arch.size > 1000 and body.size > 500
    assert np.median(body) < 200, np.median(body)
    assert np.median(arch) > np.median(body) + 250, (np.median(arch), np.median(body))


def test_arch_mass_follows_posterior_bulk() -> None:
    light, heavy = _lumbar(bulk=0.85), _lumbar(bulk=1.4)
    n_light = np.count_nonzero(_arch_and_body(light, L2)[0] > -2000)
    n_heavy = np.count_nonzero(_arch_and_body(heavy, L2)[0] > -2000)
    assert n_heavy > 1.15 * n_light, (n_light, n_heavy)


def test_posterior_bulk_varies_between_people_and_grows_with_degeneration() -> None:
    specs = [PhantomSpec.random(seed) for seed in range(4000, 4300)]
    bulk = np.array([s.posterior_bulk for s in specs])
    degeneration = np.array([s.degeneration for s in specs])
    assert bulk.min() >= 0.8 and bulk.max() <= 1.2 * 1.3 + 1e-9
    assert bulk.std() > 0.1
    assert np.corrcoef(bulk, degeneration)[0, 1] > 0.2
