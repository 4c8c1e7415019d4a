"""Training the engine: datasets (phantoms, VerSe), training loop, evaluation, metrics, shipping weights.

Used by the CLI (``train``, ``evaluate``, ``predict``) and the demo; the agent service never imports it.
"""
