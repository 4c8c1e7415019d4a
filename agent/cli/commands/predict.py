"""``spine-agent predict --input SERIES_DIR|CT.nii.gz --out DIR``: run the engine on one CT."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from agent.errors import UserError

log = logging.getLogger(__name__)


def predict(
    input_path: Annotated[Path, typer.Option("--input", "-i", help="DICOM series folder or .nii(.gz) CT.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    weights: Annotated[
        Path | None, typer.Option(help="Weights folder (default: newest shipped version in weights/).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda if available).")] = None,
) -> None:
    """Find and label every vertebra: writes prediction_ctd.json (VerSe), prediction_landmarks.json
    (LPS mm with confidences) and prediction_msk.nii.gz (spine mask)."""
    from inference.engine.engine import Engine, WeightsError
    from inference.training.verse import read_input, write_result

    if not input_path.exists():
        raise UserError(f"--input {input_path}: no such file or folder")
    try:
        engine = Engine.from_weights(weights, device=device)
    except WeightsError as exc:
        raise UserError(str(exc)) from None
    try:
        volume = read_input(input_path)
    except (ValueError, OSError, RuntimeError) as exc:
        raise UserError(f"cannot read {input_path}: {str(exc).splitlines()[0]}") from None
    result = engine.predict(volume)
    paths = write_result(out, result, volume)
    console = Console()
    names = " ".join(lm.name for lm in result.landmarks) or "none"
    timing = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
    console.print(f"{len(result.landmarks)} vertebrae ({names}); {timing}")
    console.print(f"wrote {paths['centroids']}, {paths['landmarks']}, {paths['mask']}")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
