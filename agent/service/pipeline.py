"""One series in, results out: load the volume, run the engine, write SEG + SR + landmark JSON + manifest.

Shared by the worker (ledger-driven) and the demo. No ledger and no networking here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from agent.service.manifest import write_manifest
from dicom_io.result import Result
from dicom_io.seg import build_seg
from dicom_io.series import load_series
from dicom_io.sr import build_sr
from dicom_io.volume import Volume
from storage.spool import atomic_write_bytes

log = logging.getLogger(__name__)

#: Series Numbers of our output series in the source study (high, to sort after the source series).
SEG_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902


class NoVertebraFound(RuntimeError):
    """The engine ran but labelled no vertebra (no spine in the field of view, or not recognised).

    The job fails with this message as its reason; there is no result to send.
    """


class Predictor(Protocol):
    """What the pipeline needs of the engine (:class:`inference.engine.engine.Engine` is one)."""

    def predict(self, volume: Volume) -> Result: ...


@dataclass
class PipelineOutput:
    """Files written for one job and what they hold."""

    seg_path: Path | None
    sr_path: Path
    landmarks_path: Path
    result: Result
    timings: dict[str, float] = field(default_factory=dict)
    #: ``manifest.json``: what the sender sends (:attr:`dicom_files`, in that order).
    manifest_path: Path | None = None

    @property
    def dicom_files(self) -> list[Path]:
        """The DICOM objects to send (SEG first, so the SR's reference to it resolves)."""
        return [p for p in (self.seg_path, self.sr_path) if p is not None]


def _dataset_bytes(ds: Dataset) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def landmarks_json(result: Result, volume: Volume) -> str:
    """The result as JSON: label, name, LPS mm, confidence (no patient data)."""
    return json.dumps(
        {
            "model_version": result.model_version,
            "frame_of_reference_uid": volume.source.frame_of_reference_uid if volume.source else None,
            "landmarks": [
                {
                    "label": lm.label,
                    "name": lm.name,
                    "position_lps_mm": [round(float(c), 3) for c in lm.position_lps],
                    "confidence": round(float(lm.confidence), 4),
                }
                for lm in result.landmarks
            ],
            "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        },
        indent=2,
    )


def run_pipeline(
    series_dir: Path,
    out_dir: Path,
    engine: Predictor,
    *,
    max_instances: int,
    on_stage: Callable[[str], None] | None = None,
) -> PipelineOutput:
    """Process one spooled series folder into ``out_dir``.

    Raises :class:`dicom_io.errors.SeriesRejected` when the series cannot be used (a reason a user reads),
    and whatever the engine or writers raise on other failures.
    """
    timings: dict[str, float] = {}

    def stage(name: str) -> None:
        if on_stage is not None:
            on_stage(name)

    stage("load")
    t0 = time.perf_counter()
    headers: list[Dataset] = []
    volume = load_series(series_dir, max_instances=max_instances, headers=headers)
    timings["load"] = time.perf_counter() - t0

    stage("engine")
    result = engine.predict(volume)
    for name, seconds in result.timings.items():
        timings[name] = seconds

    if not result.landmarks:
        raise NoVertebraFound(
            "the engine found no vertebra in this series (is the spine in the field of view?)"
        )

    stage("write")
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    seg_path: Path | None = None
    seg = None
    if result.mask.any():
        seg = build_seg(
            volume, headers, result, series_number=SEG_SERIES_NUMBER, algorithm_version=result.model_version
        )
        seg_path = out_dir / "seg.dcm"
        atomic_write_bytes(seg_path, _dataset_bytes(seg))
    sr = build_sr(
        headers,
        result,
        series_number=SR_SERIES_NUMBER,
        algorithm_version=result.model_version,
        segmentation=seg,
    )
    sr_path = out_dir / "sr.dcm"
    atomic_write_bytes(sr_path, _dataset_bytes(sr))
    landmarks_path = out_dir / "landmarks.json"
    atomic_write_bytes(landmarks_path, landmarks_json(result, volume).encode())
    output = PipelineOutput(seg_path, sr_path, landmarks_path, result, timings)
    # Last: a folder with a manifest is complete.
    output.manifest_path = write_manifest(out_dir, output.dicom_files)
    timings["write"] = time.perf_counter() - t0
    return output
