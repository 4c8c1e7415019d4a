"""C-ECHO service user (verification SCU)."""

from __future__ import annotations

from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from agent.errors import UserError

#: What an admin can do about each A-ASSOCIATE-RJ reason (PS3.8 9.3.4), by (source, reason).
_HINTS = {
    (1, 3): "the peer does not accept our calling AE title (its allowed list; ours is set by --calling-ae)",
    (1, 7): "the peer is not called that (check --called-ae)",
    (1, 2): "the peer does not support this application context",
}


def _rejection(primitive: Any) -> str:
    try:
        text = f"{primitive.result_str}, {primitive.source_str}: {primitive.reason_str}"
    except (AttributeError, KeyError, ValueError):  # pragma: no cover - an unusual rejection
        return "rejected by the peer"
    key = (int(getattr(primitive, "result_source", 0) or 0), int(getattr(primitive, "diagnostic", 0) or 0))
    hint = _HINTS.get(key)
    return f"rejected by the peer ({text})" + (f"; {hint}" if hint else "")


def echo_peer(host: str, port: int, *, called_ae: str, calling_ae: str, timeout: float = 10.0) -> int:
    """Send one C-ECHO; return the status (0x0000) or raise :class:`UserError` with the reason."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    received: list[Any] = []

    def _on_acse(event: Any) -> None:
        received.append(event.primitive)

    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=[(evt.EVT_ACSE_RECV, _on_acse)])
    if not assoc.is_established:
        if assoc.is_rejected:
            rejected = [p for p in received if getattr(p, "result", None) in (0x01, 0x02)]
            reason = _rejection(rejected[-1]) if rejected else "rejected by the peer"
        else:
            reason = "not established (peer unreachable or aborted)"
        raise UserError(f"C-ECHO {called_ae}@{host}:{port} as {calling_ae}: association {reason}")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or "Status" not in status:
        raise UserError(f"C-ECHO {called_ae}@{host}:{port}: no response (timeout or aborted)")
    code = int(status.Status)
    if code != 0x0000:
        raise UserError(f"C-ECHO {called_ae}@{host}:{port}: peer answered status 0x{code:04X}")
    return code
