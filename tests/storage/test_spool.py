"""Spool paths, UID grammar and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_io.errors import InvalidUID
from dicom_io.uids import check_uid, is_valid_uid, uid_digest
from storage.spool import Spool, atomic_write, atomic_write_bytes


@pytest.mark.parametrize("uid", ["0", "1.2.840.10008.5.1.4.1.1.2", "2.25.0", "1." + "9" * 62])
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid) and check_uid(uid) == uid


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "1.2.03",
        "01.2",
        "1..2",
        "1.2.",
        ".1",
        "1.2.a",
        "1.2/3",
        "../1.2",
        "1.2 ",
        "1." + "9" * 63,
        None,
        12,
    ],
)
def test_invalid_uids(uid: object) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(InvalidUID):
        check_uid(uid, "Series Instance UID")


def test_uid_digest_is_short_and_stable() -> None:
    assert uid_digest("1.2.3") == uid_digest("1.2.3") != uid_digest("1.2.4")
    assert len(uid_digest("1.2.3")) == 12


def test_paths(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.incoming_relpath("1.2", "1.2.3") == "incoming/1.2/1.2.3"
    assert spool.instance_path("1.2", "1.2.3", "1.2.3.4") == tmp_path / "spool/incoming/1.2/1.2.3/1.2.3.4.dcm"
    assert spool.output_dir(7) == tmp_path / "spool/outgoing/7"
    assert spool.resolve("incoming/1.2/1.2.3") == spool.incoming_dir("1.2", "1.2.3")
    for bad in ("../etc", "/etc/passwd", "incoming/../../x", ""):
        with pytest.raises(ValueError):
            spool.resolve(bad)
    with pytest.raises(InvalidUID):
        spool.instance_path("1.2", "1.2/../..", "1.2.3")
    with pytest.raises(ValueError):
        spool.output_dir(0)
    assert spool.relative(spool.output_dir(7)) == spool.output_relpath(7) == "outgoing/7"
    assert spool.relative(spool.incoming_dir("1.2", "1.3")) == "incoming/1.2/1.3"
    for outside in (tmp_path, tmp_path / "spool", tmp_path / "spool/../elsewhere"):
        with pytest.raises(ValueError, match="not inside the spool"):
            spool.relative(outside)


def test_atomic_write_replaces_and_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a.dcm"
    assert atomic_write(target, b"first") == 5
    assert atomic_write(target, [b"sec", b"ond"]) == 6
    assert target.read_bytes() == b"second"

    def failing() -> object:
        yield b"partial"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, failing())  # type: ignore[arg-type]
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm"]

    nested = tmp_path / "new" / "deeper" / "b.json"
    assert atomic_write_bytes(nested, b"{}") == 2 and nested.read_bytes() == b"{}"


def test_free_space_and_stale_temp_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.free_bytes() > 0  # works before the root exists
    spool.create()
    assert spool.has_room(0) and not spool.has_room(spool.free_bytes() + 10**12)
    folder = spool.incoming_dir("1.2", "1.3")
    folder.mkdir(parents=True)
    stale = folder / ".1.4.dcm.abc.tmp"
    fresh = folder / ".1.5.dcm.def.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (1, 1))
    assert spool.remove_stale_temp_files(older_than_s=3600) == 1
    assert not stale.exists() and fresh.exists()
