"""Training loops for both stages: AdamW + warm-up/cosine schedule, fixed seeds, checkpoints that can be
resumed, per-epoch metrics appended to a CSV.

Output folder layout (``--out``)::

    last.pt         model + optimiser + schedule + RNG state (what --resume reads), every epoch
    model.pt        the network's state dict alone (what gets shipped)
    plan.json       the stage plan the network is rebuilt from
    metrics.csv     one row per epoch
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from dicom_io.labels import LABEL_BY_NAME
from inference.engine.chain import REGIONS, region_of
from inference.engine.dsnt import dsnt_loss
from inference.engine.networks import ISEVNet, VertebraLocaliser
from inference.engine.plan import Stage1Plan, Stage2Plan
from inference.training.datasets import (
    Stage2Sample,
    SubjectPool,
    phantom_pool,
    stage1_sample,
    stage2_sample,
    verse_pool,
)
from inference.training.metrics import dice

log = logging.getLogger(__name__)

Stage = Literal["stage1", "stage2"]

#: Seed ranges kept apart: training phantoms, per-epoch validation phantoms, held-out evaluation.
TRAIN_SEED_START = 1_000
VAL_SEED_START = 90_000
EVAL_SEED_START = 500_000
#: Stage-2 subjects are cut to the spine plus this margin (mm): a 128 mm crop centred up to 14 mm off a
#: vertebra at the edge of the spine still lies inside.
STAGE2_CONTEXT_MM = 80.0
#: Weight of the level / "none" cross-entropy against the DSNT term.
CLASS_WEIGHT = 1.0
#: Weight of the region (C, T, L) cross-entropy, where the network has a region head, relative to the
#: level one; crops of no vertebra carry none.
REGION_WEIGHT = 1.0
#: Extra weight of the cross-entropy on the variant levels T13 and L6. They are one vertebra in a
#: phantom of 15 (6-7 % of phantoms each), so without it the head learns never to answer them and the
#: chain cannot count an extra vertebra; with it the head reports them as the real possibility they are
#: and the chain decides from the whole column (ribs above, sacrum below).
RARE_LEVEL_WEIGHT = 3.0
RARE_LEVELS = ("T13", "L6")


@dataclass
class TrainConfig:
    stage: Stage
    out_dir: Path
    epochs: int = 40
    iters_per_epoch: int = 100
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    seed: int = 0
    phantoms: int = 200
    phantom_seed: int = TRAIN_SEED_START
    verse_dir: Path | None = None
    val_subjects: int = 4
    cache_dir: Path | None = None
    threads: int = 1
    resume: bool = False
    #: Warm start: a model.pt / last.pt whose tensors of matching name and shape initialise the network.
    init_from: Path | None = None
    stage1: Stage1Plan = field(default_factory=Stage1Plan)
    stage2: Stage2Plan = field(default_factory=Stage2Plan)

    @property
    def total_iters(self) -> int:
        return self.epochs * self.iters_per_epoch


@dataclass
class EpochRecord:
    epoch: int
    iterations: int
    lr: float
    loss: float
    parts: dict[str, float]
    val: dict[str, float]
    seconds: float

    def row(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "iterations": self.iterations, "lr": f"{self.lr:.6g}",
                "loss": f"{self.loss:.6g}", **{k: f"{v:.6g}" for k, v in sorted(self.parts.items())},
                **{f"val_{k}": f"{v:.6g}" for k, v in sorted(self.val.items())},
                "seconds": f"{self.seconds:.1f}"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(it: int, total: int, warmup: int, floor: float = 0.05) -> float:
    """Linear warm-up then cosine decay to ``floor`` x the base learning rate."""
    if it < warmup:
        return (it + 1) / warmup
    progress = min(1.0, (it - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    return 1 - (2 * inter + eps) / (prob.sum() + target.sum() + eps)


def training_pools(cfg: TrainConfig) -> tuple[SubjectPool, SubjectPool]:
    """(train, validation) subject pools for the stage."""
    spacing = cfg.stage1.spacing_mm if cfg.stage == "stage1" else cfg.stage2.spacing_mm
    crop = None if cfg.stage == "stage1" else STAGE2_CONTEXT_MM
    cache = None if cfg.cache_dir is None else cfg.cache_dir / cfg.stage
    if cfg.verse_dir is not None:
        pool = verse_pool(cfg.verse_dir)
        n_val = min(cfg.val_subjects, max(0, len(pool) - 1))
        train = SubjectPool(pool.names[n_val:], lambda i: pool[i + n_val])
        val = SubjectPool(pool.names[:n_val], lambda i: pool[i])
        return train, val
    train = phantom_pool(cfg.phantom_seed, cfg.phantoms, spacing, cache, crop_margin_mm=crop)
    val = phantom_pool(VAL_SEED_START, cfg.val_subjects, spacing, cache, crop_margin_mm=crop)
    return train, val


class Trainer:
    """One stage's training run. ``run(on_step)`` calls ``on_step(iteration, total, loss)``."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        self.model: ISEVNet | VertebraLocaliser = (
            ISEVNet(cfg.stage1.network) if cfg.stage == "stage1" else VertebraLocaliser(cfg.stage2.network)
        )
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda it: lr_factor(it, cfg.total_iters, cfg.warmup_iters)
        )
        self.rng = np.random.default_rng(cfg.seed)
        labels = cfg.stage2.labels
        self._rare_classes = frozenset(
            labels.index(LABEL_BY_NAME[n]) for n in RARE_LEVELS if LABEL_BY_NAME[n] in labels
        )
        self.epoch = 0
        self.iteration = 0
        self.train_pool, self.val_pool = training_pools(cfg)
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            self._load(cfg.out_dir / "last.pt")
        elif cfg.init_from is not None:
            self._warm_start(cfg.init_from)
        self._val_samples: list[Any] | None = None

    # --- checkpoints ----------------------------------------------------------------------------------

    def _plan_json(self) -> dict[str, Any]:
        return self.cfg.stage1.to_json() if self.cfg.stage == "stage1" else self.cfg.stage2.to_json()

    def save(self) -> None:
        out = self.cfg.out_dir
        state = {
            "model": self.model.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
            "epoch": self.epoch, "iteration": self.iteration, "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "plan": self._plan_json(), "stage": self.cfg.stage,
        }
        tmp = out / "last.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(out / "last.pt")
        tmp = out / "model.pt.tmp"
        torch.save(self.model.state_dict(), tmp)
        tmp.replace(out / "model.pt")
        (out / "plan.json").write_text(json.dumps(self._plan_json(), indent=2) + "\n", encoding="utf-8")

    def _warm_start(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"--init: no file {path}")
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("model", state)
        own = self.model.state_dict()
        keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        self.model.load_state_dict(keep, strict=False)
        log.info("warm start from %s: %d of %d tensors", path, len(keep), len(own))

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {path}")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("stage") != self.cfg.stage:
            raise ValueError(f"--resume: {path} is a {state.get('stage')} checkpoint, not {self.cfg.stage}")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.epoch = int(state["epoch"])
        self.iteration = int(state["iteration"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed %s at epoch %d (iteration %d)", self.cfg.stage, self.epoch, self.iteration)

    # --- one step -------------------------------------------------------------------------------------

    def _subject(self) -> Any:
        return self.train_pool[int(self.rng.integers(len(self.train_pool)))]

    def step(self) -> dict[str, float]:
        self.model.train()
        if self.cfg.stage == "stage1":
            img, tgt = stage1_sample(self._subject(), self.cfg.stage1, self.rng)
            x = torch.from_numpy(img)[None]
            y = torch.from_numpy(tgt)[None]
            logits = self.model(x)
            bce = F.binary_cross_entropy_with_logits(logits, y)
            dl = soft_dice_loss(logits, y)
            loss = bce + dl
            parts = {"bce": float(bce.detach()), "dice_loss": float(dl.detach())}
        else:
            s = stage2_sample(self._subject(), self.cfg.stage2, self.rng)
            loss, parts = self._stage2_loss(s)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        self.sched.step()
        self.iteration += 1
        return {"loss": float(loss.detach()), **parts}

    def _stage2_loss(self, s: Stage2Sample) -> tuple[torch.Tensor, dict[str, float]]:
        assert isinstance(self.model, VertebraLocaliser)
        x = torch.from_numpy(s.image)[None]
        heatmap, coords, logits = self.model(x, s.spacing)
        target = torch.from_numpy(s.target_mm)[None, None]
        present = torch.tensor([[s.has_target]])
        hm_spacing, offset = self.model.heatmap_geometry(s.spacing)
        loc, dist, js = dsnt_loss(heatmap, coords[:, None], target, present, hm_spacing,
                                  self.cfg.stage2.sigma_mm, offset=offset)
        n_cls = len(self.cfg.stage2.labels) + 1
        ce = F.cross_entropy(logits[:, :n_cls], torch.tensor([s.cls]), label_smoothing=0.05)
        if s.cls in self._rare_classes:
            ce = ce * RARE_LEVEL_WEIGHT
        parts = {"dist_mm": float(dist) if s.has_target else float("nan"), "js": float(js),
                 "class_ce": float(ce.detach())}
        loss = loc + CLASS_WEIGHT * ce
        if self.cfg.stage2.network.region_classes:
            region = region_target(self.cfg.stage2.labels, s.cls)
            rce = (F.cross_entropy(logits[:, n_cls:], torch.tensor([region]), label_smoothing=0.05)
                   if region is not None else None)
            parts["region_ce"] = float(rce.detach()) if rce is not None else float("nan")
            if rce is not None:
                loss = loss + CLASS_WEIGHT * REGION_WEIGHT * rce
        return loss, parts

    # --- validation -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        if len(self.val_pool) == 0:
            return {}
        self.model.eval()
        if self._val_samples is None:
            rng = np.random.default_rng(12345)
            samples: list[Any] = []
            for i in range(len(self.val_pool)):
                for _ in range(2 if self.cfg.stage == "stage1" else 8):
                    if self.cfg.stage == "stage1":
                        samples.append(stage1_sample(self.val_pool[i], self.cfg.stage1, rng, augment=False))
                    else:
                        samples.append(stage2_sample(self.val_pool[i], self.cfg.stage2, rng, augment=True))
            self._val_samples = samples
        if self.cfg.stage == "stage1":
            dices = []
            for img, tgt in self._val_samples:
                prob = torch.sigmoid(self.model(torch.from_numpy(img)[None]))[0].numpy()
                dices.append(dice(prob >= 0.5, tgt > 0.5))
            return {"dice": float(np.mean(dices))}
        errors, correct, near, total = [], 0, 0, 0
        region_right: list[bool] = []
        for s in self._val_samples:
            _, coords, logits = self.model(torch.from_numpy(s.image)[None], s.spacing)
            if s.has_target:
                errors.append(float(np.linalg.norm(coords[0].numpy() - s.target_mm)))
            n_cls = len(self.cfg.stage2.labels) + 1
            pred = int(logits[0, :n_cls].argmax())
            correct += int(pred == s.cls)
            near += int(abs(pred - s.cls) <= 1)
            total += 1
            region = region_target(self.cfg.stage2.labels, s.cls)
            if self.cfg.stage2.network.region_classes and region is not None:
                region_right.append(int(logits[0, n_cls:].argmax()) == region)
        out = {"dist_mm": float(np.mean(errors)) if errors else float("nan"),
               "class_acc": correct / max(1, total), "class_within1": near / max(1, total)}
        if region_right:
            out["region_acc"] = float(np.mean(region_right))
        return out

    # --- the loop -------------------------------------------------------------------------------------

    def run(self, on_step: Callable[[int, int, float], None] | None = None) -> list[EpochRecord]:
        records = []
        csv_path = self.cfg.out_dir / "metrics.csv"
        while self.epoch < self.cfg.epochs:
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            for _ in range(self.cfg.iters_per_epoch):
                parts = self.step()
                for k, v in parts.items():
                    if not math.isnan(v):
                        sums[k] = sums.get(k, 0.0) + v
                        counts[k] = counts.get(k, 0) + 1
                if on_step is not None:
                    on_step(self.iteration, self.cfg.total_iters, parts["loss"])
            self.epoch += 1
            means = {k: v / max(1, counts[k]) for k, v in sums.items()}
            val = self.validate()
            lr = float(self.sched.get_last_lr()[0])
            rec = EpochRecord(self.epoch, self.iteration, lr, means.pop("loss"), means, val,
                              time.perf_counter() - t0)
            self.save()
            _append_csv(csv_path, rec.row())
            log.info("%s epoch %d/%d loss %.4f %s val %s (%.0f s)", self.cfg.stage, rec.epoch,
                     self.cfg.epochs, rec.loss, {k: round(v, 4) for k, v in means.items()},
                     {k: round(v, 4) for k, v in val.items()}, rec.seconds)
            records.append(rec)
        return records


def region_target(labels: Sequence[int], cls: int) -> int | None:
    """Index in :data:`REGIONS` of level class ``cls`` (None for "no vertebra")."""
    if cls >= len(labels):
        return None
    return REGIONS.index(region_of(labels[cls]))


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` under the file's own header (written from the first row): the loss parts of an
    epoch come in the order they first occurred, which differs between epochs, and a writer keyed by
    this row's order put values under other columns' names (the metrics CSVs of v0.7.0 and before)."""
    header: list[str] | None = None
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header or list(row), restval="", extrasaction="ignore")
        if not header:
            w.writeheader()
        w.writerow(row)
