"""The DICOM UID grammar, checked before a UID from the network becomes a file or folder name.

PS3.5 section 9.1: components of digits separated by dots, no leading zero in a component (except
a lone ``0``), at most 64 characters. A value that passes cannot contain ``/``, ``..`` or anything else
a path could be abused with.
"""

from __future__ import annotations

import hashlib
import re

from dicom_io.errors import InvalidUID

#: PS3.5 9.1 grammar of a UID.
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
#: PS3.5 9.1: "shall not exceed 64 total characters".
MAX_UID_LENGTH = 64
#: Characters of the SHA-256 hex digest kept by :func:`uid_digest` (48 bits: collisions are unlikely among
#: the series one agent sees, and the digest cannot be turned back into the UID).
UID_DIGEST_LENGTH = 12


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a ``str`` following the DICOM UID grammar and length limit."""
    if not isinstance(value, str) or len(value) > MAX_UID_LENGTH:
        return False
    return UID_PATTERN.fullmatch(value) is not None


def check_uid(value: object, what: str = "UID") -> str:
    """Return ``value`` if it is a valid DICOM UID, else raise :class:`InvalidUID`.

    The message states what was wrong and the value's length, not the value (it may be anything).
    """
    if not isinstance(value, str):
        raise InvalidUID(f"{what} is missing or not text")
    if not value:
        raise InvalidUID(f"{what} is empty")
    if len(value) > MAX_UID_LENGTH:
        raise InvalidUID(f"{what} has {len(value)} characters, more than the {MAX_UID_LENGTH} allowed")
    if UID_PATTERN.fullmatch(value) is None:
        raise InvalidUID(
            f"{what} is not a DICOM UID (digits and dots, no empty or zero-led components; PS3.5 9.1)"
        )
    return value


def uid_digest(uid: str) -> str:
    """A short stable digest of a UID for INFO logs (the full UID is logged only at DEBUG).

    The same UID always gives the same 12 hex digits, so log lines of one series can be correlated and
    matched against the ledger (``sha256(uid)[:12]``) without the UID itself appearing in the log.
    Surrounding spaces (DICOM pads odd-length values) do not change the digest.
    """
    return hashlib.sha256(uid.strip().encode("ascii", "replace")).hexdigest()[:UID_DIGEST_LENGTH]
