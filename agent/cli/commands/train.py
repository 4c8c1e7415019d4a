"""``spine-agent train stage1|stage2``: train one engine stage on phantoms and/or a VerSe-format folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from agent.errors import UserError

log = logging.getLogger(__name__)


def train(
    stage: Annotated[str, typer.Argument(help="stage1 (ISE-VNet spine mask) or stage2 (3D DSNT landmarks).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (checkpoints, plan, metrics.csv).")],
    epochs: Annotated[int, typer.Option(min=1, help="Epochs.")] = 40,
    iters_per_epoch: Annotated[int, typer.Option(min=1, help="Iterations (batch of 1) per epoch.")] = 100,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak AdamW learning rate.")] = 2e-3,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="AdamW weight decay.")] = 1e-4,
    phantoms: Annotated[int, typer.Option(min=1, help="Training phantoms (generated on first use).")] = 200,
    phantom_seed: Annotated[int, typer.Option(help="First training phantom seed.")] = 1000,
    verse: Annotated[
        Path | None, typer.Option("--verse", help="Train on a VerSe-format folder instead of phantoms.")
    ] = None,
    cache: Annotated[Path | None, typer.Option(help="Folder caching generated phantoms (npz).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for weights init, sampling and augmentation.")] = 0,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads for this process.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/last.pt.")] = False,
    init: Annotated[
        Path | None, typer.Option(help="Warm start from model.pt/last.pt (tensors matching name and shape).")
    ] = None,
) -> None:
    """Train one stage; writes OUT/last.pt (resumable), OUT/model.pt and OUT/metrics.csv every epoch."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from inference.training.training import TrainConfig, Trainer

    if stage not in ("stage1", "stage2"):
        raise UserError(f"stage must be stage1 or stage2, got {stage!r}")
    if verse is not None and not verse.is_dir():
        raise UserError(f"--verse {verse}: not a folder")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig(
        stage=stage,  # type: ignore[arg-type]
        out_dir=out, epochs=epochs, iters_per_epoch=iters_per_epoch, lr=lr, weight_decay=weight_decay,
        phantoms=phantoms, phantom_seed=phantom_seed, verse_dir=verse, cache_dir=cache, seed=seed,
        threads=threads, resume=resume, init_from=init,
    )
    try:
        trainer = Trainer(cfg)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with Progress(
        TextColumn(f"{stage}"), BarColumn(), TextColumn("{task.completed}/{task.total} it"),
        TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
    ) as progress:
        task = progress.add_task(stage, total=cfg.total_iters, completed=trainer.iteration, loss=float("nan"))

        def on_step(it: int, total: int, loss: float) -> None:
            progress.update(task, completed=it, loss=loss)

        trainer.run(on_step)
    log.info("training finished: %s", out / "model.pt")


def package_weights(
    stage1: Annotated[Path, typer.Option(help="Stage-1 training run folder (model.pt + plan.json).")],
    stage2: Annotated[Path, typer.Option(help="Stage-2 training run folder.")],
    version: Annotated[str, typer.Option(help="Version name, e.g. v0.2.0.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Weights folder to write (weights/<version>).")],
    chain_phantoms: Annotated[
        int, typer.Option(min=0, help="Learn the chain labelling's neighbour offsets from this many "
                                      "training phantoms (0: anatomical defaults).")
    ] = 0,
    chain_seed: Annotated[int, typer.Option(help="First phantom seed for the neighbour offsets.")] = 1_000,
    stage1_stride: Annotated[
        int | None, typer.Option(min=1, help="Stage-1 sliding-window stride in voxels (inference only).")
    ] = None,
) -> None:
    """Package two training runs as a weights version (engine.json, stage*.pt, SHA256SUMS)."""
    from inference.training.shipping import chain_prior_from_phantoms
    from inference.training.shipping import package_weights as package

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for run in (stage1, stage2):
        if not (run / "model.pt").is_file():
            raise UserError(f"{run}: no model.pt (not a training run folder?)")
    stride = None if stage1_stride is None else (stage1_stride, stage1_stride, stage1_stride)
    chain = chain_prior_from_phantoms(chain_phantoms, chain_seed) if chain_phantoms else None
    package(stage1, stage2, out, version, chain=chain, stage1_stride=stride)
    log.info("wrote %s", out)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("package-weights")(package_weights)


if __name__ == "__main__":  # python -m agent.cli.commands.train ... (works without the full CLI)
    _app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(_app)
    _app.command("noop", hidden=True)(lambda: None)
    _app()
