"""Sending results back: a C-STORE SCU, and the ledger-driven delivery loop with back-off.

:func:`send_files` stores a list of DICOM files at one destination over one association. It proposes,
per SOP Class found in the files, a presentation context with both uncompressed little-endian
transfer syntaxes (pynetdicom re-encodes an uncompressed dataset into whichever is accepted) and one
context per compressed transfer syntax present (those are sent as they are). It returns each file's
DICOM status; an association that is refused, aborted or cannot be opened raises
:class:`AssociationFailed` with the reason in words. A destination with ``tls = true`` is called over DICOM
TLS (:mod:`agent.service.dicom_client`); a server certificate that does not verify is such a failure
(retried with back-off, the reason recorded), not a crash.

:func:`run_due_deliveries` is what the scheduler calls every few seconds: for every PENDING delivery
whose time has come it sends the job's output files that the destination has not stored yet, and
records the attempt in the ledger: DELIVERED when every file is stored, PENDING with an exponential
back-off (``retry_base_s * 2**(attempts-1)``, capped at ``retry_cap_s``) after a transient failure,
FAILED when ``max_attempts`` is spent or the failure cannot heal by waiting (destination no longer
configured, job outputs gone, SOP Class refused by the peer). The next attempt time, the attempt count
and the instances already stored live in the ledger, so a restart resumes where it stopped and never
re-sends an instance that was stored: each instance is recorded as sent the moment its C-STORE Success
(or warning) arrives, while the association is still open. A sending attempt holds its delivery for
``delivery.lease_s`` (other agents on the ledger skip it); after a crash mid-send the delivery is due
again when that lease ends, and only the instances without a recorded Success are sent.

Exactly once where the destination can say what it holds: before each C-STORE the instance is marked *in
doubt* in the ledger (:meth:`storage.Ledger.mark_in_doubt`); its answer (Success, or a failure status)
clears the mark. An instance still in doubt at the next attempt went out before a crash or a lost
association, and the destination may have stored it. With the destination's ``query_before_resend`` (the
default) the sender asks it by C-FIND (:mod:`agent.service.instance_query`) and records those it holds as
sent; the others are sent again. When the destination cannot answer the question (no C-FIND, a permanent
rejection, a failure status such as "SOP Class not supported") they are sent again: at-least-once, said at
WARNING and in a ``delivery.in_doubt`` event. When it may answer later (a transient rejection of the query
association, an abort or no answer while setting it up or during the C-FIND, "out of resources"), the
attempt sends nothing, leaves them in doubt and is retried with the normal back-off, its reason in the
ledger and the log (``in-doubt query deferred (k of 5): ...``); after :data:`QUERY_DEFERRALS` such
attempts since they went in doubt, or on the last attempt ``max_attempts`` allows, they are sent again
(at-least-once, as above), so that a destination that aborts every query association still gets its
results. A destination that cannot be reached at all is retried later like any other attempt that
cannot connect. Each instance in doubt is decided once (held, or sent again) and counted once in
``spine_agent_delivery_in_doubt_instances_total``; an instance sent again is in doubt again only if that
C-STORE is interrupted too.

A failure status is described by its meaning in the standard (``status 0xA700 (Refused: Out of
Resources)``) in the log and the ledger. The peer's Error Comment is free text that could hold patient
data: it is kept on :class:`StoreResult` (``peer_comment``) and logged at DEBUG only, never at INFO or in
the ledger (as for C-FIND, :mod:`agent.service.instance_query`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS, code_to_category

from agent.service.dicom_client import ClientTls, open_association
from agent.service.instance_query import InstanceKey, QueryFailed, held_instances
from agent.service.manifest import ManifestError, read_manifest
from agent.web import metrics
from config import ConfigError
from config.settings import Destination, Settings
from storage import DeliveryState, Ledger
from storage.ledger import utcnow
from storage.models import Delivery
from storage.spool import Spool

__all__ = [
    "AssociationFailed",
    "SendOutcome",
    "StoreResult",
    "backoff_delay",
    "deliver",
    "run_due_deliveries",
    "send_files",
]

log = logging.getLogger(__name__)

#: pynetdicom's (and DICOM's) limit on presentation contexts in one association request.
MAX_CONTEXTS = 128
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Status categories of a C-STORE response that mean "stored": Success and every Warning (PS3.4 B.2.3's
#: 0xB000, 0xB006, 0xB007 and PS3.7 Annex C's 0x0001, 0x0107, 0x0116).
_STORED_CATEGORIES = ("Success", "Warning")
#: Failures that waiting will not cure: SOP Class not supported / refused, data set does not match.
_PERMANENT_STATUSES = frozenset({0x0122, 0x0124})
_PERMANENT_RANGES = ((0xA900, 0xA9FF), (0xC000, 0xCFFF))
#: Attempts that may leave instances in doubt, since they went in doubt, because the destination did not
#: answer the C-FIND question yet (see the module); then they are sent again (at-least-once). With the
#: default back-off (10 s doubling) the fifth is about 5 minutes after the first.
QUERY_DEFERRALS = 5
#: How the error of such an attempt starts (the ledger's ``delivery.retry`` event; counted against the above).
_DEFERRED = "in-doubt query deferred"


class AssociationFailed(ConnectionError):
    """No association with the destination: it rejected the request, aborted, or could not be reached.

    The message names the destination and the reason (rejection result/source/reason when the peer
    sent one). Sending again later may work; nothing was stored by this attempt beyond what
    :class:`SendOutcome` reported before the failure.
    """


@dataclass(frozen=True)
class StoreResult:
    """What happened to one file."""

    path: Path
    sop_instance_uid: str | None
    #: DICOM status of the C-STORE response; None when no response came (not sent, link lost).
    status: int | None
    #: Why it was not stored, in our words (for a failure status: its meaning in the standard).
    error: str | None = None
    #: The peer's Error Comment (0000,0902): free text, DEBUG only (it could hold patient data).
    peer_comment: str | None = None
    #: Marked in doubt, then refused by pynetdicom before anything went out (it cannot encode the dataset):
    #: the destination cannot hold it.
    unsent: bool = False

    @property
    def stored(self) -> bool:
        """The peer stored the instance (success or a warning status)."""
        return self.status is not None and code_to_category(self.status) in _STORED_CATEGORIES

    @property
    def permanent_failure(self) -> bool:
        """A failure that a later attempt would get again (the peer refuses this object)."""
        if self.status is None or self.stored:
            return False
        return self.status in _PERMANENT_STATUSES or any(
            lo <= self.status <= hi for lo, hi in _PERMANENT_RANGES
        )


@dataclass(frozen=True)
class SendOutcome:
    """Per-file results of one association."""

    destination: str
    results: tuple[StoreResult, ...]

    @property
    def all_succeeded(self) -> bool:
        return all(r.stored for r in self.results)

    @property
    def stored_instances(self) -> list[str]:
        return [r.sop_instance_uid for r in self.results if r.stored and r.sop_instance_uid]

    @property
    def failures(self) -> list[StoreResult]:
        return [r for r in self.results if not r.stored]

    def summary(self) -> str:
        """One line: counts, then the first failures with their status."""
        stored = len(self.results) - len(self.failures)
        text = f"{stored}/{len(self.results)} stored at {self.destination}"
        details = [
            f"{r.path.name}: "
            + (f"status 0x{r.status:04X}" if r.status is not None else "no response")
            + (f" ({r.error})" if r.error else "")
            for r in self.failures[:3]
        ]
        return text + ("; " + "; ".join(details) if details else "")


@dataclass(frozen=True)
class _Item:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: UID
    study_instance_uid: str = ""
    series_instance_uid: str = ""


def _scan(files: Sequence[Path]) -> tuple[list[_Item], list[StoreResult]]:
    items: list[_Item] = []
    unreadable: list[StoreResult] = []
    for path in files:
        try:
            header = dcmread(path, stop_before_pixels=True)
            items.append(
                _Item(
                    path,
                    str(header.SOPClassUID),
                    str(header.SOPInstanceUID),
                    UID(header.file_meta.TransferSyntaxUID),
                    str(header.get("StudyInstanceUID", "")),
                    str(header.get("SeriesInstanceUID", "")),
                )
            )
        except (OSError, InvalidDicomError, AttributeError) as exc:
            unreadable.append(StoreResult(path, None, None, f"not a readable DICOM file: {exc}"))
    return items, unreadable


def _contexts(items: Sequence[_Item]) -> list[tuple[str, list[str]]]:
    contexts: dict[tuple[str, tuple[str, ...]], None] = {}
    for item in items:
        syntaxes = _UNCOMPRESSED if not item.transfer_syntax.is_compressed else (item.transfer_syntax,)
        contexts[(item.sop_class_uid, tuple(syntaxes))] = None
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts needed, DICOM allows {MAX_CONTEXTS}")
    return [(sop_class, list(syntaxes)) for sop_class, syntaxes in contexts]


def send_files(
    called_ae: str,
    host: str,
    port: int,
    files: Sequence[Path],
    *,
    calling_ae: str,
    timeout_s: float = 30.0,
    skip_instances: Collection[str] = (),
    on_stored: Callable[[str], None] | None = None,
    on_sending: Callable[[str], None] | None = None,
    on_not_stored: Callable[[str], None] | None = None,
    tls: ClientTls | None = None,
) -> SendOutcome:
    """Store ``files`` at ``called_ae@host:port`` in one association, calling as ``calling_ae``.

    Files whose SOP Instance UID is in ``skip_instances`` are not sent (and not reported). Unreadable
    files are reported with status None. Each C-STORE's status is returned; a failed C-STORE does not
    stop the others. ``on_stored(sop_instance_uid)`` is called as soon as the peer answers a C-STORE with
    success or a warning, before the next file is sent; ``on_sending(sop_instance_uid)`` just before its
    C-STORE goes out, ``on_not_stored(sop_instance_uid)`` when the peer answers it with a failure status
    or it never went out (pynetdicom refused to send it: it cannot encode the dataset).
    ``tls``: call over DICOM TLS.

    Raises:
        AssociationFailed: the association was rejected, aborted or could not be opened (over TLS: the
            server's certificate did not verify, the handshake failed), or no presentation context was
            accepted; nothing was sent.
        ConfigError: the TLS files cannot be loaded.
    """
    destination = f"{called_ae}@{host}:{port}"
    items, results = _scan(files)
    items = [item for item in items if item.sop_instance_uid not in skip_instances]
    if not items:
        return SendOutcome(destination, tuple(results))

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    for sop_class, syntaxes in _contexts(items):
        ae.add_requested_context(sop_class, syntaxes)

    assoc, failure = open_association(ae, host, port, called_ae=called_ae, tls=tls)
    if failure is not None:
        raise AssociationFailed(failure)
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        for item in items:
            result = _store_one(assoc, item, accepted, on_sending)
            results.append(result)
            if result.stored and on_stored is not None:
                on_stored(item.sop_instance_uid)
            elif on_not_stored is not None and (result.unsent or result.status is not None):
                on_not_stored(item.sop_instance_uid)  # a failure status, or it never went out
            if not assoc.is_established:
                break
        sent = {r.path for r in results}
        results.extend(
            StoreResult(item.path, item.sop_instance_uid, None, "association lost before sending")
            for item in items
            if item.path not in sent
        )
    finally:
        if assoc.is_established:
            assoc.release()
    outcome = SendOutcome(destination, tuple(results))
    log.info("C-STORE to %s: %s", destination, outcome.summary())
    return outcome


def _store_one(
    assoc: Any, item: _Item, accepted: set[str], on_sending: Callable[[str], None] | None
) -> StoreResult:
    if item.sop_class_uid not in accepted:
        # 0x0122 "SOP Class not supported": the peer refused the context for this class.
        return StoreResult(item.path, item.sop_instance_uid, 0x0122, "SOP Class not accepted by the peer")
    try:
        dataset = dcmread(item.path)
    except (OSError, ValueError) as exc:  # removed or damaged since the scan: not sent, not in doubt
        return StoreResult(item.path, item.sop_instance_uid, None, f"{exc.__class__.__name__}: {exc}")
    if on_sending is not None:
        on_sending(item.sop_instance_uid)
    try:
        response = assoc.send_c_store(dataset)
    except (ValueError, RuntimeError, AttributeError) as exc:
        # pynetdicom raises these before the request goes out (association not established, no accepted
        # context, a dataset it cannot encode): the destination cannot hold it, so it is not in doubt.
        return StoreResult(
            item.path, item.sop_instance_uid, None, f"not sent: {exc.__class__.__name__}: {exc}", unsent=True
        )
    if "Status" not in response:
        return StoreResult(item.path, item.sop_instance_uid, None, "no C-STORE response (timeout or abort)")
    status = int(response.Status)
    comment = str(response.get("ErrorComment", "") or "").strip() or None
    if comment is not None:
        log.debug("C-STORE of %s: status 0x%04X, Error Comment %r", item.sop_instance_uid, status, comment)
    return StoreResult(item.path, item.sop_instance_uid, status, status_meaning(status), comment)


def status_meaning(status: int) -> str | None:
    """The standard's words for a C-STORE status that is not Success (None for Success or unknown)."""
    if status == 0x0000:
        return None
    entry = STORAGE_SERVICE_CLASS_STATUS.get(status) or GENERAL_STATUS.get(status)
    return str(entry[1]) if entry else None


# --- ledger-driven deliveries ---------------------------------------------------------------------


def backoff_delay(attempts: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait after ``attempts`` failed attempts: ``base_s * 2**(attempts-1)``, at most ``cap_s``."""
    if attempts < 1:
        return 0.0
    return float(min(cap_s, base_s * 2.0 ** min(attempts - 1, 62)))


def run_due_deliveries(
    ledger: Ledger, settings: Settings, spool: Spool, now: datetime | None = None
) -> list[Delivery]:
    """Attempt every delivery that is due; return the rows as recorded after their attempt.

    One delivery failing never stops the others; every attempt is in the ledger and the log.
    """
    now = now or utcnow()
    updated: list[Delivery] = []
    for delivery in ledger.due_deliveries(now):
        if not ledger.claim_delivery(delivery, settings.delivery.lease_s, now):
            continue  # another agent sharing the ledger is sending it
        try:
            updated.append(deliver(ledger, settings, spool, delivery, now))
        except Exception:  # keep the loop alive: the next tick tries again
            log.exception(
                "delivery %d: attempt crashed",
                delivery.id,
                extra={"delivery_id": delivery.id, "destination": delivery.destination},
            )
    return updated


def deliver(ledger: Ledger, settings: Settings, spool: Spool, delivery: Delivery, now: datetime) -> Delivery:
    """One attempt at one PENDING delivery, recorded in the ledger (see the module docstring)."""
    extra = {"delivery_id": delivery.id, "destination": delivery.destination}
    policy = settings.delivery
    attempts_after = delivery.attempts + 1

    def record(
        outcome: DeliveryState,
        *,
        sent: Sequence[str] = (),
        status: int | None = None,
        error: str | None = None,
    ) -> Delivery:
        next_at = None
        if outcome == DeliveryState.PENDING:
            if attempts_after >= policy.max_attempts:
                outcome = DeliveryState.FAILED
                error = f"gave up after {attempts_after} attempts: {error}"
            else:
                next_at = now + timedelta(
                    seconds=backoff_delay(attempts_after, policy.retry_base_s, policy.retry_cap_s)
                )
        metrics.note_delivery_attempt(delivery.destination, outcome.value.lower(), error, now)
        if outcome == DeliveryState.DELIVERED:
            log.info("delivery %d: delivered to %s", delivery.id, delivery.destination, extra=extra)
        elif outcome == DeliveryState.FAILED:
            log.warning("delivery %d: failed: %s", delivery.id, error, extra=extra)
        else:
            log.info("delivery %d: will retry at %s: %s", delivery.id, next_at, error, extra=extra)
        return ledger.record_delivery_attempt(
            delivery.id,
            sent_instances=list(sent),
            status=status,
            error=error,
            outcome=outcome,
            next_attempt_at=next_at,
            now=now,
        )

    destination = _destination(settings, delivery.destination)
    if destination is None:
        return record(DeliveryState.FAILED, error=f"destination {delivery.destination!r} is not configured")
    job = ledger.get_job(delivery.job_id)
    if job.output_path is None or job.purged_at is not None:
        return record(DeliveryState.FAILED, error=f"job {job.id} has no output files to send")
    try:
        out_dir = spool.resolve(job.output_path)
    except ValueError as exc:
        return record(DeliveryState.FAILED, error=f"job {job.id}: bad output path: {exc}")
    try:
        files = read_manifest(out_dir)
    except ManifestError as exc:
        return record(DeliveryState.FAILED, error=f"job {job.id}: {exc}")
    if not files:
        return record(DeliveryState.FAILED, error=f"job {job.id}: no DICOM files in its output folder")

    skip = set(delivery.sent_instances)
    in_doubt = sorted(set(delivery.in_doubt_instances) - skip)
    if in_doubt:
        try:
            calling = policy.calling_ae_title
            may_defer = attempts_after < policy.max_attempts  # the last attempt sends rather than gives up
            skip |= _settle_in_doubt(ledger, delivery, destination, files, in_doubt, calling, now, may_defer)
        except QueryFailed as exc:  # unreachable, or asked again later: nothing sent, the attempt counts
            return record(DeliveryState.PENDING, error=str(exc))
    try:
        outcome = send_files(
            destination.ae_title,
            destination.host,
            destination.port,
            files,
            calling_ae=policy.calling_ae_title,
            skip_instances=skip,
            on_stored=lambda sop: ledger.record_sent_instance(delivery.id, sop),
            on_sending=lambda sop: ledger.mark_in_doubt(delivery.id, sop),
            on_not_stored=lambda sop: ledger.record_not_stored(delivery.id, sop),
            tls=ClientTls.of(destination),
        )
    except (AssociationFailed, ConfigError) as exc:
        # A TLS file that went missing since the start is fixed like a destination that is down.
        return record(DeliveryState.PENDING, error=str(exc))
    if outcome.all_succeeded:
        return record(DeliveryState.DELIVERED, sent=outcome.stored_instances, status=0x0000)
    last = outcome.failures[-1]
    state = (
        DeliveryState.FAILED if any(f.permanent_failure for f in outcome.failures) else DeliveryState.PENDING
    )
    return record(state, sent=outcome.stored_instances, status=last.status, error=outcome.summary())


def _settle_in_doubt(
    ledger: Ledger,
    delivery: Delivery,
    destination: Destination,
    files: Sequence[Path],
    in_doubt: Sequence[str],
    calling_ae: str,
    now: datetime,
    may_defer: bool = True,
) -> set[str]:
    """Before an attempt sends anything: the instances in doubt (their C-STORE went out, no answer on
    record) that the destination already holds, asked by C-FIND when ``query_before_resend`` is set. Those
    are recorded as sent; the others are sent again. What was decided is on record in one step (none of
    them is in doubt afterwards, each is counted once), logged and in a ``delivery.in_doubt`` event
    (counts, no UIDs).

    Raises :class:`QueryFailed` when nothing is decided and nothing may be sent: the destination cannot be
    reached at all (``unreachable``: the attempt waits like any other that cannot connect), or it may
    answer later (``retry_later``) and, with ``may_defer``, fewer than :data:`QUERY_DEFERRALS` attempts in a
    row were deferred so; the instances stay in doubt and are asked about again at the next attempt.
    """
    extra = {"delivery_id": delivery.id, "destination": delivery.destination}
    n = len(in_doubt)
    what = f"{n} instance(s) in doubt (sent before an interruption, no answer on record)"
    if not destination.query_before_resend:
        detail = f"{what}: sent again without asking (query_before_resend = false): at-least-once"
        log.info("delivery %d: %s", delivery.id, detail, extra=extra)
        ledger.settle_in_doubt(delivery.id, held=[], settled=in_doubt, detail=detail, now=now)
        metrics.note_in_doubt(delivery.destination, "not_asked", n)
        return set()
    items, _ = _scan(files)
    wanted = set(in_doubt)
    keys = [
        InstanceKey(item.study_instance_uid, item.series_instance_uid, item.sop_instance_uid)
        for item in items
        if item.sop_instance_uid in wanted
    ]
    try:
        held = held_instances(
            destination.ae_title,
            destination.host,
            destination.port,
            keys,
            calling_ae=calling_ae,
            tls=ClientTls.of(destination),
        )
    except QueryFailed as exc:
        if exc.unreachable:
            raise
        waited = ""
        if exc.retry_later:
            deferred = _query_deferrals(ledger, delivery)
            if may_defer and deferred < QUERY_DEFERRALS:
                raise QueryFailed(
                    f"{_DEFERRED} ({deferred + 1} of {QUERY_DEFERRALS}): {what}, nothing sent, "
                    f"asked again at the next attempt: {exc}",
                    retry_later=True,
                ) from None
            waited = f" after {deferred} deferred attempt(s)" if may_defer else " at the last attempt"
        detail = f"{what}: asking the destination failed{waited} ({exc}); sent again: at-least-once"
        log.warning("delivery %d: %s", delivery.id, detail, extra=extra)
        ledger.settle_in_doubt(delivery.id, held=[], settled=in_doubt, detail=detail, now=now)
        metrics.note_in_doubt(delivery.destination, "query_failed", n)
        return set()
    except ConfigError as exc:  # TLS files gone since the start: the send fails the same way
        raise QueryFailed(str(exc), unreachable=True) from None
    detail = (
        f"{what}: the destination holds {len(held)} (C-FIND), not sent again; "
        f"{n - len(held)} not held, sent again"
    )
    log.info("delivery %d: %s", delivery.id, detail, extra=extra)
    ledger.settle_in_doubt(delivery.id, held=sorted(held), settled=in_doubt, detail=detail, now=now)
    if held:
        metrics.note_in_doubt(delivery.destination, "held", len(held))
    if n - len(held):
        metrics.note_in_doubt(delivery.destination, "not_held", n - len(held))
    return held


def _query_deferrals(ledger: Ledger, delivery: Delivery) -> int:
    """Attempts of ``delivery`` deferred for want of an answer to the in-doubt query since its instances in
    doubt were last decided (its last ``delivery.in_doubt`` event)."""
    deferred = 0
    for event in ledger.events(job_id=delivery.job_id, limit=1000):
        if event.delivery_id != delivery.id:
            continue
        if event.kind == "delivery.in_doubt":
            deferred = 0
        elif event.kind == "delivery.retry" and (event.detail or "").startswith(_DEFERRED):
            deferred += 1
    return deferred


def _destination(settings: Settings, name: str) -> Destination | None:
    return next((d for d in settings.destinations if d.name == name), None)
