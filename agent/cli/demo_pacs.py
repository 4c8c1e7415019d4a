"""A minimal local PACS for the demo: a Storage SCP that keeps every object it receives in a folder.

Only for ``spine-agent demo``; the integration tests use a real Orthanc.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_io.uids import is_valid_uid
from storage.spool import atomic_write_bytes

log = logging.getLogger(__name__)


class DemoPacs:
    """Receives SEG/SR (any storage SOP class) into ``folder/<SOPInstanceUID>.dcm``."""

    def __init__(self, folder: Path, ae_title: str = "DEMOPACS", port: int = 0) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self._requested_port = port
        self._server: Any = None
        self.received: list[Path] = []
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if not is_valid_uid(uid):
            return 0xC211
        path = self.folder / f"{uid}.dcm"
        atomic_write_bytes(path, event.encoded_dataset())
        with self._lock:
            self.received.append(path)
        return 0x0000

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            ("127.0.0.1", self._requested_port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
