"""``spine-agent phantom``: write synthetic CT spine phantoms (DICOM series and/or VerSe layout)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from agent.errors import UserError

log = logging.getLogger(__name__)

FORMATS = ("dicom", "verse", "both")


def phantom(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    count: Annotated[int, typer.Option(min=1, help="Number of phantoms.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the first phantom (then seed+1, ...).")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="dicom, verse or both.")] = "both",
    fov: Annotated[
        str,
        typer.Option(
            help="whole, cervical, thoracic, lumbar, abdomen_pelvis, chest, thoracolumbar or random."
        ),
    ] = "random",
    matrix: Annotated[
        int | None, typer.Option(min=16, max=2048, help="In-plane matrix (default 512).")
    ] = None,
    slices: Annotated[
        int | None, typer.Option(min=1, max=4000, help="Number of slices (default: drawn).")
    ] = None,
    spacing: Annotated[
        float | None,
        typer.Option(min=0.1, max=20.0, help="Isotropic voxel size in mm (instead of the drawn one)."),
    ] = None,
    variant: Annotated[
        str | None,
        typer.Option(help="Force an anatomical variant: none, L6, T13, 11_ribs, lumbarised_S1, ..."),
    ] = None,
) -> None:
    """Generate COUNT phantoms with exact ground truth into OUT (deterministic for a seed).

    DICOM series go to OUT/dicom/<name>/, the VerSe layout to OUT/verse/ (rawdata/ + derivatives/), and a
    ground-truth summary to OUT/phantoms.json.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from inference.phantoms import PhantomSpec, generate_phantom, write_dicom_series
    from inference.phantoms.spec import VARIANTS, normalise_fov
    from inference.training.verse import write_verse

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    try:
        fov_name = normalise_fov(fov)
    except ValueError as exc:
        raise UserError(f"--fov: {exc}") from None
    if variant is not None and variant not in VARIANTS:
        raise UserError(f"--variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    if spacing is not None and (matrix is not None or slices is not None):
        raise UserError("give either --spacing or --matrix/--slices, not both")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: {exc.strerror or exc}") from None

    summary = []
    with Progress(
        TextColumn("[bold]phantoms"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    ) as progress:
        task = progress.add_task("", total=count)
        for n in range(count):
            s = seed + n
            progress.update(task, description=f"seed {s}")
            overrides: dict[str, object] = {} if variant is None else {"variant": variant}
            spec = PhantomSpec.random(s, fov_name, None, None, **overrides)
            if spacing is not None:
                spec = spec.resampled((spacing, spacing, spacing))
            elif matrix is not None or slices is not None:
                centre, extent = spec.world_box()
                nk, nj, ni = spec.shape
                shape = (slices or nk, matrix or nj, matrix or ni)
                spec = spec.with_grid(centre, extent, spec.spacing, shape)
            ph = generate_phantom(spec)
            name = f"phantom{s:06d}"
            entry: dict[str, object] = {
                "name": name,
                "seed": s,
                "fov": spec.fov,
                "variant": spec.variant,
                "shape": list(spec.shape),
                "spacing": list(spec.spacing),
                "slice_thickness": spec.slice_thickness,
                "centroids_lps_mm": {
                    str(k): [round(v, 3) for v in c] for k, c in sorted(ph.centroids.items())
                },
            }
            try:
                if fmt in ("dicom", "both"):
                    files = write_dicom_series(ph, out / "dicom" / name)
                    entry["dicom"] = str(files[0].parent)
                if fmt in ("verse", "both"):
                    paths = write_verse(ph, out / "verse", name)
                    entry["verse_ct"] = str(paths.ct)
            except OSError as exc:
                raise UserError(f"cannot write phantom {name} under {out}: {exc.strerror or exc}") from None
            summary.append(entry)
            progress.advance(task)
    (out / "phantoms.json").write_text(json.dumps(summary, indent=1) + "\n")
    log.info("wrote %d phantom(s) to %s", count, out)


def register(app: typer.Typer) -> None:
    app.command("phantom")(phantom)


if __name__ == "__main__":  # python -m agent.cli.commands.phantom ... (works without the full CLI)
    _app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(_app)
    _app.command("noop", hidden=True)(lambda: None)
    _app()
