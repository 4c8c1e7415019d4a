"""Finding and checking shipped weights, without torch: the service's start-up checks and the CLI's
``config check`` use these, and importing the engine (torch) for them cost about 0.8 s per start."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

#: Where shipped weights live: ``weights/<version>/`` at the repository root.
WEIGHTS_ROOT = Path(__file__).resolve().parents[2] / "weights"
#: Where an installed wheel puts them (setup.py data files): ``<prefix>/share/spine-agent/weights``.
INSTALLED_WEIGHTS = Path("share") / "spine-agent" / "weights"
CHECKSUM_FILE = "SHA256SUMS"


class WeightsError(Exception):
    """Raised when a weights directory is missing, incomplete or fails its checksums."""


def _version_key(name: str) -> tuple[tuple[int, ...], str]:
    nums = tuple(int(n) for n in re.findall(r"\d+", name))
    return nums, name


def shipped_weights_roots() -> list[Path]:
    """Where shipped weights are looked for, in order: a repository checkout's ``weights/``, then the
    data folder of an installed wheel (``<prefix>/share/spine-agent/weights``; venv, system, user)."""
    import site
    import sys
    import sysconfig

    prefixes = [Path(sysconfig.get_path("data")), Path(sys.prefix), Path(site.getuserbase())]
    roots = [WEIGHTS_ROOT, *(prefix / INSTALLED_WEIGHTS for prefix in prefixes)]
    return list(dict.fromkeys(roots))


def default_weights_dir(root: Path | None = None) -> Path:
    """The newest shipped weights version (by version number in the folder name) under ``root``, or
    under the first of :func:`shipped_weights_roots` that holds any."""
    bases = shipped_weights_roots() if root is None else [Path(root)]
    for base in bases:
        versions = [p for p in base.iterdir() if (p / "engine.json").is_file()] if base.is_dir() else []
        if versions:
            return max(versions, key=lambda p: _version_key(p.name))
    where = " or ".join(str(b) for b in bases)
    raise WeightsError(f"no engine weights under {where} (expected <that folder>/<version>/engine.json)")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksums(directory: Path) -> None:
    """Check every file listed in ``SHA256SUMS`` (``<hex>  <name>`` lines); raise WeightsError on mismatch."""
    sums = directory / CHECKSUM_FILE
    if not sums.is_file():
        raise WeightsError(f"{directory}: missing {CHECKSUM_FILE}")
    for line in sums.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = directory / name.strip().lstrip("*")
        if not path.is_file():
            raise WeightsError(f"{directory}: {name} listed in {CHECKSUM_FILE} is missing")
        if sha256_file(path) != digest:
            raise WeightsError(f"{directory}: sha256 mismatch for {name}")
