"""Setuptools hook for what pyproject.toml cannot say: the shipped engine weights travel with the wheel.

Every version folder under ``weights/`` (one with an ``engine.json``) is installed as data files under
``<prefix>/share/spine-agent/weights/<version>/``, where ``inference.engine.weights.default_weights_dir``
finds it in an installed copy. The version is read from the folder names, never written here.
"""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def shipped_weights() -> list[tuple[str, list[str]]]:
    root = HERE / "weights"
    if not root.is_dir():
        return []
    return [
        (
            f"share/spine-agent/weights/{version.name}",
            sorted(str(f.relative_to(HERE)) for f in version.iterdir() if f.is_file()),
        )
        for version in sorted(root.iterdir())
        if (version / "engine.json").is_file()
    ]


setup(data_files=shipped_weights())
