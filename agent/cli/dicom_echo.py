"""C-ECHO service user (verification SCU)."""

from __future__ import annotations

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from agent.errors import UserError


def echo_peer(host: str, port: int, *, called_ae: str, calling_ae: str, timeout: float = 10.0) -> int:
    """Send one C-ECHO; return the status (0x0000) or raise :class:`UserError` with the reason."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        reason = (
            "rejected by the peer" if assoc.is_rejected else "not established (peer unreachable or aborted)"
        )
        raise UserError(f"C-ECHO {called_ae}@{host}:{port}: association {reason}")
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
