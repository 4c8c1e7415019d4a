"""The vertebra engine (ISE-VNet + 3D DSNT), its phantoms, training and evaluation.

``from inference import Engine, default_weights_dir`` works without importing torch until used, so
torch-free modules such as :mod:`dicom_io.result` stay light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Engine", "default_weights_dir"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from inference import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'inference' has no attribute {name!r}")
