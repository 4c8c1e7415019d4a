"""``spine-agent demo``: the whole loop locally, with a summary."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from agent.errors import UserError

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        workdir: Annotated[
            Path | None,
            typer.Option(
                help="Folder for the phantom, spool, ledger, received results and PNG "
                "(default: a new folder under ./demo-out)."
            ),
        ] = None,
        seed: Annotated[int, typer.Option(help="Phantom seed (held out from training).")] = 900_001,
        fov: Annotated[str, typer.Option(help="Phantom field of view.")] = "thoracolumbar",
    ) -> None:
        """Send a synthetic CT series through the agent and back; print what it found and its error."""
        from agent.cli.demo import DEMO_FOVS, run_demo

        if fov not in DEMO_FOVS:
            raise UserError(f"--fov {fov!r}: expected one of {', '.join(DEMO_FOVS)}")
        if workdir is None:
            Path("demo-out").mkdir(exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir="demo-out"))
        started = time.perf_counter()
        with console.status("starting") as status:
            report = run_demo(workdir, seed=seed, fov=fov, progress=lambda msg: status.update(msg))
        total = time.perf_counter() - started

        table = Table(title=f"job {report.job_id}: {report.job_state} - vertebrae found vs ground truth")
        for column in ("vertebra", "found", "error (mm)", "identified", "confidence"):
            table.add_column(column, justify="right")
        confidences = {lm.label: lm.confidence for lm in report.landmarks}
        for score in report.scores:
            table.add_row(
                score.name,
                "yes" if score.predicted else "[red]no[/]",
                "-" if score.error_mm is None else f"{score.error_mm:.1f}",
                "yes" if score.identified else "[red]no[/]",
                "-" if score.label not in confidences else f"{confidences[score.label]:.2f}",
            )
        console.print(table)
        mean = "n/a" if math.isnan(report.mean_error_mm) else f"{report.mean_error_mm:.1f} mm"
        console.print(
            f"identification rate [bold]{report.identification_rate:.1%}[/] "
            f"({sum(s.identified for s in report.scores)}/{len(report.scores)}), "
            f"mean localisation error [bold]{mean}[/] (VerSe metric, 20 mm)"
        )
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items())
        console.print(f"engine timings: {stages}")
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in report.stage_seconds.items())
        console.print(f"demo steps: {steps}; total {total:.0f} s")
        console.print(
            f"results received by the local PACS: {len(report.received_files)} file(s) in "
            f"{report.received_files[0].parent if report.received_files else '-'}"
        )
        console.print(f"overlay: {report.png}")
        console.print(
            f"check with: spine-agent evaluate --data {report.verse_dir} "
            f"--predictions {report.predictions_json.parent} --out {report.workdir / 'evaluation'}"
        )
