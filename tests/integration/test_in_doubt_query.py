"""The sender's question before re-sending an instance in doubt, put to real peers: Orthanc answers C-FIND
(Study Root, IMAGE level) for the instances it holds; DCMTK storescp does not answer C-FIND at all, and a
closed port is unreachable (the sender then waits instead of re-sending)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.service.instance_query import InstanceKey, QueryFailed, held_instances
from agent.service.sender import send_files
from tests.dicom_io.ct_series import write_ct_series
from tests.integration.orthanc import require_orthanc, start_orthanc
from tests.reliability.suite_support import start_storescp
from tests.support import free_port

pytestmark = pytest.mark.integration


def _keys(ct_datasets: list, n: int) -> list[InstanceKey]:  # type: ignore[type-arg]
    return [
        InstanceKey(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in ct_datasets[:n]
    ]


def test_orthanc_says_which_instances_it_holds(tmp_path: Path) -> None:
    require_orthanc()
    ct = write_ct_series(tmp_path / "ct", slices=4, rows=16, columns=16)
    # Orthanc answers C-FIND only from a known modality (DicomAlwaysAllowFind is false by default)
    orthanc = start_orthanc(
        tmp_path / "orthanc", modalities={"agent": ("SPINEAGENT", "127.0.0.1", free_port())}
    )
    try:
        stored = send_files(
            orthanc.aet, orthanc.host, orthanc.dicom_port, ct.files[:2], calling_ae="SPINEAGENT"
        )
        assert stored.all_succeeded, stored.summary()
        keys = _keys(ct.datasets, 4)
        held = held_instances(orthanc.aet, orthanc.host, orthanc.dicom_port, keys, calling_ae="SPINEAGENT")
        assert held == {k.sop_instance_uid for k in keys[:2]}
        # the same SOP Instance UID under another series is not the instance: no match
        other = InstanceKey(keys[0].study_instance_uid, "1.2.3.999", keys[0].sop_instance_uid)
        assert (
            held_instances(orthanc.aet, orthanc.host, orthanc.dicom_port, [other], calling_ae="SPINEAGENT")
            == set()
        )
    finally:
        orthanc.stop()


def test_storescp_does_not_answer_and_a_closed_port_is_unreachable(tmp_path: Path) -> None:
    ct = write_ct_series(tmp_path / "ct", slices=1, rows=16, columns=16)
    keys = _keys(ct.datasets, 1)
    dest = start_storescp(tmp_path / "dest")
    try:
        with pytest.raises(QueryFailed, match="C-FIND") as refused:
            held_instances("DEST", "127.0.0.1", dest.port, keys, calling_ae="SPINEAGENT")
        assert not refused.value.unreachable
    finally:
        dest.stop()
    with pytest.raises(QueryFailed, match="connection refused") as closed:
        held_instances("DEST", "127.0.0.1", free_port(), keys, calling_ae="SPINEAGENT", timeout_s=5)
    assert closed.value.unreachable
