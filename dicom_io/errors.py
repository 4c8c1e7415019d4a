"""Exceptions raised while reading received DICOM instances.

Like ``pydicom.errors``: builtin subclasses, so callers that only know ``ValueError`` still catch them.
Messages are written for the admin who reads them in ``spine-agent jobs list``; they never contain patient
data (names, IDs, dates), only counts, positions in millimetres, attribute names and file names.
"""

from __future__ import annotations


class InvalidUID(ValueError):
    """A UID from the network or a file does not follow the DICOM UID grammar (PS3.5 9.1).

    Raised by :func:`dicom_io.uids.check_uid` before the value is used as a path part. Nothing was written;
    the sender must fix the object (the SCP answers a failure status).
    """


class SeriesRejected(ValueError):
    """:func:`dicom_io.series.load_series` refuses a series; the message says why in one sentence.

    The worker fails the job with this message as its reason. Retrying will not help: the series itself
    must change (re-sent complete, re-reconstructed without tilt, ...), which opens a new series version.
    """
