"""UIDs in free text (exception messages, loader refusals) replaced by their digest before INFO logs.

The loader and the operating system name files by SOP Instance UID (``incoming/<study>/<series>/<sop>.dcm``),
so a failure reason or an exception message can carry full UIDs. :func:`digest_uids` replaces each one by
``uid:<digest>`` (:func:`dicom_io.uids.uid_digest`, ``sha256(uid)[:12]``), the form the logs and the job
ledger's failure reasons use; the full text goes to DEBUG only.
"""

from __future__ import annotations

import re

from dicom_io.uids import uid_digest

#: A UID inside text: the DICOM grammar with at least three components, not part of a longer number.
_UID_IN_TEXT = re.compile(r"(?<![\w.])(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*)){2,}(?![0-9])")
#: Shorter matches are version numbers ("0.2.0") or the like, not UIDs.
_MIN_UID_LENGTH = 10


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(int(p) <= 255 for p in parts)


def digest_uids(text: str) -> str:
    """``text`` with every DICOM UID replaced by ``uid:<12 hex digits>``."""

    def replace(match: re.Match[str]) -> str:
        uid = match.group(0)
        if len(uid) < _MIN_UID_LENGTH or _is_ipv4(uid):
            return uid
        return f"uid:{uid_digest(uid)}"

    return _UID_IN_TEXT.sub(replace, text)
