"""What one association reports, file by file, and why an association fails: the C-STORE SCU
(agent.service.sender.send_files) against an in-process pynetdicom SCP on a held loopback port.

Each test judges the returned results (path, SOP Instance UID, status, reason) or the exception's message
as an operator would read them in the ledger and the log; the SCP decides what happens to each instance.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association

from agent.service import sender
from agent.service.sender import AssociationFailed, SendOutcome, StoreResult, send_files
from tests.dicom_io.ct_series import CTSeries, write_seg
from tests.support import free_port

Handler = Callable[[Any], Any]


class SCP:
    """A Storage SCP for ``classes`` (CT by default) whose C-STORE answer is ``handle(event)``."""

    def __init__(self, handle: Handler, classes: tuple[str, ...] = (CTImageStorage,), **options: Any) -> None:
        self.port = free_port()
        self.handle = handle
        self.transfer_syntaxes: list[str] = []
        ae = AE(ae_title="DEST")
        for name, value in options.items():
            setattr(ae, name, value)
        for sop_class in classes:
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
        server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        assert server is not None
        self.server = server

    def _on_store(self, event: Any) -> Any:
        self.transfer_syntaxes.append(str(event.context.transfer_syntax))
        return self.handle(event)

    @property
    def address(self) -> str:
        return f"DEST@127.0.0.1:{self.port}"


@pytest.fixture
def make_scp() -> Iterator[Callable[..., SCP]]:
    started: list[SCP] = []

    def make(handle: Handler = lambda event: 0x0000, **kwargs: Any) -> SCP:
        started.append(SCP(handle, **kwargs))
        return started[-1]

    yield make
    for scp in started:
        scp.server.shutdown()


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_the_summary_counts_and_names_the_first_three_failures() -> None:
    results = (
        StoreResult(Path("/out/a.dcm"), "1", 0x0000),
        StoreResult(Path("/out/b.dcm"), "2", 0xA700, "out of resources"),
        StoreResult(Path("/out/c.dcm"), "3", None),
        StoreResult(Path("/out/d.dcm"), "4", 0xC000),
        StoreResult(Path("/out/e.dcm"), "5", 0xA900, "a fourth failure is not listed"),
    )
    assert SendOutcome("DEST@h:104", results).summary() == (
        "1/5 stored at DEST@h:104; b.dcm: status 0xA700 (out of resources); c.dcm: no response; "
        "d.dcm: status 0xC000"
    )
    assert SendOutcome("DEST@h:104", results[:1]).summary() == "1/1 stored at DEST@h:104"


def test_nothing_to_send_still_names_the_destination(ct_series: CTSeries) -> None:
    skip = {_uid(ct_series.files[0])}
    outcome = send_files("X", "127.0.0.1", 9, ct_series.files[:1], calling_ae="A", skip_instances=skip)
    assert outcome.destination == "X@127.0.0.1:9" and outcome.results == ()


def test_each_file_has_its_status_and_reason(
    make_scp: Callable[..., SCP], ct_series: CTSeries, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stored; refused with an Error Comment (kept on the result, at DEBUG only: it is the peer's free text
    and could hold patient data); a SOP Class the SCP does not take; not DICOM at all."""
    full = ct_series.files[1]

    def handle(event: Any) -> Any:
        if str(event.request.AffectedSOPInstanceUID) == _uid(full):
            answer = Dataset()
            answer.Status = 0xA700
            answer.ErrorComment = "disk full for DOE^JANE"
            return answer
        return 0x0000

    scp = make_scp(handle)
    seg = write_seg(ct_series, tmp_path / "seg.dcm")
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    stored: list[str] = []
    ct = ct_series.files[0]

    with caplog.at_level(logging.DEBUG, logger="agent.service.sender"):
        outcome = send_files(
            "DEST", "127.0.0.1", scp.port, [ct, full, seg, junk], calling_ae="AGENT", on_stored=stored.append
        )

    unreadable, *sent = outcome.results
    assert (unreadable.path, unreadable.sop_instance_uid, unreadable.status) == (junk, None, None)
    assert str(unreadable.error).startswith("not a readable DICOM file: ")
    assert sent == [
        StoreResult(ct, _uid(ct), 0x0000, None),  # no Error Comment: no reason
        StoreResult(full, _uid(full), 0xA700, "Refused: Out of Resources", "disk full for DOE^JANE"),
        StoreResult(seg, _uid(seg), 0x0122, "SOP Class not accepted by the peer"),
    ]
    assert stored == [_uid(ct)]
    mine = [r for r in caplog.records if r.name == "agent.service.sender"]
    info = [r.getMessage() for r in mine if r.levelno >= logging.INFO]
    assert info == [f"C-STORE to {scp.address}: {outcome.summary()}"]
    assert "notes.txt: no response" in info[0] and "status 0xA700 (Refused: Out of Resources)" in info[0]
    assert "DOE^JANE" not in info[0]
    debug = [r.getMessage() for r in mine if r.levelno == logging.DEBUG and "DOE^JANE" in r.getMessage()]
    assert debug == [f"C-STORE of {_uid(full)}: status 0xA700, Error Comment 'disk full for DOE^JANE'"]
    assert outcome.summary().startswith(
        f"1/4 stored at {scp.address}; notes.txt: no response (not a readable"
    )


def test_a_store_the_peer_aborts_has_no_response(make_scp: Callable[..., SCP], ct_series: CTSeries) -> None:
    files = ct_series.files[:2]

    def handle(event: Any) -> Any:
        if str(event.request.AffectedSOPInstanceUID) == _uid(files[1]):
            event.assoc.abort()
        return 0x0000

    scp = make_scp(handle)
    outcome = send_files("DEST", "127.0.0.1", scp.port, files, calling_ae="AGENT")
    assert outcome.results == (
        StoreResult(files[0], _uid(files[0]), 0x0000, None),
        StoreResult(files[1], _uid(files[1]), None, "no C-STORE response (timeout or abort)"),
    )


def test_files_after_the_association_is_lost_are_reported_unsent(
    make_scp: Callable[..., SCP], ct_series: CTSeries
) -> None:
    files = ct_series.files[:3]
    scp = make_scp()

    def on_stored(uid: str) -> None:
        # The peer aborts right after the first Success; wait until our side has seen the A-ABORT.
        (ours,) = [t for t in threading.enumerate() if isinstance(t, Association) and t.is_requestor]
        for theirs in scp.server.active_associations:
            theirs.abort()
        ours.join(30)  # the requestor's thread ends once the abort is processed
        assert not ours.is_established

    outcome = send_files("DEST", "127.0.0.1", scp.port, files, calling_ae="AGENT", on_stored=on_stored)
    assert outcome.results == (
        StoreResult(files[0], _uid(files[0]), 0x0000, None),
        StoreResult(files[1], _uid(files[1]), None, "association lost before sending"),
        StoreResult(files[2], _uid(files[2]), None, "association lost before sending"),
    )


def test_a_file_removed_while_sending_is_reported_and_the_rest_is_sent(
    make_scp: Callable[..., SCP], ct_series: CTSeries, tmp_path: Path
) -> None:
    files = []
    for n, source in enumerate(ct_series.files[:3]):
        files.append(tmp_path / f"{n}.dcm")
        files[-1].write_bytes(source.read_bytes())
    uids = [_uid(f) for f in files]
    scp = make_scp()

    def on_stored(uid: str) -> None:
        if uid == uids[0]:
            files[1].unlink()  # e.g. removed by hand between the scan and its C-STORE

    outcome = send_files("DEST", "127.0.0.1", scp.port, files, calling_ae="AGENT", on_stored=on_stored)
    first, gone, last = outcome.results
    assert first == StoreResult(files[0], uids[0], 0x0000) and last == StoreResult(files[2], uids[2], 0x0000)
    assert (gone.path, gone.sop_instance_uid, gone.status) == (files[1], uids[1], None)
    assert str(gone.error).startswith("FileNotFoundError: ")


def test_a_compressed_file_is_sent_as_it_is(
    make_scp: Callable[..., SCP], ct_series: CTSeries, tmp_path: Path
) -> None:
    dataset = dcmread(ct_series.files[0])
    dataset.compress(RLELossless)
    rle = tmp_path / "rle.dcm"
    dataset.save_as(rle)
    scp = make_scp()
    outcome = send_files("DEST", "127.0.0.1", scp.port, [rle, ct_series.files[1]], calling_ae="AGENT")
    assert outcome.all_succeeded
    assert scp.transfer_syntaxes[0] == RLELossless  # not decompressed; the uncompressed one may be either
    assert scp.transfer_syntaxes[1] in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def test_one_association_takes_at_most_128_presentation_contexts(tmp_path: Path) -> None:
    def items(n: int) -> list[Any]:
        return [
            sender._Item(tmp_path / f"{i}.dcm", f"1.2.3.{i}", f"1.2.4.{i}", RLELossless) for i in range(n)
        ]

    assert len(sender._contexts(items(128))) == 128  # one compressed syntax per class: one context each
    with pytest.raises(ValueError, match=r"^129 presentation contexts needed, DICOM allows 128$"):
        sender._contexts(items(129))


def test_a_rejected_association_says_who_rejected_it_and_why(
    make_scp: Callable[..., SCP], ct_series: CTSeries
) -> None:
    scp = make_scp(require_called_aet=True)
    with pytest.raises(AssociationFailed) as failed:
        send_files("WRONG", "127.0.0.1", scp.port, ct_series.files[:1], calling_ae="AGENT")
    assert str(failed.value) == (
        f"WRONG@127.0.0.1:{scp.port} rejected the association "
        "(Rejected Permanent, source Service User: Called AE title not recognised)"
    )


def test_a_transient_rejection_says_why(make_scp: Callable[..., SCP], ct_series: CTSeries) -> None:
    scp = make_scp(maximum_associations=1)
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(CTImageStorage)
    held = holder.associate("127.0.0.1", scp.port, ae_title="DEST")
    assert held.is_established
    try:
        with pytest.raises(AssociationFailed) as failed:
            send_files("DEST", "127.0.0.1", scp.port, ct_series.files[:1], calling_ae="AGENT")
    finally:
        held.release()
    assert str(failed.value) == (
        f"DEST@127.0.0.1:{scp.port} rejected the association "
        "(Rejected Transient, source Service Provider (Presentation): Local limit exceeded)"
    )


def test_a_peer_that_takes_none_of_the_classes_is_a_failed_association(
    make_scp: Callable[..., SCP], ct_series: CTSeries
) -> None:
    scp = make_scp(classes=(MRImageStorage,))
    with pytest.raises(AssociationFailed) as failed:
        send_files("DEST", "127.0.0.1", scp.port, ct_series.files[:1], calling_ae="AGENT")
    assert str(failed.value) == f"{scp.address} accepted none of the proposed presentation contexts"


def test_a_peer_that_never_answers_the_store_times_out(
    make_scp: Callable[..., SCP], ct_series: CTSeries
) -> None:
    release = threading.Event()
    scp = make_scp(lambda event: (release.wait(30), 0x0000)[1])
    try:
        outcome = send_files(
            "DEST", "127.0.0.1", scp.port, ct_series.files[:1], calling_ae="AGENT", timeout_s=1
        )
    finally:
        release.set()
    assert outcome.results[0].status is None and outcome.results[0].error is not None


def test_a_peer_that_never_answers_the_association_request_times_out(ct_series: CTSeries) -> None:
    port = free_port()
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", port))
    silent.listen(1)  # the kernel completes the TCP handshake; nobody ever reads or answers
    try:
        with pytest.raises(AssociationFailed, match="no association with DEST@127.0.0.1"):
            send_files("DEST", "127.0.0.1", port, ct_series.files[:1], calling_ae="AGENT", timeout_s=1)
    finally:
        silent.close()


def test_a_file_pynetdicom_will_not_send_is_not_left_in_doubt(ct_series: CTSeries, tmp_path: Path) -> None:
    """A compressed file whose transfer syntax the peer refused (it takes the class uncompressed only):
    pynetdicom raises before the request goes out, so the destination cannot hold it. It was marked in
    doubt just before (``on_sending``) and is cleared again (``on_not_stored``), so the next attempt does
    not ask the destination about an instance it never saw."""
    dataset = dcmread(ct_series.files[0])
    dataset.compress(RLELossless)
    rle = tmp_path / "rle.dcm"
    dataset.save_as(rle)
    port = free_port()
    ae = AE(ae_title="DEST")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    handlers = [(evt.EVT_C_STORE, lambda event: 0x0000)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    calls: list[tuple[str, str]] = []
    try:
        outcome = send_files(
            "DEST", "127.0.0.1", port, [rle, ct_series.files[1]], calling_ae="AGENT",
            on_sending=lambda uid: calls.append(("sending", uid)),
            on_stored=lambda uid: calls.append(("stored", uid)),
            on_not_stored=lambda uid: calls.append(("not stored", uid)),
        )
    finally:
        server.shutdown()
    refused, plain = outcome.results
    assert (refused.status, refused.unsent, plain.status) == (None, True, 0x0000)
    assert str(refused.error).startswith("not sent: ValueError: "), refused.error
    first, second = _uid(rle), _uid(ct_series.files[1])
    assert calls == [("sending", first), ("not stored", first), ("sending", second), ("stored", second)]
