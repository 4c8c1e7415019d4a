"""The training curve (metrics.csv): every value under its own column, whatever order an epoch's loss
parts came in (they are accumulated in the order they first occur, which differs between epochs)."""

from __future__ import annotations

import csv
from pathlib import Path

from inference.training.training import EpochRecord, _append_csv


def _record(epoch: int, parts: dict[str, float]) -> EpochRecord:
    return EpochRecord(epoch=epoch, iterations=100 * epoch, lr=1e-3, loss=1.5, parts=parts,
                       val={"region_acc": 1.0, "dist_mm": 1.3}, seconds=50.0)


def test_values_stay_under_their_names_when_the_parts_come_in_another_order(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    _append_csv(path, _record(1, {"dist_mm": 3.6, "js": 0.09, "class_ce": 0.97}).row())
    _append_csv(path, _record(2, {"js": 0.06, "class_ce": 1.17, "dist_mm": 2.38}).row())
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert [(r["dist_mm"], r["js"], r["class_ce"]) for r in rows] == [("3.6", "0.09", "0.97"),
                                                                       ("2.38", "0.06", "1.17")]
    assert rows[1]["val_dist_mm"] == "1.3" and rows[1]["val_region_acc"] == "1"


def test_a_resumed_run_follows_the_header_already_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,iterations,lr,loss,js,dist_mm,class_ce,val_dist_mm,val_region_acc,seconds\n"
                    "1,100,0.001,1.5,0.09,3.6,0.97,1.3,1,50.0\n", encoding="utf-8")
    _append_csv(path, _record(2, {"class_ce": 1.17, "dist_mm": 2.38, "js": 0.06}).row())
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert (rows[1]["js"], rows[1]["dist_mm"], rows[1]["class_ce"]) == ("0.06", "2.38", "1.17")
    assert path.read_text(encoding="utf-8").count("epoch,") == 1
