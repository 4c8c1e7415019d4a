"""DCMTK ``storescu`` as an outside sender, in every transfer syntax the SCP accepts.

Compressed files come from DCMTK's own encoders (dcmcjpeg, dcmcjpls, dcmcrle, dcmconv) or, for
JPEG 2000 which DCMTK cannot write, from pydicom + pylibjpeg-openjpeg. ``storescu -R`` proposes only the
transfer syntax under test (through a ``--config-file`` profile: storescu's ``-x*`` flags always add the
uncompressed syntaxes and have none for JPEG Process 14), so each file arrives exactly as encoded; the SCP
must keep it that way and the loader must decode it back to the same HU.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE

from agent.service.scp import SUPPORTED_TRANSFER_SYNTAXES, StorageSCP
from dicom_io.series import load_series
from storage import Ledger
from tests.agent.service.conftest import TEST_SCU_AE, write_series
from tests.conftest import require_tool

# transfer syntax -> DCMTK command converting IN to OUT (None: pydicom encodes it)
DCMTK_ENCODERS: dict[str, list[str] | None] = {
    ExplicitVRLittleEndian: None,
    ImplicitVRLittleEndian: ["dcmconv", "+ti"],
    DeflatedExplicitVRLittleEndian: ["dcmconv", "+td"],
    JPEGLossless: ["dcmcjpeg", "+el"],
    JPEGLosslessSV1: ["dcmcjpeg", "+e1"],
    JPEGLSLossless: ["dcmcjpls", "+el"],
    RLELossless: ["dcmcrle"],
    JPEG2000Lossless: None,
    JPEG2000: None,
}


def encode(source: Path, target: Path, syntax: str) -> None:
    command = DCMTK_ENCODERS[syntax]
    if command is not None:
        require_tool(command[0])
        subprocess.run([*command, str(source), str(target)], check=True, capture_output=True, timeout=60)
        return
    ds = dcmread(source)
    if syntax == JPEG2000Lossless:
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    elif syntax == JPEG2000:
        ds.compress(JPEG2000, j2k_psnr=[90], generate_instance_uid=False)
    ds.save_as(target, enforce_file_format=True)


@pytest.mark.parametrize("syntax", list(DCMTK_ENCODERS), ids=lambda uid: uid.name)
def test_storescu_sends_each_transfer_syntax(
    scp: StorageSCP, ledger: Ledger, tmp_path: Path, syntax: str
) -> None:
    storescu = require_tool("storescu")
    series = write_series(tmp_path / "src", slices=3, rows=64, columns=64)
    outgoing = tmp_path / "out"
    outgoing.mkdir()
    for path in series.files:
        encode(path, outgoing / path.name, syntax)
        assert dcmread(outgoing / path.name, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax

    profile = tmp_path / "storescu.cfg"
    profile.write_text(
        "[[TransferSyntaxes]]\n[UnderTest]\nTransferSyntax1 = " + syntax + "\n"
        "[[PresentationContexts]]\n[CT]\nPresentationContext1 = " + CTImageStorage + "\\UnderTest\n"
        "[[Profiles]]\n[OnlyThis]\nPresentationContexts = CT\n"
    )
    run = subprocess.run(
        [storescu, "--config-file", str(profile), "OnlyThis", "-aet", TEST_SCU_AE, "-aec", "SPINEAGENT",
         "127.0.0.1", str(scp.port), *sorted(str(p) for p in outgoing.iterdir())],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr

    folder = scp.spool.incoming_dir(series.study_uid, series.series_uid)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in series.files)
    for path in folder.iterdir():
        assert dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    assert ledger.get_series(1).instance_count == 3
    volume = load_series(folder, min_slices=3)
    if syntax == JPEG2000:  # lossy
        np.testing.assert_allclose(volume.array, series.hu[::-1], atol=8)
    else:
        np.testing.assert_array_equal(volume.array, series.hu[::-1])


def test_every_supported_transfer_syntax_is_accepted_at_negotiation(scp: StorageSCP) -> None:
    # no JPEG-LS near-lossless encoder for signed data here: that syntax is checked at negotiation only
    assert JPEGLSNearLossless in SUPPORTED_TRANSFER_SYNTAXES
    ae = AE(ae_title=TEST_SCU_AE)
    for sop_class in (CTImageStorage, EnhancedCTImageStorage):
        for syntax in SUPPORTED_TRANSFER_SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="SPINEAGENT")
    assert assoc.is_established
    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    assoc.release()
    assert len(accepted) == 2 * len(SUPPORTED_TRANSFER_SYNTAXES)


def test_storescu_from_an_unknown_ae_is_rejected(scp: StorageSCP, tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    series = write_series(tmp_path / "src", slices=1)
    run = subprocess.run(
        [
            storescu,
            "-aet",
            "INTRUDER",
            "-aec",
            "SPINEAGENT",
            "127.0.0.1",
            str(scp.port),
            str(series.files[0]),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "Calling AE Title Not Recognized" in run.stdout + run.stderr
    assert not scp.spool.incoming_root.exists() or not any(scp.spool.incoming_root.rglob("*.dcm"))
