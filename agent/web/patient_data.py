"""A series' Accession Number and Series Description, for admins who enabled ``http.show_patient_data``.

They are read from the DICOM headers of the series in the spool when a page or list needs them, and
never written to the ledger: the ledger stays free of patient data (docs/operations.md "Logs and
privacy"), whoever can read it or its backups; turning the option off stops showing them at once, with
nothing left behind; retention removes them with the series' files. Afterwards (and for series in another
agent's spool) the UID is shown instead. Callers must not call this unless the option is on.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

#: Files tried per series folder (a folder may hold a file that is not DICOM, e.g. left by hand).
FILES_TRIED = 3
#: Longest value shown (Accession Number is at most 16 characters, Series Description 64).
MAX_CHARS = 64


@dataclass(frozen=True)
class SeriesDetails:
    """What an admin reads instead of a UID fragment (either may be empty)."""

    accession_number: str
    series_description: str

    @property
    def label(self) -> str:
        """``ACC123 · CT Abdomen 1.0 B30f``, or empty when both are empty."""
        return " · ".join(v for v in (self.accession_number, self.series_description) if v)


def in_spool(spool_dir: Path, relpath: str | None) -> Path | None:
    """A ledger path (``spool_path``, ``output_path``) under the spool root; None if empty or leaving it."""
    if not relpath:
        return None
    root = spool_dir.resolve()
    path = (root / relpath).resolve()
    return path if path.is_relative_to(root) and path != root else None


def _text(value: object) -> str:
    text = " ".join(str(value or "").split())  # no control characters or line breaks
    return text[:MAX_CHARS]


def read_series_details(series_dir: Path) -> SeriesDetails | None:
    """The details from the first readable DICOM file of the folder; None when there is none."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with os.scandir(series_dir) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(".dcm") and e.is_file())
    except OSError:
        return None
    for name in names[:FILES_TRIED]:
        try:
            ds = pydicom.dcmread(
                series_dir / name, stop_before_pixels=True,
                specific_tags=["SpecificCharacterSet", "AccessionNumber", "SeriesDescription"],
            )
        except (InvalidDicomError, OSError, ValueError, TypeError):
            continue
        return SeriesDetails(_text(ds.get("AccessionNumber")), _text(ds.get("SeriesDescription")))
    return None


class SeriesDetailsCache:
    """:func:`read_series_details` per series version id, remembered (at most ``size``; thread-safe).

    The headers of a received series do not change, so a list page reads each folder once; a folder that
    is gone (retention) is forgotten.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._items: OrderedDict[int, SeriesDetails | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, series_id: int, series_dir: Path) -> SeriesDetails | None:
        """The details while the series' folder exists (retention removes them with it)."""
        if not series_dir.is_dir():
            with self._lock:
                self._items.pop(series_id, None)
            return None
        with self._lock:
            if series_id in self._items:
                self._items.move_to_end(series_id)
                return self._items[series_id]
        details = read_series_details(series_dir)
        if details is None:  # not remembered: the folder may be written a moment later
            return None
        with self._lock:
            self._items[series_id] = details
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return details
