"""The engine the agent loads to predict: ISE-VNet + 3D DSNT networks, plan, resampling, post-processing.

``Engine.from_weights(dir).predict(volume) -> Result``; nothing here reads training data. The names
below load lazily: finding weights (:mod:`inference.engine.weights`) needs no torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Engine", "WeightsError", "default_weights_dir"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from inference.engine.engine import Engine

        return Engine
    if name in ("WeightsError", "default_weights_dir"):
        from inference.engine import weights

        return getattr(weights, name)
    raise AttributeError(f"module 'inference.engine' has no attribute {name!r}")
