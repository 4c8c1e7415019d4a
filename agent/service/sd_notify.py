"""systemd's readiness protocol (``Type=notify``): one datagram to ``$NOTIFY_SOCKET``.

See sd_notify(3): ``READY=1`` once every port listens and the engine is loaded, ``STOPPING=1`` when
a graceful stop begins, ``STATUS=...`` a line ``systemctl status`` shows. Without ``NOTIFY_SOCKET``
(not started by systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) to the service manager; True when sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode("utf-8"))
    except OSError as exc:
        log.warning("cannot notify systemd at NOTIFY_SOCKET: %s", exc.strerror or exc)
        return False
    return True
