"""``spine-agent evaluate``: VerSe metrics of the engine on a VerSe-format folder or fresh phantoms."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from agent.errors import UserError

if TYPE_CHECKING:
    from inference.training.evaluation import EvaluationReport

log = logging.getLogger(__name__)


def evaluate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report path without suffix (.json and .md).")],
    data: Annotated[Path | None, typer.Option(help="VerSe-format folder (rawdata/ + derivatives/).")] = None,
    phantoms: Annotated[
        int | None, typer.Option(min=1, help="Instead of --data: this many freshly generated phantoms.")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="First held-out phantom seed (training uses 1000.., validation 90000..).")
    ] = 500_000,
    fov: Annotated[str, typer.Option(help="Phantom field of view (random: the generator's clinical mix).")
                   ] = "random",
    weights: Annotated[
        Path | None, typer.Option(help="Weights folder (default: newest shipped version in weights/).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda if available).")] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(help="With --data: score these VerSe centroid files (<subject>_seg-subreg_ctd.json, "
                          "e.g. from predict or the demo) instead of running the engine."),
    ] = None,
) -> None:
    """Identification rate and localisation error (all, cervical, thoracic, lumbar), stage-1 Dice and
    seconds per volume, as Markdown and JSON."""
    from inference.engine.engine import Engine, WeightsError
    from inference.training.datasets import phantom_pool, verse_pool
    from inference.training.evaluation import evaluate_subjects
    from inference.training.training import TRAIN_SEED_START, VAL_SEED_START

    if (data is None) == (phantoms is None):
        raise UserError("give exactly one of --data DIR or --phantoms N")
    if predictions is not None:
        if data is None or not data.is_dir():
            raise UserError("--predictions needs --data DIR (the VerSe folder with the ground truth)")
        if not predictions.is_dir():
            raise UserError(f"--predictions {predictions}: not a folder")
        from inference.training.evaluation import score_prediction_files

        _print_and_write(score_prediction_files(data, predictions), out, Console())
        return
    if phantoms is not None and seed < VAL_SEED_START and seed + phantoms > TRAIN_SEED_START:
        raise UserError(f"--seed {seed}: overlaps the training phantom seeds ({TRAIN_SEED_START}..); "
                        f"use {VAL_SEED_START} or more")
    try:
        engine = Engine.from_weights(weights, device=device)
    except WeightsError as exc:
        raise UserError(str(exc)) from None
    if data is not None:
        if not data.is_dir():
            raise UserError(f"--data {data}: not a folder")
        try:
            pool = verse_pool(data, keep_in_memory=False)
        except ValueError as exc:  # VerseFormatError: names the file and what is wrong
            raise UserError(str(exc)) from None
        name = str(data)
    else:
        assert phantoms is not None
        pool = phantom_pool(seed, phantoms, spacing=None, fov=fov, keep_in_memory=False)
        name = f"{phantoms} phantoms ({fov}), seeds {seed}..{seed + phantoms - 1}"
    console = Console()
    subjects = (pool[i] for i in range(len(pool)))
    report = evaluate_subjects(engine, subjects, name, on_subject=lambda s: console.print(
        f"{s.name}: {sum(s.identified.values())}/{len(s.gt_labels)} identified, {s.seconds:.1f} s"))
    _print_and_write(report, out, console)


def _print_and_write(report: EvaluationReport, out: Path, console: Console) -> None:
    jp, mp = report.write(out)
    overall = report.summary()["regions"]["all"]
    rate = overall["id_rate"]
    err = overall["mean_error_mm"]
    console.print(f"ID rate {'-' if rate is None else f'{100 * rate:.2f} %'}, mean error "
                  f"{'-' if err is None else f'{err:.2f} mm'}; wrote {jp} and {mp}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
