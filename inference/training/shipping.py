"""Package trained stages into ``weights/<version>/``: plan, both state dicts, SHA256SUMS."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from inference.engine.chain import ChainPrior, fit_chain_prior
from inference.engine.plan import PLAN_FILE, EnginePlan, Stage1Plan, Stage2Plan
from inference.engine.weights import CHECKSUM_FILE, sha256_file

log = logging.getLogger(__name__)


def _stage_plan(run_dir: Path) -> dict[str, object]:
    path = run_dir / "plan.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no plan.json (is it a training run folder?)")
    data: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return data


def write_checksums(directory: Path) -> Path:
    """SHA256SUMS over what the engine loads (plan + state dicts); documentation may be edited freely."""
    names = sorted(p.name for p in directory.iterdir()
                   if p.is_file() and (p.name == PLAN_FILE or p.suffix == ".pt"))
    lines = [f"{sha256_file(directory / n)}  {n}" for n in names]
    path = directory / CHECKSUM_FILE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def package_weights(stage1_run: Path, stage2_run: Path, out_dir: Path, version: str,
                    chain: ChainPrior | None = None,
                    stage1_stride: tuple[int, int, int] | None = None) -> EnginePlan:
    """Copy ``model.pt`` of both runs (saved as fp32 state dicts) with an ``engine.json`` plan.

    ``stage1_stride`` overrides the inference-only sliding-window stride of stage 1.
    """
    s1 = Stage1Plan.from_json(_stage_plan(stage1_run))  # type: ignore[arg-type]
    if stage1_stride is not None:
        s1 = replace(s1, stride=stage1_stride)
    s2 = Stage2Plan.from_json(_stage_plan(stage2_run))  # type: ignore[arg-type]
    # What the network learnt comes from the run; how the engine searches with it (seed step, re-centring,
    # merging, thresholds, edge margin) is not trained, so the current defaults apply.
    search = Stage2Plan()
    s2 = replace(s2, seed_step_mm=search.seed_step_mm, max_iters=search.max_iters,
                 converge_mm=search.converge_mm, merge_mm=search.merge_mm,
                 none_threshold=search.none_threshold, edge_margin_mm=search.edge_margin_mm)
    plan = EnginePlan(version=version, stage1=s1, stage2=s2, chain=chain or ChainPrior())
    out_dir.mkdir(parents=True, exist_ok=True)
    for run, name in ((stage1_run, s1.weights), (stage2_run, s2.weights)):
        state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
        torch.save({k: v.float() for k, v in state.items()}, out_dir / name)
    plan.save(out_dir)
    for extra in ("metrics.csv",):
        for stage, run in (("stage1", stage1_run), ("stage2", stage2_run)):
            if (run / extra).is_file():
                shutil.copyfile(run / extra, out_dir / f"{stage}_{extra}")
    write_checksums(out_dir)
    log.info("packaged %s into %s", version, out_dir)
    return plan


def chain_prior_from_phantoms(count: int, first_seed: int) -> ChainPrior:
    """Neighbour offsets (body centroid to body centroid) learnt from ``count`` training phantoms.

    Only the phantoms' ground truth is used (rendered at a coarse 4 mm; the landmarks do not depend on
    the image grid). Whole-spine fields of view, so every pair of neighbours is seen."""
    from inference.phantoms import generate_phantom

    cents = []
    for seed in range(first_seed, first_seed + count):
        ph = generate_phantom(seed=seed, fov="whole", spacing=(4.0, 4.0, 4.0))
        cents.append(ph.centroids)
    return fit_chain_prior(cents)


def set_chain_prior(weights_dir: Path, chain: ChainPrior) -> None:
    """Store a fitted chain prior in an existing weights folder and refresh its checksums."""
    plan = EnginePlan.load(weights_dir)
    replace(plan, chain=chain).save(weights_dir)
    write_checksums(weights_dir)


__all__ = ["PLAN_FILE", "chain_prior_from_phantoms", "package_weights", "set_chain_prior", "write_checksums"]
