"""Hostile input: mutated DICOM sent to the SCP over a raw association, and fed to the loader directly.

The mutations (hypothesis draws which and where): truncated data sets, random byte flips, wrong VRs,
huge element lengths, pixel data of the wrong size, lying Rows/Columns, non-image SOP classes, a
transfer syntax the bytes do not follow, and UIDs that are empty, lettered, over-long or try a path
traversal. Every input must get a failure status, or be stored and then refused by the loader with a
readable :class:`SeriesRejected` reason (which the worker turns into a FAILED job); the SCP keeps
answering; nothing is written outside the spool.

The short variant (default run) sends 30 mutated series (10 instances each) to the SCP and feeds 150 to the
loader; the long one (``slow``, only with ``SPINE_SUITE_LONG=1``) ``SPINE_SUITE_FUZZ_EXAMPLES`` (default
10,000) and ``SPINE_SUITE_LOADER_EXAMPLES`` (default the same). Hypothesis is derandomized: every run
tries the same inputs. A final check sends one series per kind of mutation to ``spine-agent serve``
itself and reads the jobs it made.
"""

from __future__ import annotations

import itertools
import os
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    RLELossless,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from agent.service.scp import SUPPORTED_SOP_CLASSES, SUPPORTED_TRANSFER_SYNTAXES, StorageSCP
from dicom_io.errors import SeriesRejected
from dicom_io.series import load_series
from dicom_io.uids import is_valid_uid
from storage import JobState, Ledger
from storage.spool import Spool
from tests.agent.service.conftest import ct_dataset, scp_settings
from tests.reliability.suite_support import make_agent, variants, wait_for, write_report

pytestmark = pytest.mark.integration

SHORT_EXAMPLES = 30  # SCP: 10 C-STOREs each
SHORT_LOADER_EXAMPLES = 150
LONG_EXAMPLES = int(os.environ.get("SPINE_SUITE_FUZZ_EXAMPLES", "10000"))
LONG_LOADER_EXAMPLES = int(os.environ.get("SPINE_SUITE_LOADER_EXAMPLES", str(LONG_EXAMPLES)))
SLICES = 10

NON_IMAGE_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT (declared, single-frame body)
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
]
BAD_UIDS = [
    "",
    "../../../../tmp/spine-fuzz-pwned",
    "..",
    "/etc/passwd",
    "1.2.840.abc",
    "1.2.3/../../4",
    "1.2.3\\4",
    "1..2.3",
    "01.2.3",
    "1.2.3.",
    " ",
    "1." * 40 + "1",
    "9" * 65,
]
WRONG_VR_TARGETS = [
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "RescaleSlope",
    "BitsAllocated",
    "SOPInstanceUID",
    "SeriesInstanceUID",
]
VRS = ["US", "SS", "UL", "FL", "FD", "DS", "IS", "LO", "UI", "OB", "SQ", "AT", "UN"]
LENGTH_TARGETS = {
    # tag (group, element) -> how explicit VR LE encodes its length (2 or 4 bytes)
    (0x0028, 0x0010): 2,  # Rows US
    (0x0028, 0x0030): 2,  # Pixel Spacing DS
    (0x0020, 0x0032): 2,  # Image Position DS
    (0x0020, 0x000E): 2,  # Series Instance UID
    (0x7FE0, 0x0010): 4,  # Pixel Data OW
}
HUGE = [0xFFFF, 0xFFFE, 0x7FFF, 0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, 0x00010000]

MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 0.999)),
    st.tuples(
        st.just("flip"),
        st.lists(st.tuples(st.floats(0.0, 0.999), st.integers(0, 255)), min_size=1, max_size=8),
    ),
    st.tuples(st.just("huge_length"), st.sampled_from(sorted(LENGTH_TARGETS)), st.sampled_from(HUGE)),
    st.tuples(st.just("wrong_vr"), st.sampled_from(WRONG_VR_TARGETS), st.sampled_from(VRS)),
    st.tuples(st.just("pixel_size"), st.integers(0, 5000)),
    st.tuples(st.just("rows_columns"), st.integers(0, 65535), st.integers(0, 65535)),
    st.tuples(st.just("sop_class"), st.sampled_from(NON_IMAGE_CLASSES)),
    st.tuples(
        st.just("uid"),
        st.sampled_from(["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"]),
        st.one_of(st.sampled_from(BAD_UIDS), st.text(max_size=80)),
    ),
    st.tuples(
        st.just("transfer_syntax"),
        st.sampled_from([JPEGLossless, RLELossless, JPEG2000Lossless, JPEGBaseline8Bit]),
    ),
)


# --- building one mutated instance --------------------------------------------------------------------


@dataclass
class Instance:
    """One instance to send: file meta (what the C-STORE request says) + data set body bytes."""

    sop_class: str
    sop_uid: str
    transfer_syntax: str
    body: bytes
    kind: str = "valid"

    def write(self, path: Path) -> Path:
        meta = Dataset()
        meta.MediaStorageSOPClassUID = self.sop_class
        meta.MediaStorageSOPInstanceUID = self.sop_uid
        meta.TransferSyntaxUID = self.transfer_syntax
        meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.511.99"
        buffer = BytesIO()
        buffer.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(buffer, meta, enforce_standard=False)  # type: ignore[arg-type]
        path.write_bytes(buffer.getvalue() + self.body)
        return path


def _body(ds: Dataset) -> bytes:
    """The data set bytes after the preamble and file meta, as pydicom writes them."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    (group_length,) = struct.unpack("<I", data[140:144])  # (0002,0000) UL right after "DICM"
    return data[144 + group_length :]


_SERIAL = itertools.count(1)


def _uid(kind: int, serial: int, k: int = 0) -> str:
    """Unique, and always 44 characters: a mutation at a relative offset hits the same byte on a replay."""
    return f"2.25.{kind}{k:03d}{serial:035d}"


def valid_series(n: int = SLICES, seed: int = 0) -> tuple[list[Dataset], str, str]:
    """``n`` valid slices of a new series (fixed-length UIDs, fixed pixels for a given seed)."""
    serial = next(_SERIAL)
    study, series, frame = _uid(1, serial), _uid(2, serial), _uid(3, serial)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        pixels = rng.integers(0, 2000, size=(16, 16)).astype(np.int16)
        out.append(
            ct_dataset(
                study_uid=study,
                series_uid=series,
                frame_of_reference_uid=frame,
                position=(-6.4, -6.4, 100.0 - 2.5 * k),
                pixels=pixels,
                instance_number=k + 1,
                sop_uid=_uid(4, serial, k),
            )
        )
    return out, study, series


def instance_of(ds: Dataset, kind: str = "valid") -> Instance:
    return Instance(
        str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID), _body(ds), kind
    )


def _patch_length(body: bytes, tag: tuple[int, int], width: int, value: int) -> bytes | None:
    marker = struct.pack("<HH", *tag)
    at = body.find(marker)
    if at < 0:
        return None
    out = bytearray(body)
    if width == 2:
        out[at + 6 : at + 8] = struct.pack("<H", value & 0xFFFF)
    else:
        out[at + 8 : at + 12] = struct.pack("<I", value & 0xFFFFFFFF)
    return bytes(out)


def mutate(ds: Dataset, mutation: tuple[Any, ...]) -> Instance | None:
    """The mutated instance, or None when the mutation cannot be encoded (hypothesis discards it)."""
    kind = mutation[0]
    inst = instance_of(ds, kind)
    if kind == "truncate":
        inst.body = inst.body[: int(len(inst.body) * mutation[1])]
    elif kind == "flip":
        body = bytearray(inst.body)
        for where, value in mutation[1]:
            body[int(len(body) * where)] = value
        inst.body = bytes(body)
    elif kind == "huge_length":
        patched = _patch_length(inst.body, mutation[1], LENGTH_TARGETS[mutation[1]], mutation[2])
        if patched is None:
            return None
        inst.body = patched
    elif kind == "wrong_vr":
        element = ds[mutation[1]]
        element.VR = mutation[2]
        try:
            inst.body = _body(ds)
        except Exception:
            return None
    elif kind == "pixel_size":
        ds.PixelData = bytes(mutation[1] * 2 + (mutation[1] % 2))
        inst.body = _body(ds)
    elif kind == "rows_columns":
        ds.Rows, ds.Columns = mutation[1], mutation[2]
        inst.body = _body(ds)
    elif kind == "sop_class":
        ds.SOPClassUID = mutation[1]
        inst.body = _body(ds)
        inst.sop_class = mutation[1]
    elif kind == "uid":
        setattr(ds, mutation[1], mutation[2])
        try:
            inst.body = _body(ds)
        except Exception:
            return None
        if mutation[1] == "SOPInstanceUID":
            inst.sop_uid = mutation[2]
    elif kind == "transfer_syntax":
        inst.transfer_syntax = mutation[1]
    return inst


def must_not_load(mutation: tuple[Any, ...]) -> bool:
    """Mutations that always make the series unusable: the loader must refuse them.

    Tolerated (documented in docs/reliability.md): pixel data longer than Rows x Columns (pydicom ignores
    the excess), and a Pixel Data length larger than the bytes present (pydicom reads what is there).
    """
    kind = mutation[0]
    if kind == "rows_columns":
        return (mutation[1], mutation[2]) != (16, 16)
    if kind == "pixel_size":
        return mutation[1] * 2 + (mutation[1] % 2) < 16 * 16 * 2 - 1  # pydicom pads odd lengths by one byte
    return kind in ("sop_class", "transfer_syntax")


def fuzz_settings(examples: int) -> settings:
    """Derandomized (the same inputs every run), no example database, no deadline on a loaded machine."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


def mutated_series(mutation: tuple[Any, ...], which: int) -> tuple[list[Instance], Instance, str, str]:
    """A valid series with slice ``which`` mutated (hypothesis discards mutations that cannot be encoded)."""
    datasets, study, series = valid_series()
    instances = [instance_of(ds) for ds in datasets]
    bad = mutate(datasets[which], mutation)
    assume(bad is not None)
    assert bad is not None
    instances[which] = bad
    return instances, bad, study, series


# --- the SCP over a raw association -------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    result: str  # "status 0xC210", "no context", "stored+rejected", "stored+loaded", ...


class RawSender:
    """A pynetdicom SCU that sends file meta + raw body bytes exactly as written (chunked from file)."""

    def __init__(self, port: int, folder: Path, timeout_s: float = 60.0) -> None:
        self.port = port
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ae = AE(ae_title="TESTSCU")
        for sop_class in [*SUPPORTED_SOP_CLASSES, *NON_IMAGE_CLASSES]:
            self.ae.add_requested_context(sop_class, list(SUPPORTED_TRANSFER_SYNTAXES)[:1])
        for ts in [JPEGLossless, RLELossless, JPEG2000Lossless, JPEGBaseline8Bit]:
            self.ae.add_requested_context(SUPPORTED_SOP_CLASSES[0], ts)
        self.ae.add_requested_context(Verification)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout_s

    def send(self, instances: list[Instance]) -> list[str]:
        """Per instance: "0x0000", "0xC210", ..., or "not sent: <why>" (the SCU or negotiation refused)."""
        assoc = self.ae.associate("127.0.0.1", self.port, ae_title="SPINEAGENT")
        assert assoc.is_established, "the SCP did not accept a plain association (is it alive?)"
        results: list[str] = []
        try:
            for n, inst in enumerate(instances):
                if not assoc.is_established:
                    results.append("association ended")
                    continue
                path = inst.write(self.folder / f"{n}.dcm")
                try:
                    status = assoc.send_c_store(path)
                except (ValueError, TypeError, AttributeError, KeyError, RuntimeError) as exc:
                    results.append(f"not sent: {type(exc).__name__}")
                    continue
                if "Status" not in status:
                    results.append("no status (association ended)")
                    continue
                results.append(f"0x{int(status.Status):04X}")
                if int(status.Status) != 0:
                    assert str(status.get("ErrorComment", "")).strip(), (
                        f"failure {status.Status:04X} without comment"
                    )
        finally:
            if assoc.is_established:
                assoc.release()
        return results

    def echo(self) -> bool:
        assoc = self.ae.associate("127.0.0.1", self.port, ae_title="SPINEAGENT")
        try:
            return bool(assoc.is_established and int(assoc.send_c_echo().Status) == 0)
        finally:
            if assoc.is_established:
                assoc.release()


@pytest.fixture
def chunked_send(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def files_outside(root: Path, allowed: list[Path]) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not any(p.is_relative_to(a) for a in allowed)]


def readable(reason: str) -> bool:
    """One line an admin can read: not empty, no traceback, no control characters, bounded."""
    return bool(reason.strip()) and "Traceback" not in reason and len(reason) <= 300 and reason.isprintable()


def check_loader(series_dir: Path) -> str:
    """Load a stored series: a Volume or a SeriesRejected with a readable reason; anything else fails."""
    try:
        load_series(series_dir, max_instances=100)
    except SeriesRejected as exc:
        assert readable(str(exc)), repr(str(exc))[:500]
        return "stored+rejected"
    return "stored+loaded"


@pytest.fixture
def fuzz_scp(tmp_path: Path, chunked_send: None) -> Iterator[tuple[StorageSCP, RawSender, Path]]:
    root = tmp_path / "agent"
    root.mkdir()
    ledger = Ledger(f"sqlite:///{root / 'ledger.sqlite3'}")
    ledger.upgrade()
    settings = scp_settings(root, stable_age_s=3600.0)
    scp = StorageSCP(settings, ledger, spool=Spool(settings.storage.spool_dir))
    scp.start()
    yield scp, RawSender(scp.port, tmp_path / "outbox"), root
    scp.stop()
    ledger.close()


def _run_scp_fuzz(fuzz_scp: tuple[StorageSCP, RawSender, Path], examples: int) -> Counter[str]:
    scp, sender, root = fuzz_scp
    tally: Counter[str] = Counter()

    @fuzz_settings(examples)
    @given(mutation=MUTATIONS, which=st.integers(0, SLICES - 1))
    @example(mutation=("uid", "SeriesInstanceUID", "../../../../tmp/spine-fuzz-pwned"), which=1)
    @example(mutation=("uid", "StudyInstanceUID", "/etc/spine-fuzz-pwned"), which=0)
    @example(mutation=("uid", "SOPInstanceUID", "../spine-fuzz-pwned"), which=2)
    @example(mutation=("uid", "SeriesInstanceUID", ""), which=3)
    @example(mutation=("uid", "SOPInstanceUID", "1." * 40 + "1"), which=4)
    def one(mutation: tuple[Any, ...], which: int) -> None:
        instances, bad, study, series = mutated_series(mutation, which)
        statuses = sender.send(instances)
        path_uid = mutation[0] == "uid" and mutation[1] != "FrameOfReferenceUID"
        if path_uid and not is_valid_uid(mutation[2].strip(" \x00")):
            # a UID that could become a path part must never be stored
            assert statuses[which] != "0x0000", mutation
        if all(s == "0x0000" for s in statuses):
            outcome = check_loader(scp.spool.incoming_dir(study, series))
            assert not (outcome == "stored+loaded" and must_not_load(mutation)), mutation
        elif statuses[which] == "0x0000":
            outcome = "stored (others refused)"
        else:
            outcome = statuses[which]
        tally[f"{bad.kind}: {outcome}"] += 1

    one()
    assert sender.echo(), "the SCP stopped answering"
    outside = files_outside(root, [scp.spool.root, root / "ledger.sqlite3"])
    outside = [p for p in outside if not p.name.startswith("ledger.sqlite3")]
    assert outside == []
    assert not list(Path("/tmp").glob("spine-fuzz-pwned*"))
    assert not list(root.parent.rglob("*spine-fuzz-pwned*")), "a path traversal UID became a path"
    return tally


@pytest.mark.parametrize(
    "examples",
    variants(SHORT_EXAMPLES, LONG_EXAMPLES),
)
def test_scp_survives_mutated_instances(fuzz_scp: tuple[StorageSCP, RawSender, Path], examples: int) -> None:
    t0 = time.monotonic()
    tally = _run_scp_fuzz(fuzz_scp, examples)
    write_report(
        "fuzz-scp",
        [
            {
                "examples": sum(tally.values()),
                "seconds": round(time.monotonic() - t0, 1),
                "outcomes": dict(tally),
            }
        ],
    )


def spooled(scp: StorageSCP) -> list[Path]:
    return sorted(p for p in scp.spool.root.rglob("*") if p.is_file())


def test_store_request_with_an_empty_sop_instance_uid_is_answered(
    fuzz_scp: tuple[StorageSCP, RawSender, Path],
) -> None:
    """Issue 15: the request goes out without Affected SOP Instance UID; it must still get a status."""
    scp, _, root = fuzz_scp
    sender = RawSender(scp.port, root.parent / "outbox-empty", timeout_s=5.0)
    instances, _, _, _ = mutated_series(("uid", "SOPInstanceUID", ""), 0)
    statuses = sender.send(instances[:3])  # the empty one, then two valid ones on the same association
    assert statuses == ["0xC210", "0x0000", "0x0000"], statuses  # unanswered: "no status (...)"
    assert [p.name for p in spooled(scp)] == sorted(f"{inst.sop_uid}.dcm" for inst in instances[1:3])
    assert sender.echo(), "the SCP stopped answering"


@pytest.mark.parametrize("bad_uid", [u for u in BAD_UIDS if u], ids=repr)
def test_store_request_with_an_invalid_sop_instance_uid_is_refused(
    fuzz_scp: tuple[StorageSCP, RawSender, Path], bad_uid: str
) -> None:
    """Lettered, over-long, path-traversal SOP Instance UIDs: a failure status, nothing spooled."""
    scp, sender, root = fuzz_scp
    instances, _, _, _ = mutated_series(("uid", "SOPInstanceUID", bad_uid), 0)
    statuses = sender.send(instances[:2])
    if statuses[0].startswith("not sent"):
        # pynetdicom's SCU will not put this one in a request (over-long, several values): the data set
        # alone carries it, under a valid request UID
        instances[0].sop_uid = _uid(9, next(_SERIAL))
        statuses = sender.send(instances[:2])
    assert statuses[0] == "0xC210" and statuses[1] == "0x0000", statuses
    assert [p.name for p in spooled(scp)] == [f"{instances[1].sop_uid}.dcm"]
    assert not list(root.parent.rglob("*spine-fuzz-pwned*"))


# --- the loader directly ------------------------------------------------------------------------------


def test_loader_reason_for_a_huge_element_length_is_one_readable_line(tmp_path: Path) -> None:
    datasets, _, _ = valid_series()
    instances = [instance_of(ds) for ds in datasets]
    bad = mutate(datasets[0], ("huge_length", (0x0028, 0x0030), 0xFFFF))
    assert bad is not None
    instances[0] = bad
    for n, inst in enumerate(instances):
        inst.write(tmp_path / f"{n}.dcm")
    with pytest.raises(SeriesRejected) as caught:
        load_series(tmp_path, max_instances=100)
    assert readable(str(caught.value)), repr(str(caught.value))


def _corrupt_vr(body: bytes) -> bytes:
    at = body.find(struct.pack("<HH", 0x0028, 0x1052))  # Rescale Intercept, DS
    assert at > 0
    return body[: at + 4] + b"\x44\x00" + body[at + 6 :]


@pytest.mark.parametrize(
    ("mutation", "which"),
    [
        pytest.param(("corrupt_vr",), 0, id="corrupt-VR-NotImplementedError"),
        pytest.param(("flip", [(0.4453125, 0)]), 1, id="flip-TypeError"),
        pytest.param(("flip", [(0.447265625, 1)]), 1, id="flip-BytesLengthException"),
    ],
)
def test_loader_refuses_a_corrupt_header_with_series_rejected(
    tmp_path: Path, mutation: tuple[Any, ...], which: int
) -> None:
    if mutation[0] == "corrupt_vr":
        datasets, _, _ = valid_series()
        instances = [instance_of(ds) for ds in datasets]
        instances[which].body = _corrupt_vr(instances[which].body)
    else:
        instances, _, _, _ = mutated_series(mutation, which)
    for n, inst in enumerate(instances):
        inst.write(tmp_path / f"{n}.dcm")
    with pytest.raises(SeriesRejected):
        load_series(tmp_path, max_instances=100)


@pytest.mark.parametrize(
    "examples",
    variants(SHORT_LOADER_EXAMPLES, LONG_LOADER_EXAMPLES),
)
def test_loader_refuses_mutated_series_with_a_reason(tmp_path: Path, examples: int) -> None:
    t0 = time.monotonic()
    tally: Counter[str] = Counter()
    counter = iter(range(10**9))

    @fuzz_settings(examples)
    @given(mutation=MUTATIONS, which=st.integers(0, SLICES - 1))
    def one(mutation: tuple[Any, ...], which: int) -> None:
        instances, bad, _, _ = mutated_series(mutation, which)
        folder = tmp_path / f"series-{next(counter)}"
        folder.mkdir()
        for n, inst in enumerate(instances):
            inst.write(folder / f"{n}.dcm")
        outcome = check_loader(folder)
        assert not (outcome == "stored+loaded" and must_not_load(mutation)), mutation
        tally[f"{bad.kind}: {outcome}"] += 1

    one()
    write_report(
        "fuzz-loader",
        [
            {
                "examples": sum(tally.values()),
                "seconds": round(time.monotonic() - t0, 1),
                "outcomes": dict(tally),
            }
        ],
    )


# --- one of each against spine-agent serve --------------------------------------------------------------


FIXED = [
    ("truncate", 0.1),
    ("truncate", 0.6),
    ("pixel_size", 100),
    ("huge_length", (0x0028, 0x0010), 0xFFFF),
    ("wrong_vr", "Rows", "DS"),
    ("pixel_size", 7),
    ("rows_columns", 4096, 4096),
    ("sop_class", "1.2.840.10008.5.1.4.1.1.2.1"),
    ("uid", "SeriesInstanceUID", "../../../../tmp/spine-fuzz-pwned"),
    ("uid", "SOPInstanceUID", "1." * 40 + "1"),
    ("uid", "StudyInstanceUID", "1.2.840.abc"),
    ("transfer_syntax", JPEGLossless),
]


def test_serve_gives_every_hostile_series_a_status_or_a_failed_job(
    tmp_path: Path, chunked_send: None
) -> None:
    agent = make_agent(tmp_path / "agent", dicom={"allowed_calling_aes": ["TESTSCU"]}, engine_delay_s=0.0)
    agent.start()
    sender = RawSender(agent.dicom_port, tmp_path / "outbox")
    stored_series: dict[str, str] = {}
    refused: list[str] = []
    try:
        for n, mutation in enumerate(FIXED):
            datasets, _, series = valid_series(seed=n)
            instances = [instance_of(ds) for ds in datasets]
            bad = mutate(datasets[1], mutation)
            assert bad is not None
            instances[1] = bad
            statuses = sender.send(instances)
            if statuses[1] == "0x0000":
                stored_series[series] = str(mutation)
            else:
                refused.append(f"{mutation}: {statuses[1]}")
        ledger = agent.ledger()

        def finished() -> bool:
            jobs = ledger.list_jobs(limit=1000)
            done = {
                j.series.series_instance_uid for j in jobs if j.state in (JobState.SUCCEEDED, JobState.FAILED)
            }
            return set(stored_series) <= done

        wait_for(finished, 60, 0.5, what="a job for every stored hostile series")
        jobs = {j.series.series_instance_uid: j for j in ledger.list_jobs(limit=1000)}
        not_failed = {
            stored_series[uid]: (jobs[uid].state.value, jobs[uid].failure_reason)
            for uid in stored_series
            if jobs[uid].state != JobState.FAILED
        }
        assert not_failed == {}
        for uid in stored_series:
            reason = str(jobs[uid].failure_reason)
            assert reason and "Traceback" not in reason and "\n" not in reason, reason
        assert agent.alive and sender.echo()
        own = {"agent.toml", "agent.log", "ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"}
        outside = [p for p in files_outside(tmp_path / "agent", [agent.spool]) if p.name not in own]
        assert outside == []
        assert not list(Path("/tmp").glob("spine-fuzz-pwned*"))
        assert not list(tmp_path.rglob("*spine-fuzz-pwned*")), "a path traversal UID became a path"
        write_report(
            "fuzz-serve",
            [
                {
                    "inputs": len(FIXED),
                    "refused_with_status": len(refused),
                    "failed_jobs": len(stored_series),
                    "agent_alive": agent.alive,
                }
            ],
        )
        ledger.close()
    finally:
        agent.kill()
