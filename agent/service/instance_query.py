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
response. ``unreachable`` tells a destination that cannot be reached at all (nothing can be sent either)
from one that is reachable but does not answer the question (the sender then re-sends: at-least-once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from agent.service.dicom_client import ClientTls, open_association

__all__ = ["InstanceKey", "QueryFailed", "held_instances"]

#: C-FIND statuses of a pending response that carries a match (PS3.4 C.4.1.1.4).
_PENDING = frozenset({0xFF00, 0xFF01})


@dataclass(frozen=True)
class InstanceKey:
    """The unique keys of one instance at IMAGE level."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str


class QueryFailed(ConnectionError):
    """The destination did not answer whether it holds the instances; the message says why."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        #: No association could be made at all (refused, unreachable, timed out, TLS failure).
        self.unreachable = unreachable


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
        QueryFailed: no association, the FIND context refused, a failure status or no response.
        ConfigError: the TLS files cannot be loaded.
    """
    if not keys:
        return set()
    destination = f"{called_ae}@{host}:{port}"
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc, failure = open_association(ae, host, port, called_ae=called_ae, tls=tls)
    if failure is not None:
        if assoc.is_rejected or assoc.rejected_contexts:
            raise QueryFailed(f"{failure}; does it answer C-FIND (Study Root Query/Retrieve) from us?")
        raise QueryFailed(failure, unreachable=True)
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
                raise QueryFailed(f"{destination}: no C-FIND response (timeout or abort)")
            code = int(status.Status)
            if code in _PENDING:
                uid = str(getattr(identifier, "SOPInstanceUID", "") or "").strip(" \x00")
                found = found or uid == key.sop_instance_uid
            elif code != 0x0000:
                comment = str(status.get("ErrorComment", "")).strip()
                raise QueryFailed(
                    f"{destination} answered C-FIND with status 0x{code:04X}"
                    + (f" ({comment})" if comment else "")
                )
    except (ValueError, RuntimeError) as exc:  # pynetdicom: no context, association lost
        raise QueryFailed(f"{destination}: C-FIND not sent ({exc})") from None
    return found
