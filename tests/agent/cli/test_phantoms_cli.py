"""``spine-agent phantom``: files written, determinism, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from agent.cli.commands.phantom import register


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app.command("noop", hidden=True)(lambda: None)  # keeps "phantom" a sub-command
    return app


def test_writes_dicom_and_verse(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _app(),
        [
            "phantom",
            "--out",
            str(tmp_path),
            "--count",
            "2",
            "--seed",
            "5",
            "--fov",
            "lumbar",
            "--spacing",
            "4",
            "--format",
            "both",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "phantoms.json").read_text())
    assert [e["seed"] for e in summary] == [5, 6]
    assert sorted(p.name for p in (tmp_path / "dicom").iterdir()) == ["phantom000005", "phantom000006"]
    assert len(list((tmp_path / "dicom" / "phantom000005").glob("*.dcm"))) == summary[0]["shape"][0]
    assert (tmp_path / "verse" / "rawdata" / "sub-phantom000006" / "sub-phantom000006_ct.nii.gz").is_file()
    assert (
        tmp_path / "verse" / "derivatives" / "sub-phantom000005" / "sub-phantom000005_seg-subreg_ctd.json"
    ).is_file()


def test_matrix_and_slices_and_determinism(tmp_path: Path) -> None:
    args = [
        "phantom",
        "--count",
        "1",
        "--seed",
        "3",
        "--fov",
        "cervical",
        "--matrix",
        "64",
        "--slices",
        "30",
        "--format",
        "verse",
    ]
    a = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path / "a")])
    b = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path / "b")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    sa = json.loads((tmp_path / "a" / "phantoms.json").read_text())[0]
    sb = json.loads((tmp_path / "b" / "phantoms.json").read_text())[0]
    assert sa["shape"] == [30, 64, 64]
    assert sa["centroids_lps_mm"] == sb["centroids_lps_mm"]


def test_bad_arguments_fail_cleanly(tmp_path: Path) -> None:
    for extra in (
        ["--format", "png"],
        ["--fov", "knee"],
        ["--variant", "L9"],
        ["--spacing", "2", "--matrix", "64"],
    ):
        result = CliRunner().invoke(_app(), ["phantom", "--out", str(tmp_path), *extra])
        assert result.exit_code != 0
        assert result.exception is not None and "UserError" in type(result.exception).__name__
        assert "\n" not in str(result.exception)
