"""The manifest of a job's output folder: the DICOM files the pipeline wrote, in the order to send them.

``manifest.json`` is ``{"send": ["seg.dcm", "sr.dcm"]}``: SEG first, so the SR's reference to it resolves
at the receiver. The pipeline writes it last (atomically), so a folder with a manifest is complete; the
sender sends exactly the files it lists and nothing else it may find in the folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from storage.spool import atomic_write_bytes

#: File name of the manifest inside a job's output folder.
MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """A job's manifest is missing, unreadable, or lists a file that is not in its folder."""


def write_manifest(out_dir: Path, send: Sequence[Path]) -> Path:
    """Record ``send`` (files directly inside ``out_dir``), in order; return the manifest's path."""
    names = []
    for path in send:
        if path.parent != out_dir:
            raise ManifestError(f"{path.name} is not directly inside the output folder")
        names.append(path.name)
    manifest = out_dir / MANIFEST_NAME
    atomic_write_bytes(manifest, (json.dumps({"send": names}, indent=2) + "\n").encode())
    return manifest


def read_manifest(out_dir: Path) -> list[Path]:
    """The files to send, in order; :class:`ManifestError` says what is wrong with the manifest."""
    manifest = out_dir / MANIFEST_NAME
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"no DICOM files in its output folder (no {MANIFEST_NAME})") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{MANIFEST_NAME} cannot be read: {exc}") from None
    names = data.get("send") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ManifestError(f"{MANIFEST_NAME} has no list of file names under \"send\"")
    files = []
    for name in names:
        if not name or Path(name).name != name or name in (".", ".."):
            raise ManifestError(f"{MANIFEST_NAME} lists {name!r}, which is not a plain file name")
        path = out_dir / name
        if not path.is_file():
            raise ManifestError(f"{MANIFEST_NAME} lists {name}, which is not in the output folder")
        files.append(path)
    return files
