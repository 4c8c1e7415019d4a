"""Asking a destination whether it already holds instances: C-FIND, Study Root Query/Retrieve, IMAGE level.

The sender (:mod:`agent.service.sender`) asks this after an interrupted attempt about the instances whose
C-STORE went out without an answer on record (*in doubt*: the destination may have stored one just before
a crash or a lost association), so that it sends again only what the destination does not hold.

One association (the destination's AE title, host, port and TLS, our ``delivery.calling_ae_title``)
proposes the Study Root Query/Retrieve Information Model - FIND; each instance is one C-FIND with
Query/Retrieve Level ``IMAGE`` and its Study, Series and SOP Instance UIDs as unique keys. An instance is
held only when a pending response returns an identifier with exactly its SOP Instance UID (a peer that
ignored the keys and listed other instances does not count as holding it).

:class:`QueryFailed` says why no answer could be had: the association was rejected or the FIND context
refused (DCMTK storescp answers no C-FIND; a PACS may not let our AE query), a failure status, no
response. Two flags tell the sender what to do about it:

* ``unreachable``: no connection at all (refused, unreachable, timed out, TLS failure); nothing can be
  sent either, so the delivery waits like any other that cannot connect.
* ``retry_later`` (also set with ``unreachable``): the destination may answer later. It rejected the
  association *transiently* (result "rejected-transient", or the presentation layer's "temporary
  congestion" / "local limit exceeded" whatever the result), aborted or closed the association request
  without answering it, lost the association or timed out during a C-FIND, or answered C-FIND with
  0xA7xx (Refused: Out of Resources). The sender then leaves the instances in doubt, sends nothing, and
  asks again at the next attempt (a bounded number of times, see the sender).

Otherwise the destination cannot answer the question: a permanent rejection, the FIND context refused
(DCMTK storescp), a failure status such as 0x0122 (SOP Class not supported); the sender re-sends
(at-least-once). The peer's Error Comment is free text that could hold patient data: it is not put in
the message (which reaches INFO and WARNING lines and the ledger), only logged at DEBUG.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from agent.service.dicom_client import ClientTls, open_association

__all__ = ["InstanceKey", "QueryFailed", "held_instances"]

log = logging.getLogger(__name__)

#: C-FIND statuses of a pending response that carries a match (PS3.4 C.4.1.1.4).
_PENDING = frozenset({0xFF00, 0xFF01})
#: A-ASSOCIATE-RJ result "rejected-transient" (PS3.8 9.3.4).
_REJECTED_TRANSIENT = 0x02
#: A-ASSOCIATE-RJ source "DICOM UL service-provider (presentation related function)": its reasons are
#: "temporary congestion" and "local limit exceeded", both transient by nature.
_SOURCE_PRESENTATION = 0x03
#: C-FIND "Refused: Out of Resources" (PS3.4 C.4.1.1.4): 0xA700-0xA7FF.
_OUT_OF_RESOURCES = (0xA700, 0xA7FF)


@dataclass(frozen=True)
class InstanceKey:
    """The unique keys of one instance at IMAGE level."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str


class QueryFailed(ConnectionError):
    """The destination did not answer whether it holds the instances; the message says why."""

    def __init__(self, message: str, *, unreachable: bool = False, retry_later: bool = False) -> None:
        super().__init__(message)
        #: No association could be made at all (refused, unreachable, timed out, TLS failure).
        self.unreachable = unreachable
        #: The destination may answer later (see the module); always so when it is unreachable.
        self.retry_later = retry_later or unreachable


def held_instances(
    called_ae: str,
    host: str,
    port: int,
    keys: Sequence[InstanceKey],
    *,
    calling_ae: str,
    timeout_s: float = 30.0,
    tls: ClientTls | None = None,
) -> set[str]:
    """The SOP Instance UIDs among ``keys`` that ``called_ae@host:port`` says it holds (see the module).

    Raises:
        QueryFailed: no association, the FIND context refused, a failure status or no response; its
            ``unreachable`` and ``retry_later`` say whether asking again later may work (see the module).
        ConfigError: the TLS files cannot be loaded.
    """
    if not keys:
        return set()
    destination = f"{called_ae}@{host}:{port}"
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    connected: list[bool] = []

    def _on_open(event: Any) -> None:
        connected.append(True)

    assoc, failure = open_association(
        ae, host, port, called_ae=called_ae, tls=tls, evt_handlers=[(evt.EVT_CONN_OPEN, _on_open)]
    )
    if failure is not None:
        raise _association_failed(assoc, failure, destination, connected=bool(connected))
    held: set[str] = set()
    try:
        if not any(
            str(cx.abstract_syntax) == StudyRootQueryRetrieveInformationModelFind
            for cx in assoc.accepted_contexts
        ):
            raise QueryFailed(f"{destination} does not accept C-FIND (Study Root Query/Retrieve) from us")
        for key in keys:
            if _holds(assoc, key, destination):
                held.add(key.sop_instance_uid)
    finally:
        if assoc.is_established:
            assoc.release()
    return held


def _association_failed(assoc: Any, failure: str, destination: str, *, connected: bool) -> QueryFailed:
    """Why no association for the query came about, and whether asking later may work (see the module)."""
    question = "does it answer C-FIND (Study Root Query/Retrieve) from us?"
    if assoc.is_rejected:
        rejection = assoc.acceptor.primitive
        result = getattr(rejection, "result", None)
        source = getattr(rejection, "result_source", None)
        if result == _REJECTED_TRANSIENT or source == _SOURCE_PRESENTATION:
            return QueryFailed(failure, retry_later=True)
        return QueryFailed(f"{failure}; {question}")
    if assoc.rejected_contexts:  # accepted, but not the FIND context
        return QueryFailed(f"{failure}; {question}")
    if connected and " over TLS: " not in failure:
        # The connection was made; the peer aborted or closed it, or never answered the request.
        return QueryFailed(
            f"{destination} aborted or did not answer the association request for C-FIND", retry_later=True
        )
    return QueryFailed(failure, unreachable=True)


def _holds(assoc: object, key: InstanceKey, destination: str) -> bool:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = key.study_instance_uid
    query.SeriesInstanceUID = key.series_instance_uid
    query.SOPInstanceUID = key.sop_instance_uid
    found = False
    try:
        responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)  # type: ignore[attr-defined]
        for status, identifier in responses:
            if not status or "Status" not in status:
                raise QueryFailed(f"{destination}: no C-FIND response (timeout or abort)", retry_later=True)
            code = int(status.Status)
            if code in _PENDING:
                uid = str(getattr(identifier, "SOPInstanceUID", "") or "").strip(" \x00")
                found = found or uid == key.sop_instance_uid
            elif code != 0x0000:
                raise _failure_status(status, code, destination)
    except (ValueError, RuntimeError) as exc:  # pynetdicom: no context, association lost
        raise QueryFailed(f"{destination}: C-FIND not sent ({exc})", retry_later=True) from None
    return found


def _failure_status(status: Dataset, code: int, destination: str) -> QueryFailed:
    """A C-FIND failure status; the peer's Error Comment (free text) only at DEBUG."""
    comment = str(status.get("ErrorComment", "") or "").strip()
    if comment:
        log.debug("%s: C-FIND status 0x%04X, Error Comment %r", destination, code, comment)
    busy = _OUT_OF_RESOURCES[0] <= code <= _OUT_OF_RESOURCES[1]
    return QueryFailed(
        f"{destination} answered C-FIND with status 0x{code:04X}"
        + (" (Refused: Out of Resources)" if busy else "")
        + (" and an Error Comment (at DEBUG)" if comment else ""),
        retry_later=busy,
    )
