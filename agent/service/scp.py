"""The Storage SCP the PACS sends CT series to (pynetdicom).

What it accepts (at association negotiation; anything else is refused there, not accepted and dropped):

* SOP classes: CT Image Storage and Enhanced CT Image Storage, plus Verification (C-ECHO);
* transfer syntaxes: Implicit/Explicit VR Little Endian, Deflated Explicit VR Little Endian,
  JPEG Lossless (Process 14 and its Selection Value 1), JPEG-LS (lossless, near-lossless),
  JPEG 2000 (lossless, lossy) and RLE Lossless (:data:`SUPPORTED_TRANSFER_SYNTAXES`).

Who may associate: ``dicom.allowed_calling_aes`` (empty = any), ``dicom.allowed_hosts`` (empty = any),
and with ``dicom.require_called_ae`` the called AE title must be ours. A peer failing a check gets a
proper A-ASSOCIATE-RJ (rejected-permanent, service-user, with the diagnostic that fits) and one WARNING
line naming the reason.

How many: ``dicom.max_associations`` counts associations *admitted* by this SCP that are still alive;
the check runs in the same hook, so a burst of peers gets exactly the free slots and every other one a
transient A-ASSOCIATE-RJ (local limit exceeded) and one WARNING line. Connections that have not yet sent
their request, or that are being rejected, do not hold a slot (pynetdicom's own count includes them, so
its limit is set well above ours and only guards against floods). A connection that sends no
association request within ``dicom.idle_timeout_s`` is closed; an association silent between two
messages for ``dicom.network_timeout_s`` is aborted.

A C-STORE is answered 0x0000 only after the instance is durable on disk
(``spool/incoming/<study>/<series>/<sop>.dcm``, see :mod:`storage.spool`) and counted in the ledger.
The handler is small: check, write, record, return. Every failure is a DICOM status with an Error
Comment and a log line: 0xA700 (no room: below ``storage.disk_reserve_mb`` free or the disk filled up),
0xC210 (cannot understand: no readable header, a UID breaking the DICOM grammar, SOP Instance UID not
matching the request), 0xC211 (anything else, e.g. the ledger unreachable).

A C-STORE request without an Affected SOP Instance UID (what a sender writes for an instance whose SOP
Instance UID is empty; pynetdicom also reads a zero-length one as absent) or Affected SOP Class UID is not
a valid request to pynetdicom, which drops it unanswered and leaves the peer waiting for its DIMSE
timeout. :meth:`StorageSCP._on_dimse_recv` answers such a request itself, 0xC210 with an Error Comment,
as the message arrives; nothing is written and the association goes on.

An instance re-sent with the same bytes as already recorded (SHA-256) is answered Success and changes
nothing in the ledger (see :meth:`storage.ledger.Ledger.record_instance`): re-sending a series whose job
is queued does not open a new version.

Logging: nothing of the patient at any level; UIDs appear at INFO and above only as
:func:`dicom_io.uids.uid_digest` digests, in full at DEBUG.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO
from typing import Any, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from agent.errors import UserError
from agent.service.redaction import digest_uids
from agent.web import metrics
from config import ConfigError, Settings
from dicom_io.errors import InvalidUID
from dicom_io.uids import check_uid, uid_digest
from storage.ledger import Ledger, utcnow
from storage.spool import Spool, is_no_space_error

log = logging.getLogger(__name__)

#: Storage SOP classes the agent processes; every other one is refused at negotiation.
SUPPORTED_SOP_CLASSES: tuple[str, ...] = (CTImageStorage, EnhancedCTImageStorage)

#: Transfer syntaxes accepted for them; every one is decodable by pydicom + pylibjpeg (the loader's path).
SUPPORTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

# C-STORE statuses (PS3.4 B.2.3): we only ever answer these.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_PROCESSING_FAILURE = 0xC211

# A-ASSOCIATE-RJ parameters (PS3.8 9.3.4): result, source, diagnostic.
_REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), limit
_REJECT_NO_REASON = (0x01, 0x01, 0x01)
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)
_REJECT_CALLED_AE = (0x01, 0x01, 0x07)

#: Error Comment (0000,0902) is an LO: at most 64 characters.
_ERROR_COMMENT_MAX = 64

#: Connections pynetdicom may hold beyond ``dicom.max_associations`` (requests being read or rejected).
_PYNETDICOM_HEADROOM = 64

#: Size of one instance assumed before any arrived, for the readiness check (a 512x512 CT slice is 0.5 MiB).
DEFAULT_INSTANCE_BYTES = 1024 * 1024


class _Refusal(Exception):
    """Raised inside the store handler: answer ``status`` with ``comment`` (safe to log at INFO)."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass
class _AssociationTally:
    """What one association did, logged once when it ends."""

    peer: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    refused: int = 0
    nbytes: int = 0
    series: set[str] = field(default_factory=set)


def build_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server-side TLS context of ``settings.dicom.tls`` (None when TLS is off).

    With ``client_ca`` set, clients must present a certificate signed by it. Raises
    :class:`config.ConfigError` naming the file when a certificate, key or CA cannot be loaded.
    """
    tls = settings.dicom.tls
    if not tls.enabled:
        return None
    assert tls.certificate is not None and tls.private_key is not None  # enforced by TlsSettings
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(tls.certificate), keyfile=str(tls.private_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"dicom.tls: cannot load certificate {tls.certificate} / key {tls.private_key}: {exc}"
        ) from None
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(tls.client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"dicom.tls.client_ca: cannot load {tls.client_ca}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


class StorageSCP:
    """The agent's Storage SCP; ``start()`` returns at once, ``stop()`` ends it.

    ``spool`` is the agent's one spool (built once by the service); ``clock`` gives the receive time that
    goes into the ledger (tests pass a fixed clock).
    """

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        spool: Spool,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.spool = spool
        self.clock = clock
        self._reserve_bytes = settings.storage.disk_reserve_mb * 1024 * 1024
        self._allowed_aes = frozenset(settings.dicom.allowed_calling_aes)
        self._allowed_hosts = frozenset(settings.dicom.allowed_hosts)
        self._server: ThreadedAssociationServer | None = None
        self._tallies: dict[int, _AssociationTally] = {}
        self._admitted: dict[int, Association] = {}
        self._lock = threading.Lock()
        #: Largest instance stored since start: the room the next one needs (see :meth:`space_refusal`).
        self.largest_instance_bytes = DEFAULT_INSTANCE_BYTES

    # --- life cycle -----------------------------------------------------------------------------------

    def build_ae(self) -> AE:
        """The pynetdicom AE with our contexts and limits (access control is in the EVT_REQUESTED hook)."""
        cfg = self.settings.dicom
        ae = AE(ae_title=cfg.ae_title)
        # Our own count in _on_requested enforces max_associations; pynetdicom's counts every thread.
        ae.maximum_associations = cfg.max_associations + _PYNETDICOM_HEADROOM
        ae.acse_timeout = cfg.idle_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        # Our own checks in _on_requested give the logged reason; pynetdicom's would reject silently.
        ae.require_calling_aet = []
        ae.require_called_aet = False
        for sop_class in SUPPORTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(SUPPORTED_TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        return ae

    def start(self) -> None:
        """Listen on ``dicom.bind_address:dicom.port`` in background threads.

        Raises :class:`agent.errors.UserError` when the port cannot be bound and
        :class:`config.ConfigError` when TLS files cannot be loaded.
        """
        if self._server is not None:
            raise RuntimeError("the SCP is already running")
        cfg = self.settings.dicom
        ssl_context = build_tls_context(self.settings)
        self.spool.create()
        self.spool.remove_stale_temp_files()
        if not self._allowed_aes:
            log.warning("dicom.allowed_calling_aes is empty: any calling AE title may store instances")
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
        ]
        ae = self.build_ae()
        try:
            server = ae.start_server(
                (cfg.bind_address, cfg.port), block=False, evt_handlers=handlers, ssl_context=ssl_context
            )
        except OSError as exc:
            raise UserError(
                f"dicom.port: cannot listen on {cfg.bind_address}:{cfg.port}: {exc.strerror or exc}"
            ) from None
        assert server is not None  # block=False always returns the server
        self._server = server
        log.info(
            "DICOM SCP %s listening on %s:%d%s (calling AEs: %s; hosts: %s)",
            cfg.ae_title,
            cfg.bind_address,
            self.port,
            " with TLS" if ssl_context else "",
            ", ".join(sorted(self._allowed_aes)) or "any",
            ", ".join(sorted(self._allowed_hosts)) or "any",
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop listening; open associations get ``grace_s`` seconds to finish, then are aborted.

        An aborted sender retries the instances it got no success for; nothing half-written remains
        (idempotent).
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        deadline = time.monotonic() + grace_s
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            log.warning("aborting association from %s at shutdown", _peer(assoc))
            assoc.abort()
        log.info("DICOM SCP stopped")

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        """The port actually listened on (useful when the configured port is taken from a free-port probe)."""
        if self._server is None:
            return self.settings.dicom.port
        return int(self._server.server_address[1])

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- association events ---------------------------------------------------------------------------

    def _access_refusal(self, assoc: Association) -> tuple[tuple[int, int, int], str] | None:
        """The A-ASSOCIATE-RJ parameters and the reason, or None when the peer may associate."""
        rq = assoc.requestor.primitive
        calling = str(getattr(rq, "calling_ae_title", "")).strip()
        called = str(getattr(rq, "called_ae_title", "")).strip()
        host = assoc.requestor.address
        if self._allowed_hosts and host not in self._allowed_hosts:
            return _REJECT_NO_REASON, f"host {host} is not in dicom.allowed_hosts"
        if self._allowed_aes and calling not in self._allowed_aes:
            return _REJECT_CALLING_AE, f"calling AE {calling!r} is not in dicom.allowed_calling_aes"
        if self.settings.dicom.require_called_ae and called != self.settings.dicom.ae_title:
            return _REJECT_CALLED_AE, f"called AE {called!r} is not ours ({self.settings.dicom.ae_title!r})"
        return None

    def _admit(self, assoc: Association) -> bool:
        """Take one of the ``dicom.max_associations`` slots for ``assoc``; False when none is free."""
        with self._lock:
            for key, other in list(self._admitted.items()):
                if not other.is_alive() or other.is_released or other.is_aborted:
                    del self._admitted[key]
            if len(self._admitted) >= self.settings.dicom.max_associations:
                return False
            self._admitted[id(assoc)] = assoc
            return True

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        refusal = self._access_refusal(assoc)
        if refusal is None:
            if self._admit(assoc):
                _bind_first(assoc, evt.EVT_DIMSE_RECV, self._on_dimse_recv)
                return
            limit = self.settings.dicom.max_associations
            refusal = _REJECT_LOCAL_LIMIT, f"dicom.max_associations ({limit}) associations already open"
        (result, source, diagnostic), reason = refusal
        log.warning("association from %s rejected: %s", _peer(assoc), reason)
        # The same three steps pynetdicom's ACSE takes for its own rejections.
        assoc.acse.send_reject(result, source, diagnostic)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _on_accepted(self, event: evt.Event) -> None:
        metrics.ASSOCIATIONS.labels(outcome="accepted").inc()
        with self._lock:
            self._tallies[id(event.assoc)] = _AssociationTally(peer=_peer(event.assoc))
        log.debug("association from %s accepted", _peer(event.assoc))

    def _on_rejected(self, event: evt.Event) -> None:
        # Ours (access control, dicom.max_associations) and pynetdicom's (its flood guard).
        metrics.ASSOCIATIONS.labels(outcome="rejected").inc()
        with self._lock:
            self._admitted.pop(id(event.assoc), None)

    def _on_closed(self, event: evt.Event) -> None:
        with self._lock:
            self._admitted.pop(id(event.assoc), None)
            tally = self._tallies.pop(id(event.assoc), None)
        if tally is None:
            return
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        if tally.stored or tally.refused:
            log.info(
                "association from %s %s after %.1f s: %d instance(s) stored (%.1f MB, %d series), %d refused",
                tally.peer,
                how,
                time.monotonic() - tally.started,
                tally.stored,
                tally.nbytes / 1e6,
                len(tally.series),
                tally.refused,
            )
        else:
            log.debug("association from %s %s", tally.peer, how)

    def _on_echo(self, event: evt.Event) -> int:
        log.debug("C-ECHO from %s", _peer(event.assoc))
        return STATUS_SUCCESS

    # --- C-STORE --------------------------------------------------------------------------------------

    def _on_dimse_recv(self, event: evt.Event) -> None:
        """Answer a C-STORE request lacking its SOP Class or SOP Instance UID (pynetdicom would not).

        pynetdicom triggers this for every complete message before it checks the request; one lacking a
        required parameter is logged and dropped there without a response, so the status is sent here
        (on the same presentation context, to the request's Message ID). Bound to each admitted
        association ahead of pynetdicom's logging handler, which fails on such a request (and a failing
        handler skips the handlers after it).
        """
        message = event.message
        if not isinstance(message, C_STORE_RQ):
            return
        command = message.command_set
        missing = {
            keyword: what
            for keyword, what in (
                ("AffectedSOPInstanceUID", "SOP Instance UID"),
                ("AffectedSOPClassUID", "SOP Class UID"),
            )
            if not command.get(keyword)
        }
        message_id = command.get("MessageID")
        if not missing or message_id is None or message.context_id is None:
            return
        comment = f"{next(iter(missing.values()))} is empty"
        self._count_refusal(event.assoc, STATUS_CANNOT_UNDERSTAND, comment)
        response = C_STORE()
        response.MessageIDBeingRespondedTo = int(message_id)
        if "AffectedSOPClassUID" not in missing:
            response.AffectedSOPClassUID = command.AffectedSOPClassUID
        response.Status = STATUS_CANNOT_UNDERSTAND
        response.ErrorComment = comment[:_ERROR_COMMENT_MAX]  # type: ignore[assignment]  # typed None
        event.assoc.dimse.send_msg(response, int(message.context_id))
        # Present but empty: pynetdicom's logging handler can print them (instead of failing with a
        # traceback), and still reads them as absent and drops the request (one WARNING line).
        for keyword in missing:
            setattr(command, keyword, "")

    def _on_store(self, event: evt.Event) -> Dataset:
        """Write, record, return: the status goes back to the peer, never an exception."""
        try:
            nbytes, series_uid = self.store(event)
        except _Refusal as refusal:
            return self._refuse(event, refusal.status, refusal.comment)
        except Exception as exc:  # the peer gets a status, never a crashed association
            # The message may hold a spool path (UIDs): digested here, in full with the traceback at DEBUG.
            log.error(
                "C-STORE from %s failed unexpectedly: %s",
                _peer(event.assoc),
                digest_uids(f"{type(exc).__name__}: {exc}"),
            )
            log.debug("C-STORE failure", exc_info=True)
            return self._refuse(event, STATUS_PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
        metrics.INSTANCES_RECEIVED.inc()
        metrics.BYTES_RECEIVED.inc(nbytes)
        with self._lock:
            tally = self._tallies.get(id(event.assoc))
            if tally is not None:
                tally.stored += 1
                tally.nbytes += nbytes
                tally.series.add(series_uid)
        return _status(STATUS_SUCCESS)

    def store(self, event: evt.Event) -> tuple[int, str]:
        """Store one C-STORE request durably and count it in the ledger; return (bytes, series UID).

        Raises :class:`_Refusal` for the expected failures (bad header or UID, no room); any other
        exception means processing failure.
        """
        data = event.encoded_dataset()  # preamble + file meta + the data set exactly as received
        request_sop = str(getattr(event.request, "AffectedSOPInstanceUID", None) or "")
        try:
            header = dcmread(
                BytesIO(data),
                stop_before_pixels=True,
                specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
            )
        except Exception as exc:
            raise _Refusal(STATUS_CANNOT_UNDERSTAND, f"unreadable data set: {type(exc).__name__}") from exc
        try:
            study_uid = check_uid(_text(header.get("StudyInstanceUID")), "Study Instance UID")
            series_uid = check_uid(_text(header.get("SeriesInstanceUID")), "Series Instance UID")
            sop_uid = check_uid(request_sop, "SOP Instance UID")
        except InvalidUID as exc:
            raise _Refusal(STATUS_CANNOT_UNDERSTAND, str(exc)) from exc
        if _text(header.get("SOPInstanceUID")) != sop_uid:
            raise _Refusal(STATUS_CANNOT_UNDERSTAND, "SOP Instance UID differs from the C-STORE request's")

        if len(data) > self.largest_instance_bytes:
            self.largest_instance_bytes = len(data)
        if not self.spool.has_room(self._reserve_bytes, len(data)):
            raise _Refusal(STATUS_OUT_OF_RESOURCES, "spool disk below its reserve (storage.disk_reserve_mb)")
        try:
            path = self.spool.write_instance(study_uid, series_uid, sop_uid, data)
        except OSError as exc:
            if is_no_space_error(exc):
                raise _Refusal(STATUS_OUT_OF_RESOURCES, "spool disk full") from exc
            raise
        series = self.ledger.record_instance(
            study_uid,
            series_uid,
            len(data),
            self.spool.incoming_relpath(study_uid, series_uid),
            self.clock(),
            sop_instance_uid=sop_uid,
            sha256=hashlib.sha256(data).hexdigest(),
        )
        log.debug(
            "stored %s (%d bytes, series %s%s)",
            path,
            len(data),
            series_uid,
            ", identical re-send" if series.duplicate else "",
        )
        return len(data), series_uid

    def space_refusal(self) -> str | None:
        """Why the next C-STORE would be answered 0xA700 (None when it would be stored).

        The same rule as :meth:`store`: free space minus the incoming instance must stay above
        ``storage.disk_reserve_mb``; the incoming instance is taken as the largest one stored since start
        (:data:`DEFAULT_INSTANCE_BYTES` before any). ``/readyz`` reports it.
        """
        try:
            free = self.spool.free_bytes()
        except OSError as exc:
            return f"cannot read free space: {exc.strerror or exc}"
        need = self._reserve_bytes + self.largest_instance_bytes
        if free >= need:
            return None
        mib = 1024 * 1024
        return (
            f"{free // mib} MiB free, below the reserve {self._reserve_bytes // mib} MiB plus one instance "
            f"({-(-self.largest_instance_bytes // mib)} MiB): C-STORE would be answered 0xA700"
        )

    def _refuse(self, event: evt.Event, status: int, comment: str) -> Dataset:
        self._count_refusal(event.assoc, status, comment)
        sop = str(getattr(event.request, "AffectedSOPInstanceUID", None) or "")
        log.debug("refused SOP Instance UID %r (digest %s)", sop, uid_digest(sop))
        return _status(status, comment)

    def _count_refusal(self, assoc: Association, status: int, comment: str) -> None:
        metrics.INSTANCES_REFUSED.labels(status=f"0x{status:04X}").inc()
        with self._lock:
            tally = self._tallies.get(id(assoc))
            if tally is not None:
                tally.refused += 1
        log.warning("C-STORE from %s refused with 0x%04X: %s", _peer(assoc), status, comment)


def _bind_first(assoc: Association, event: Any, handler: Callable[[evt.Event], None]) -> None:
    """Bind ``handler`` to the notification ``event`` of ``assoc`` ahead of those already bound.

    pynetdicom calls a notification event's handlers in order and stops at the first that raises; each
    association binds pynetdicom's logging handlers itself, before any the server was given.
    """
    bound = list(cast(list[tuple[Callable[..., Any], Any]], assoc.get_handlers(event)))
    for other, _ in bound:
        assoc.unbind(event, other)
    assoc.bind(event, handler)
    for other, args in bound:
        assoc.bind(event, other, args)


def _status(code: int, comment: str | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    return status


def _text(value: Any) -> str | None:
    """A header value as text (None when absent or empty)."""
    if value is None:
        return None
    text = str(value.value if hasattr(value, "value") else value)
    return text or None


def _peer(assoc: Association) -> str:
    """``AE@host:port`` of the requestor (AE titles and addresses are not patient data)."""
    requestor = assoc.requestor
    # Before negotiation the requestor's AE title is only in the A-ASSOCIATE-RQ primitive.
    title = getattr(requestor.primitive, "calling_ae_title", None) or requestor.ae_title
    return f"{str(title).strip()}@{requestor.address}:{requestor.port}"
