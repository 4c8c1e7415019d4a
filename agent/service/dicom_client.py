"""Calling DICOM peers: associations over plain TCP or DICOM TLS, the reason in words, and C-ECHO.

Every association the agent opens goes through :func:`associate`: the sender's C-STOREs
(:mod:`agent.service.sender`), ``spine-agent echo``, ``spine-agent destinations echo`` and the
dashboard's echo button (:func:`echo_destination`, wired in by the service).

DICOM TLS (PS3.15 B.1) to a destination with ``tls = true``: a fresh :class:`ssl.SSLContext` per
association (TLS 1.2 or newer) verifies the server's certificate against ``tls_ca_file`` (or the system's
trusted CAs) and its host name (``tls_server_name``, else ``host``), and presents ``tls_cert_file`` +
``tls_key_file`` when set. pynetdicom only logs why a connection failed; the socket class of the context
records the error here, so a certificate that does not verify reads as such (not as "unreachable").
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from agent.errors import UserError
from agent.web import metrics
from config import ConfigError, Destination, Settings

__all__ = [
    "ClientTls",
    "EchoOutcome",
    "associate",
    "check_destination_tls",
    "destination_echo",
    "echo_destination",
    "echo_peer",
    "open_association",
]

#: OpenSSL verify codes for a certificate that does not name the host (X509_V_ERR_HOSTNAME_MISMATCH,
#: X509_V_ERR_IP_ADDRESS_MISMATCH).
_NAME_MISMATCH = frozenset({62, 64})


@dataclass(frozen=True)
class ClientTls:
    """A destination's TLS settings; :meth:`context` builds the client context they describe."""

    #: How messages name the destination's keys, e.g. ``destinations[pacs]``.
    key: str
    server_name: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def of(cls, destination: Destination) -> ClientTls | None:
        """The TLS settings of ``destination``; None when it is sent to over plain TCP."""
        if not destination.tls:
            return None
        return cls(
            key=f"destinations[{destination.name}]",
            server_name=destination.tls_server_name or destination.host,
            ca_file=destination.tls_ca_file,
            cert_file=destination.tls_cert_file,
            key_file=destination.tls_key_file,
        )

    def _file(self, name: str, path: Path) -> str:
        if not path.is_file():
            why = "is not a file" if path.exists() else "no such file"
            raise ConfigError(f"{self.key}.{name} = {str(path)!r}: {why}")
        return str(path)

    def context(self) -> ssl.SSLContext:
        """A new client context (TLS >= 1.2, server certificate and host name verified).

        Raises :class:`ConfigError` naming the key when a file is missing or cannot be loaded.
        """
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        except ssl.SSLError as exc:  # pragma: no cover - a broken system trust store
            raise ConfigError(f"{self.key}: cannot load the system's trusted CAs: {exc}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_file is not None:
            cafile = self._file("tls_ca_file", self.ca_file)
            try:
                context.load_verify_locations(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"{self.key}.tls_ca_file = {cafile!r}: not a PEM CA certificate: {exc}"
                ) from None
        if self.cert_file is not None and self.key_file is not None:
            certfile = self._file("tls_cert_file", self.cert_file)
            keyfile = self._file("tls_key_file", self.key_file)
            try:
                context.load_cert_chain(certfile=certfile, keyfile=keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"{self.key}.tls_cert_file / tls_key_file = {certfile!r} / {keyfile!r}: "
                    f"not a matching PEM certificate and key: {exc}"
                ) from None
        return context


def check_destination_tls(destination: Destination) -> None:
    """Raise :class:`ConfigError` (one line naming the key) when the destination's TLS files do not load."""
    tls = ClientTls.of(destination)
    if tls is not None:
        tls.context()


def _recording_context(tls: ClientTls, errors: list[OSError]) -> ssl.SSLContext:
    """``tls.context()`` whose sockets append the error of a failed connect (TCP, handshake) to ``errors``."""
    context = tls.context()

    class _RecordingSocket(ssl.SSLSocket):
        def connect(self, address: Any) -> None:
            try:
                super().connect(address)
            except OSError as exc:
                errors.append(exc)
                raise

    context.sslsocket_class = _RecordingSocket
    return context


def _tls_reason(exc: OSError, tls: ClientTls) -> str:
    """Why a TLS connection failed, in words, with what the admin can check."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        if exc.verify_code in _NAME_MISMATCH:
            hint = f"set {tls.key}.tls_server_name to a name the certificate holds"
        elif tls.ca_file is not None:
            hint = f"is {tls.key}.tls_ca_file {str(tls.ca_file)!r} the CA that signed it?"
        else:
            hint = f"set {tls.key}.tls_ca_file to the CA that signed it"
        return f"the server's TLS certificate was not accepted ({detail}); {hint}"
    if isinstance(exc, ssl.SSLError):
        detail = exc.reason or str(exc)
        return f"TLS handshake failed ({detail}); does the destination speak TLS on this port?"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "connection timed out"
    return f"cannot connect: {exc.strerror or exc}"


def associate(
    ae: AE,
    host: str,
    port: int,
    *,
    called_ae: str,
    tls: ClientTls | None = None,
    evt_handlers: Sequence[tuple[Any, Any]] = (),
) -> tuple[Association, str | None]:
    """``ae.associate`` over TLS when ``tls`` is given; returns the association and, when the connection
    could not be made over TLS, why (None otherwise: rejected or plain-TCP failures say it themselves).

    Raises :class:`ConfigError` when the TLS files cannot be loaded.
    """
    errors: list[OSError] = []
    tls_args = (_recording_context(tls, errors), tls.server_name) if tls is not None else None
    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=list(evt_handlers), tls_args=tls_args)
    reason = None
    if tls is not None and not assoc.is_established and not assoc.is_rejected:
        if errors:
            reason = _tls_reason(errors[-1], tls)
        else:  # TLS 1.3: a refused client certificate shows only after the handshake, as a closed link
            question = (
                f"does it require a client certificate ({tls.key}.tls_cert_file, tls_key_file)?"
                if tls.cert_file is None
                else f"does it accept our client certificate {str(tls.cert_file)!r}?"
            )
            reason = f"the destination closed the TLS connection without answering; {question}"
    return assoc, reason


def open_association(
    ae: AE,
    host: str,
    port: int,
    *,
    called_ae: str,
    tls: ClientTls | None = None,
    evt_handlers: Sequence[tuple[Any, Any]] = (),
) -> tuple[Association, str | None]:
    """:func:`associate`, and when no association came of it, why in words (None when it is established):
    the peer's rejection (result, source, reason), no accepted presentation context, the TLS failure, or
    "connection refused, unreachable, timed out or aborted". ``evt_handlers`` are bound besides its own.
    Raises :class:`ConfigError` like :func:`associate`."""
    destination = f"{called_ae}@{host}:{port}"
    rejection: list[str] = []

    def _on_acse_recv(event: Any) -> None:
        primitive = event.primitive
        if isinstance(primitive, A_ASSOCIATE) and primitive.result in (0x01, 0x02):
            rejection.append(f"{primitive.result_str}, source {primitive.source_str}: {primitive.reason_str}")

    assoc, tls_failure = associate(
        ae,
        host,
        port,
        called_ae=called_ae,
        tls=tls,
        evt_handlers=[(evt.EVT_ACSE_RECV, _on_acse_recv), *evt_handlers],
    )
    if assoc.is_established:
        return assoc, None
    if assoc.is_rejected:
        reason = rejection[0] if rejection else "no reason given"
        return assoc, f"{destination} rejected the association ({reason})"
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        # The peer accepted the association but none of the contexts; pynetdicom then aborts it.
        return assoc, f"{destination} accepted none of the proposed presentation contexts"
    if tls_failure is not None:
        return assoc, f"no association with {destination} over TLS: {tls_failure}"
    return assoc, f"no association with {destination}: connection refused, unreachable, timed out or aborted"


# --- C-ECHO --------------------------------------------------------------------------------------------

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


def echo_peer(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str,
    timeout: float = 10.0,
    tls: ClientTls | None = None,
) -> int:
    """Send one C-ECHO; return the status (0x0000) or raise :class:`UserError` with the reason."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    received: list[Any] = []

    def _on_acse(event: Any) -> None:
        received.append(event.primitive)

    try:
        assoc, tls_failure = associate(
            ae, host, port, called_ae=called_ae, tls=tls, evt_handlers=[(evt.EVT_ACSE_RECV, _on_acse)]
        )
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    over = " over TLS" if tls is not None else ""
    if not assoc.is_established:
        if assoc.is_rejected:
            rejected = [p for p in received if getattr(p, "result", None) in (0x01, 0x02)]
            reason = _rejection(rejected[-1]) if rejected else "rejected by the peer"
        elif tls_failure is not None:
            reason = f"not established{over}: {tls_failure}"
        else:
            reason = f"not established{over} (peer unreachable or aborted)"
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


@dataclass(frozen=True)
class EchoOutcome:
    """One C-ECHO to a configured destination, as the CLI and the dashboard report it."""

    destination: str
    peer: str  # AE@host:port
    tls: bool
    ok: bool
    status: int | None
    round_trip_ms: float
    error: str | None = None

    @property
    def message(self) -> str:
        """One line: ``pacs: Success (0x0000) PACS@host:104 over TLS in 12 ms`` or the reason."""
        if self.ok:
            over = " over TLS" if self.tls else ""
            status = f"0x{self.status or 0:04X}"
            return f"{self.destination}: Success ({status}) {self.peer}{over} in {self.round_trip_ms:.0f} ms"
        return f"{self.destination}: FAILED: {self.error}"

    def as_json(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "peer": self.peer,
            "tls": self.tls,
            "ok": self.ok,
            "status": None if self.status is None else f"0x{self.status:04X}",
            "round_trip_ms": round(self.round_trip_ms, 1),
            "error": self.error,
            "message": self.message,
        }


def echo_destination(destination: Destination, *, calling_ae: str, timeout: float = 10.0) -> EchoOutcome:
    """C-ECHO ``destination`` as the sender calls it (same AE titles, same TLS); never raises for a
    failed echo. The outcome is remembered as the destination's last echo (the dashboard's system page)."""
    peer = f"{destination.ae_title}@{destination.host}:{destination.port}"
    started = time.perf_counter()
    try:
        status: int | None = echo_peer(
            destination.host,
            destination.port,
            called_ae=destination.ae_title,
            calling_ae=calling_ae,
            timeout=timeout,
            tls=ClientTls.of(destination),
        )
        error = None
    except UserError as exc:
        status, error = None, str(exc)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    outcome = EchoOutcome(destination.name, peer, destination.tls, error is None, status, elapsed_ms, error)
    metrics.note_echo(destination.name, outcome.message, datetime.now(UTC))
    return outcome


def destination_echo(settings: Settings, *, timeout: float = 10.0) -> Callable[[str], dict[str, Any]]:
    """The dashboard's echo button: a C-ECHO to the configured destination of that name, as JSON."""
    by_name = {d.name: d for d in settings.destinations}

    def run(name: str) -> dict[str, Any]:
        calling = settings.delivery.calling_ae_title
        return echo_destination(by_name[name], calling_ae=calling, timeout=timeout).as_json()

    return run
