"""Evaluate the engine on annotated subjects: VerSe identification rate and localisation error (overall and
per region), stage-1 Dice, seconds per volume; reports as JSON and Markdown.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from inference.engine.engine import Engine
from inference.engine.resample import Grid, resample
from inference.training.datasets import Subject
from inference.training.metrics import REGIONS, SubjectMatch, Tally, dice, match_subject

log = logging.getLogger(__name__)


@dataclass
class SubjectReport:
    name: str
    gt_labels: list[int]
    pred_labels: list[int]
    identified: dict[int, bool]
    distances: dict[int, float]
    #: None when the subject has no vertebra mask (e.g. a VerSe folder with centroids only).
    stage1_dice: float | None
    seconds: float
    timings: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "gt_labels": self.gt_labels, "pred_labels": self.pred_labels,
                "identified": {str(k): v for k, v in self.identified.items()},
                "distances_mm": {str(k): round(v, 3) for k, v in self.distances.items()},
                "stage1_dice": _r(self.stage1_dice), "seconds": round(self.seconds, 3),
                "timings": {k: round(v, 3) for k, v in self.timings.items()}}


@dataclass
class EvaluationReport:
    model_version: str
    data: str
    subjects: list[SubjectReport] = field(default_factory=list)

    def tallies(self) -> dict[str, Tally]:
        out = {"all": Tally(), **{r: Tally() for r in REGIONS}}
        for s in self.subjects:
            m = SubjectMatch(identified=s.identified, distances=s.distances)
            out["all"].add(m)
            for region, labels in REGIONS.items():
                out[region].add(m, labels)
        return out

    def summary(self) -> dict[str, Any]:
        t = self.tallies()
        secs = [s.seconds for s in self.subjects]
        dices = [s.stage1_dice for s in self.subjects if s.stage1_dice is not None]
        return {
            "model_version": self.model_version,
            "data": self.data,
            "subjects": len(self.subjects),
            "regions": {
                name: {"gt_vertebrae": tl.gt_count, "identified": tl.hits,
                       "id_rate": _r(tl.id_rate), "mean_error_mm": _r(tl.mean_error_mm),
                       "median_error_mm": _r(tl.median_error_mm), "localised": len(tl.errors_mm)}
                for name, tl in t.items()
            },
            "stage1_dice_mean": _r(float(np.mean(dices)) if dices else None),
            "seconds_per_volume_mean": _r(float(np.mean(secs)) if secs else None),
            "seconds_per_volume_max": _r(float(np.max(secs)) if secs else None),
        }

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary(), "subjects": [s.to_json() for s in self.subjects]}

    def to_markdown(self) -> str:
        s = self.summary()
        lines = [
            f"# Engine evaluation: {s['model_version']}",
            "",
            f"Data: {s['data']} ({s['subjects']} volumes). Metrics as the VerSe challenge code computes "
            "them: a GT vertebra is identified iff, among GT landmarks of vertebrae also predicted, the one "
            "nearest to its prediction has its label and lies at most 20 mm away; localisation error is "
            "the mean distance over vertebrae both present and predicted.",
            "",
            "| region | GT vertebrae | identified | ID rate | mean error (mm) | median error (mm) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, r in s["regions"].items():
            lines.append(f"| {name} | {r['gt_vertebrae']} | {r['identified']} | {_pct(r['id_rate'])} | "
                         f"{_num(r['mean_error_mm'])} | {_num(r['median_error_mm'])} |")
        lines += [
            "",
            "Stage-1 Dice (spine mask vs GT vertebrae, on the volume grid): "
            f"{_num(s['stage1_dice_mean'], 3)}",
            "",
            f"Seconds per volume: mean {_num(s['seconds_per_volume_mean'])}, "
            f"max {_num(s['seconds_per_volume_max'])}",
            "",
            "| subject | GT | predicted | identified | mean error (mm) | Dice | s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for sub in self.subjects:
            err = float(np.mean(list(sub.distances.values()))) if sub.distances else None
            lines.append(f"| {sub.name} | {len(sub.gt_labels)} | {len(sub.pred_labels)} | "
                         f"{sum(sub.identified.values())} | {_num(err)} | {_num(sub.stage1_dice, 3)} | "
                         f"{sub.seconds:.1f} |")
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> tuple[Path, Path]:
        """Write ``out.json`` and ``out.md`` (``out`` without suffix)."""
        out.parent.mkdir(parents=True, exist_ok=True)
        jp, mp = out.with_suffix(".json"), out.with_suffix(".md")
        jp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        mp.write_text(self.to_markdown(), encoding="utf-8")
        return jp, mp


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def _num(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def evaluate_subjects(engine: Engine, subjects: Iterable[Subject], data_name: str,
                      on_subject: Callable[[SubjectReport], None] | None = None) -> EvaluationReport:
    report = EvaluationReport(model_version=engine.plan.version, data=data_name)
    for subject in subjects:
        t0 = time.perf_counter()
        result = engine.predict(subject.volume)
        seconds = time.perf_counter() - t0
        pred = {lm.label: np.asarray(lm.position_lps) for lm in result.landmarks}
        gt = {k: v for k, v in subject.centroids.items() if k in engine.plan.stage2.labels}
        m = match_subject(gt, pred)
        sr = SubjectReport(name=subject.name, gt_labels=sorted(gt), pred_labels=sorted(pred),
                           identified=m.identified, distances=m.distances,
                           stage1_dice=(dice(result.mask > 0, subject.labels > 0) if subject.labels.any()
                                        else None),
                           seconds=seconds,
                           timings=dict(result.timings))
        log.info("%s: %d/%d identified, %.1f s", subject.name, sum(m.identified.values()), len(gt), seconds)
        report.subjects.append(sr)
        if on_subject is not None:
            on_subject(sr)
    return report


def score_prediction_files(data: Path, predictions: Path) -> EvaluationReport:
    """Score VerSe centroid files already written (by ``predict``, the demo or another tool) against a
    VerSe-format folder, without running the engine: the same metric as :func:`evaluate_subjects`.

    ``predictions`` holds ``<subject>_seg-subreg_ctd.json`` (or ``<subject>_ctd.json``) per subject, in
    the voxel frame of that subject's CT; a subject without a file counts as nothing predicted.
    """
    import nibabel as nib

    from dicom_io.labels import ENGINE_LABELS
    from inference.training.verse import read_centroids, read_verse

    report = EvaluationReport(model_version=f"predictions in {predictions}", data=str(data))
    for subject in read_verse(data):
        candidates = [predictions / f"{subject.subject}_seg-subreg_ctd.json",
                      predictions / f"{subject.subject}_ctd.json"]
        found = next((p for p in candidates if p.is_file()), None)
        pred: dict[int, tuple[float, float, float]] = {}
        if found is not None:
            pred = read_centroids(found, cast("nib.Nifti1Image", nib.load(subject.paths["ct"])))
        gt = {k: v for k, v in subject.centroids.items() if k in ENGINE_LABELS}
        m = match_subject(gt, {k: v for k, v in pred.items() if k in ENGINE_LABELS})
        report.subjects.append(SubjectReport(
            name=subject.subject, gt_labels=sorted(gt), pred_labels=sorted(pred), identified=m.identified,
            distances=m.distances, stage1_dice=None, seconds=0.0, timings={}))
    return report


def coarse_dice(prob_grid: Grid, prob: np.ndarray, subject: Subject, threshold: float) -> float:
    """Dice of a stage-1 probability map against the subject's labels, on the stage-1 grid."""
    lab = resample(subject.labels, subject.volume.affine, prob_grid, nearest=True, dtype=np.uint8)
    return dice(prob >= threshold, lab > 0)
