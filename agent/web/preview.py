"""A job's results as the dashboard shows them: its landmarks and a small sagittal preview PNG.

Both come from files the pipeline keeps per job (docs/design.md): ``spool/outgoing/<job>/landmarks.json``
(label, name, LPS mm, confidence) and the received series in ``spool/incoming/<study>/<series>/``. They
exist until retention removes the job's files; after that there is nothing to show.

The preview is a slab maximum-intensity projection (24 mm thick, bone window) through the landmarks,
left-right, so a curved spine stays visible: superior at the top, anterior on the left, square pixels,
at most :data:`MAX_PX` pixels on its longer side, the landmarks drawn as dots with their names. It is
bounded in work: at most :data:`MAX_SLICES` slices are decoded (evenly spaced) and each is subsampled to
at most :data:`MAX_INPLANE` pixels a side, so memory stays under about 32 MB whatever the series.
It holds pixels only: no text from the DICOM headers, no PNG metadata.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dicom_io.sr import POSITION_DECIMALS, certainty_percent

log = logging.getLogger(__name__)

#: The pipeline's landmark file in a job's output folder (agent/service/pipeline.py writes it).
LANDMARKS_FILE = "landmarks.json"
#: Longer side of the preview, in pixels.
MAX_PX = 320
#: Most slices decoded for one preview (evenly spaced over the series).
MAX_SLICES = 256
#: Most pixels kept along each in-plane axis of a slice (every n-th pixel).
MAX_INPLANE = 256
#: Most files whose headers are read to sort the slices; a larger folder gets no preview.
MAX_FILES = 4000
#: Half the thickness (mm) of the slab projected.
SLAB_HALF_MM = 12.0
#: Bone window, HU.
WINDOW = (-250.0, 1250.0)
#: Colour of the landmarks and their names.
POINT_RGB = (255, 213, 79)


class PreviewUnavailable(Exception):
    """No preview can be drawn; the message says why (no patient data in it)."""


@dataclass(frozen=True)
class LandmarkRow:
    """One landmark as the dashboard lists it."""

    label: int
    name: str
    position_lps_mm: tuple[float, float, float]
    certainty_percent: int

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "name": self.name,
            "position_lps_mm": list(self.position_lps_mm),
            "certainty_percent": self.certainty_percent,
        }

    @property
    def position_text(self) -> str:
        return ", ".join(f"{v:.{POSITION_DECIMALS}f}" for v in self.position_lps_mm)


def read_landmarks(out_dir: Path) -> list[LandmarkRow] | None:
    """The landmarks of ``landmarks.json`` in a job's output folder, or None when there is no such file.

    Positions to 0.1 mm and certainty as a whole percentage, as the SR states them. Malformed entries
    are left out (the file is ours, so that would be a bug, not an input problem).
    """
    try:
        data = json.loads((out_dir / LANDMARKS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s of %s: %s", LANDMARKS_FILE, out_dir.name, type(exc).__name__)
        return None
    rows: list[LandmarkRow] = []
    items = data.get("landmarks") if isinstance(data, dict) else None
    for item in items if isinstance(items, list) else []:
        try:
            x, y, z = (round(float(v), POSITION_DECIMALS) for v in item["position_lps_mm"])
            rows.append(
                LandmarkRow(int(item["label"]), str(item["name"]), (x, y, z),
                            certainty_percent(float(item["confidence"])))
            )
        except (KeyError, TypeError, ValueError):
            continue
    return rows


# --- the image ----------------------------------------------------------------------------------------


@dataclass
class _Slice:
    path: Path
    position: float  # along the slice normal, mm
    origin: npt.NDArray[np.float64]  # ImagePositionPatient


def _headers(series_dir: Path) -> tuple[list[_Slice], dict[str, Any]]:
    """The single-frame image slices of the folder's main stack, sorted along their normal."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not series_dir.is_dir():
        raise PreviewUnavailable("the series' files are no longer in the spool")
    files = sorted(series_dir.glob("*.dcm"))
    if not files:
        raise PreviewUnavailable("the series' files are no longer in the spool")
    if len(files) > MAX_FILES:
        raise PreviewUnavailable(f"the series has {len(files)} files, more than a preview reads, {MAX_FILES}")
    tags = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
            "NumberOfFrames"]
    stacks: dict[tuple[Any, ...], list[tuple[Path, Any]]] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
            if int(ds.get("NumberOfFrames", 1) or 1) != 1:
                continue
            iop = tuple(round(float(v), 4) for v in ds.ImageOrientationPatient)
            key = (int(ds.Rows), int(ds.Columns), iop, tuple(round(float(v), 4) for v in ds.PixelSpacing))
            ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        except (InvalidDicomError, OSError, AttributeError, TypeError, ValueError, KeyError):
            continue
        if len(iop) != 6 or ipp.shape != (3,) or len(key[3]) != 2:
            continue
        stacks.setdefault(key, []).append((path, ipp))
    if not stacks:
        raise PreviewUnavailable("no image slice with a geometry in the series' files")
    key, members = max(stacks.items(), key=lambda item: len(item[1]))
    rows, columns, iop, spacing = key
    row_dir = np.asarray(iop[:3], dtype=np.float64)
    col_dir = np.asarray(iop[3:], dtype=np.float64)
    normal = np.cross(row_dir, col_dir)
    by_position: dict[float, _Slice] = {}
    for path, ipp in members:  # one slice per position (an instance re-sent with other bytes: the last)
        position = round(float(ipp @ normal), 3)
        by_position[position] = _Slice(path, position, ipp)
    slices = [by_position[p] for p in sorted(by_position)]
    if len(slices) < 2:
        raise PreviewUnavailable("the series has fewer than 2 slices")
    geometry = {"rows": rows, "columns": columns, "row_dir": row_dir, "col_dir": col_dir, "normal": normal,
                "spacing": spacing}
    return slices, geometry


def _read_stack(slices: Sequence[_Slice], rows: int, columns: int, stride: int) -> npt.NDArray[np.int16]:
    """HU of the chosen slices, every ``stride``-th pixel, clipped to int16 [-1024, 3071]."""
    import pydicom

    shape = (len(slices), math.ceil(rows / stride), math.ceil(columns / stride))
    stack = np.empty(shape, dtype=np.int16)
    for n, item in enumerate(slices):
        try:
            ds = pydicom.dcmread(item.path)
            pixels = np.asarray(ds.pixel_array)[::stride, ::stride].astype(np.float32)
        except Exception as exc:  # any decoder refusal: no preview, with the reason's type
            raise PreviewUnavailable(f"a slice could not be decoded ({type(exc).__name__})") from None
        if pixels.shape != shape[1:]:
            raise PreviewUnavailable("the slices differ in size")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        stack[n] = np.clip(pixels * slope + intercept, -1024, 3071).astype(np.int16)
    return stack


def render_preview(series_dir: Path, landmarks: Sequence[LandmarkRow]) -> bytes:
    """The sagittal preview PNG of the series in ``series_dir`` with ``landmarks`` drawn on it.

    Raises :class:`PreviewUnavailable` when the files are gone or hold no usable image stack.
    """
    slices, geo = _headers(series_dir)
    chosen_at = np.unique(np.round(np.linspace(0, len(slices) - 1, min(len(slices), MAX_SLICES))).astype(int))
    chosen = [slices[int(n)] for n in chosen_at]
    rows, columns = int(geo["rows"]), int(geo["columns"])
    stride = max(1, math.ceil(max(rows, columns) / MAX_INPLANE))
    stack = _read_stack(chosen, rows, columns, stride)

    # Axes of the stack: 0 along the slice normal, 1 down the rows (column direction), 2 along a row.
    positions = np.asarray([s.position for s in chosen])
    directions = [geo["normal"], geo["col_dir"], geo["row_dir"]]
    spacings = [float(np.median(np.diff(positions))), geo["spacing"][0] * stride, geo["spacing"][1] * stride]
    origin = chosen[0].origin

    def index(point: Sequence[float]) -> npt.NDArray[np.float64]:
        p = np.asarray(point, dtype=np.float64)
        along = float(np.interp(p @ geo["normal"], positions, np.arange(len(positions))))
        return np.asarray([along, (p - origin) @ geo["col_dir"] / spacings[1],
                           (p - origin) @ geo["row_dir"] / spacings[2]])

    lr = int(np.argmax([abs(d[0]) for d in directions]))  # projected through: the patient's left-right
    rest = [a for a in range(3) if a != lr]
    si = max(rest, key=lambda a: abs(directions[a][2]))  # shown top to bottom
    ap = next(a for a in rest if a != si)  # shown left to right
    points = [index(lm.position_lps_mm) for lm in landmarks]
    centre = float(np.median([p[lr] for p in points])) if points else (stack.shape[lr] - 1) / 2
    half = max(0, round(SLAB_HALF_MM / spacings[lr]))
    lo = int(np.clip(round(centre) - half, 0, stack.shape[lr] - 1))
    hi = int(np.clip(round(centre) + half + 1, lo + 1, stack.shape[lr]))
    slab = np.take(stack, np.arange(lo, hi), axis=lr).max(axis=lr)
    image = slab if si < ap else slab.T  # rows: si, columns: ap
    flip_rows = directions[si][2] > 0  # index growing toward superior: superior goes to the top
    flip_cols = directions[ap][1] < 0  # index growing toward anterior (-y): anterior goes to the left
    if flip_rows:
        image = image[::-1]
    if flip_cols:
        image = image[:, ::-1]

    n_si, n_ap = image.shape
    mm_per_px = max(n_si * spacings[si], n_ap * spacings[ap]) / MAX_PX
    height = max(1, round(n_si * spacings[si] / mm_per_px))
    width = max(1, round(n_ap * spacings[ap] / mm_per_px))

    def samples(count: int, spacing: float, size: int) -> npt.NDArray[np.intp]:
        """Nearest source index of each output pixel's centre along one axis."""
        centres = (np.arange(count) + 0.5) * mm_per_px / spacing - 0.5
        return np.clip(centres.round().astype(np.intp), 0, size - 1)

    resampled = image[np.ix_(samples(height, spacings[si], n_si), samples(width, spacings[ap], n_ap))]
    resampled = resampled.astype(np.float32)
    low, high = WINDOW
    grey = (np.clip((resampled - low) / (high - low), 0.0, 1.0) * 255.0).round().astype(np.uint8)

    def pixel(point: npt.NDArray[np.float64]) -> tuple[float, float]:
        r, c = point[si], point[ap]
        r = n_si - 1 - r if flip_rows else r
        c = n_ap - 1 - c if flip_cols else c
        return ((c + 0.5) * spacings[ap] / mm_per_px - 0.5, (r + 0.5) * spacings[si] / mm_per_px - 0.5)

    return _png(grey, [(pixel(p), lm.name) for p, lm in zip(points, landmarks, strict=True)])


def _png(grey: npt.NDArray[np.uint8], marks: Sequence[tuple[tuple[float, float], str]]) -> bytes:
    """An RGB PNG of ``grey`` with a dot and a name at each mark (Pillow comes with matplotlib)."""
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray(np.ascontiguousarray(grey)).convert("RGB")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    width = picture.width
    for (x, y), name in marks:
        if not (-4 <= x <= width + 4 and -4 <= y <= picture.height + 4):
            continue
        draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=POINT_RGB)
        left, top, right, bottom = draw.textbbox((0, 0), name, font=font)
        tx = x + 5 if x + 5 + (right - left) <= width else x - 5 - (right - left)
        draw.text((tx - left, y - (top + bottom) / 2), name, fill=POINT_RGB, font=font)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
