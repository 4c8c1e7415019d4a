"""The engine the agent loads to predict: ISE-VNet + 3D DSNT networks, plan, resampling, post-processing.

``Engine.from_weights(dir).predict(volume) -> Result``; nothing here reads training data.
"""

from inference.engine.engine import Engine, WeightsError, default_weights_dir

__all__ = ["Engine", "WeightsError", "default_weights_dir"]
