from __future__ import annotations

from agent.service.redaction import digest_uids
from dicom_io.uids import uid_digest

SOP = "1.2.826.0.1.3680043.8.498.77787300636392856730219033095983680707"


def test_uids_become_digests_and_other_numbers_stay() -> None:
    text = (
        f"instance {SOP}.dcm has modality MR; 2.25.329800735698586629295641978511506172918 "
        "from PACS@10.20.30.40:104, weights 0.2.0, gap 7.50 mm"
    )
    out = digest_uids(text)
    assert f"instance uid:{uid_digest(SOP)}.dcm has modality MR" in out
    assert f"uid:{uid_digest('2.25.329800735698586629295641978511506172918')}" in out
    assert "10.20.30.40:104" in out and "0.2.0" in out and "7.50 mm" in out
    assert SOP not in out
