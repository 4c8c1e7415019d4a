"""load_series: geometry, HU, source references, and every refusal with its reason."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom.filereader
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

import dicom_io.series
from dicom_io.errors import SeriesRejected
from dicom_io.series import PATIENT_STUDY_ATTRIBUTES, load_series
from tests.agent.service.conftest import PATIENT, write_enhanced_ct, write_series


def test_loads_sorted_along_the_normal_in_hu(tmp_path: Path) -> None:
    series = write_series(tmp_path, slices=12, step=2.5, z0=100.0)
    volume = load_series(tmp_path)

    # written top-down (z 100 -> 72.5); k grows along row x column = +z, so the order is reversed
    np.testing.assert_array_equal(volume.array, series.hu[::-1])
    assert volume.array.dtype == np.float32
    assert volume.spacing == pytest.approx((0.8, 0.8, 2.5))
    np.testing.assert_allclose(volume.origin, series.positions[-1])
    np.testing.assert_allclose(volume.direction, np.eye(3))
    np.testing.assert_allclose(volume.index_to_lps([0, 0, 11]), series.positions[0])
    src = volume.source
    assert src is not None
    assert src.sop_instance_uids == tuple(reversed(series.sop_uids))
    assert (src.study_instance_uid, src.series_instance_uid, src.frame_of_reference_uid) == (
        series.study_uid,
        series.series_uid,
        series.frame_of_reference_uid,
    )
    assert src.patient == PATIENT
    assert set(src.patient) == set(PATIENT_STUDY_ATTRIBUTES)


def test_file_names_and_order_do_not_matter(tmp_path: Path) -> None:
    series = write_series(tmp_path / "src", slices=10)
    target = tmp_path / "shuffled"
    target.mkdir()
    files = list(series.files)
    random.Random(1).shuffle(files)
    for index, path in enumerate(files):
        (target / f"{index:03d}.dcm").write_bytes(path.read_bytes())
    (target / ".half-written.dcm.x1.tmp").write_bytes(b"partial")  # a spool temp file is never read
    np.testing.assert_array_equal(load_series(target).array, series.hu[::-1])


def test_oblique_orientation_gives_a_right_handed_affine(tmp_path: Path) -> None:
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    row, col = np.array([c, s, 0.0]), np.array([0.0, 0.0, -1.0])  # coronal-ish, rotated
    normal = np.cross(row, col)
    positions = [tuple(normal * 3.0 * k + [1.0, 2.0, 3.0]) for k in range(10)]
    write_series(tmp_path, slices=10, positions=positions, orientation=(*row, *col))
    volume = load_series(tmp_path)
    assert np.linalg.det(volume.affine[:3, :3]) > 0
    np.testing.assert_allclose(volume.direction[:, 2], normal, atol=1e-9)
    assert volume.spacing[2] == pytest.approx(3.0)


def test_headers_of_the_used_instances_come_back_in_slice_order(tmp_path: Path) -> None:
    image_types = [("ORIGINAL", "PRIMARY", "AXIAL")] * 12
    image_types[0] = ("ORIGINAL", "PRIMARY", "LOCALIZER")
    positions = [(-6.4, -6.4, 100.0 - k * 2.5) for k in range(12)]
    positions[0] = (0.0, 0.0, 400.0)
    write_series(tmp_path, slices=12, positions=positions, image_types=image_types)
    headers: list = []
    volume = load_series(tmp_path, headers=headers)
    assert volume.source is not None
    assert [str(h.SOPInstanceUID) for h in headers] == list(volume.source.sop_instance_uids)
    assert all("PixelData" not in h for h in headers)


def test_localizers_are_dropped(tmp_path: Path) -> None:
    image_types = [("ORIGINAL", "PRIMARY", "AXIAL")] * 12
    image_types[0] = ("ORIGINAL", "PRIMARY", "LOCALIZER")
    positions = [(-6.4, -6.4, 100.0 - k * 2.5) for k in range(12)]
    positions[0] = (0.0, 0.0, 400.0)
    series = write_series(tmp_path, slices=12, positions=positions, image_types=image_types)
    volume = load_series(tmp_path)
    assert volume.shape[0] == 11
    np.testing.assert_array_equal(volume.array, series.hu[1:][::-1])
    assert series.sop_uids[0] not in volume.source.sop_instance_uids  # type: ignore[union-attr]


def test_enhanced_multiframe_ct_is_loaded(tmp_path: Path) -> None:
    series = write_enhanced_ct(tmp_path / "mf.dcm", frames=12, step=2.0)
    volume = load_series(tmp_path)
    np.testing.assert_array_equal(volume.array, series.hu)
    assert volume.spacing == pytest.approx((0.7, 0.7, 2.0))
    np.testing.assert_allclose(volume.origin, series.positions[0])
    assert volume.source is not None
    assert volume.source.sop_instance_uids == (series.sop_uids[0],) * 12
    assert volume.source.patient["PatientID"] == PATIENT["PatientID"]


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k"])
def test_compressed_instances_are_decoded(tmp_path: Path, syntax: str) -> None:
    series = write_series(tmp_path, slices=10, rows=64, columns=64)  # OpenJPEG needs more than 16x16
    for path in series.files:
        ds = dcmread(path)
        ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(load_series(tmp_path).array, series.hu[::-1])


def _jpeg_ls_series(folder: Path, slices: int = 10):  # type: ignore[no-untyped-def]
    series = write_series(folder, slices=slices, rows=64, columns=64)
    for path in series.files:
        ds = dcmread(path)
        ds.compress(JPEGLSLossless, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
    return series


def test_jpeg_ls_is_decoded_by_charls_with_the_same_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JPEG-LS goes to CharLS (pyjpegls, ~4x faster here than pydicom's default pick), same values."""
    series = _jpeg_ls_series(tmp_path)
    plugins: list[str] = []
    real = dicom_io.series.pixel_array

    def recording(src, **kwargs):  # type: ignore[no-untyped-def]
        plugins.append(kwargs.get("decoding_plugin", ""))
        return real(src, **kwargs)

    monkeypatch.setattr(dicom_io.series, "pixel_array", recording)
    np.testing.assert_array_equal(load_series(tmp_path).array, series.hu[::-1])
    assert plugins == ["pyjpegls"] * len(series.files)


def test_a_truncated_jpeg_ls_stream_is_refused(tmp_path: Path) -> None:
    """pylibjpeg (pydicom's default pick) turns a truncated JPEG-LS stream into garbage without an error;
    the loader decodes with CharLS, which refuses it, so no job runs on a corrupt slice."""
    series = _jpeg_ls_series(tmp_path)
    victim = series.files[4]
    ds = dcmread(victim)
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])  # the stream ends inside its scan
    ds.save_as(victim, enforce_file_format=True)
    assert pixel_array(victim, decoding_plugin="pylibjpeg").shape == (64, 64)  # silently "decoded"
    with pytest.raises(SeriesRejected) as refused:
        load_series(tmp_path)
    reason = str(refused.value)
    assert reason.startswith(f"undecodable pixel data in instance {victim.name} (JPEG-LS Lossless"), reason
    assert ": RuntimeError: " in reason, reason  # CharLS refused it (the reason is cut at 200 characters)


def test_compressed_enhanced_ct_is_decoded_frame_by_frame(tmp_path: Path) -> None:
    series = write_enhanced_ct(tmp_path / "mf.dcm", frames=10)
    ds = dcmread(series.files[0])
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(series.files[0], enforce_file_format=True)
    np.testing.assert_array_equal(load_series(tmp_path).array, series.hu)


# --- one parse per file (issue 14) ---------------------------------------------------------------------


def test_each_uncompressed_file_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers and pixels come from one parse (the loader used to parse every file again for its pixels)."""
    series = write_series(tmp_path, slices=12)
    parses: dict[str, int] = {}
    read_preamble = pydicom.filereader.read_preamble  # every pydicom parse of a file starts here

    def counting(fp, force):  # type: ignore[no-untyped-def]
        name = Path(getattr(fp, "name", "?")).name
        parses[name] = parses.get(name, 0) + 1
        return read_preamble(fp, force)

    monkeypatch.setattr(pydicom.filereader, "read_preamble", counting)
    np.testing.assert_array_equal(load_series(tmp_path).array, series.hu[::-1])
    assert parses == {path.name: 1 for path in series.files}


def _recode(
    path: Path, *, syntax: str, representation: int, bits_stored: int, slope: float, seed: int
) -> None:
    """Rewrite one instance's Image Pixel module and pixels, with noise in the unused high bits."""
    ds = dcmread(path)
    rng = np.random.default_rng(seed)
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1)) if representation else (0, 2**bits_stored)
    raw = rng.integers(low, high, size=(ds.Rows, ds.Columns)).astype(np.int64).astype(np.uint16)
    if bits_stored < 16:  # some writers leave the unused bits dirty; the decoder must shift them out
        noise = rng.integers(0, 2 ** (16 - bits_stored), raw.shape).astype(np.uint16)
        noise <<= np.uint16(bits_stored)
        raw = (raw & np.uint16(2**bits_stored - 1)) | noise
    ds.PixelData = raw.astype("<u2").tobytes()
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = representation, bits_stored, bits_stored - 1
    ds.RescaleSlope = slope
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"]
)
@pytest.mark.parametrize(
    ("representation", "bits_stored", "slope"),
    [(1, 16, 1.0), (1, 12, 1.0), (0, 12, 1.0), (0, 16, 0.5), (1, 12, 1.2)],
)
def test_uncompressed_pixels_read_directly_equal_pydicoms_decoding(
    tmp_path: Path, syntax: str, representation: int, bits_stored: int, slope: float
) -> None:
    series = write_series(tmp_path, slices=10)
    for k, path in enumerate(series.files):
        _recode(
            path, syntax=syntax, representation=representation, bits_stored=bits_stored, slope=slope, seed=k
        )
    stored = np.stack([pixel_array(path) for path in reversed(series.files)])  # k order: reversed
    assert stored.dtype == (np.int16 if representation else np.uint16)
    if bits_stored < 16:
        assert stored.min() >= -(2 ** (bits_stored - 1)) and stored.max() < 2**bits_stored
    # HU as the loader computes it: the product rounded once to float32, then the intercept in float32
    expected = (stored * slope).astype(np.float32) + np.float32(-1024.0)
    np.testing.assert_array_equal(load_series(tmp_path).array, expected)


def test_truncated_pixel_data_is_refused_with_the_decoders_reason(tmp_path: Path) -> None:
    series = write_series(tmp_path, slices=10)
    victim = series.files[3]
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(ValueError) as decoder:
        pixel_array(victim)
    with pytest.raises(SeriesRejected) as refused:
        load_series(tmp_path)
    reason = str(refused.value)
    syntax = "Explicit VR Little Endian"
    assert reason.startswith(f"undecodable pixel data in instance {victim.name} ({syntax}): ")
    assert f"ValueError: {str(decoder.value)[:40]}" in reason, reason


# --- refusals -------------------------------------------------------------------------------------------


def _rewrite(path: Path, **attributes: object) -> None:
    ds = dcmread(path)
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


def test_mixed_orientations_are_refused(tmp_path: Path) -> None:
    series = write_series(tmp_path)
    _rewrite(series.files[4], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(SeriesRejected, match="mixed orientations: the slices have 2 different"):
        load_series(tmp_path)


def test_gantry_tilt_is_refused(tmp_path: Path) -> None:
    tilt = np.radians(15)
    positions = [(-6.4, -6.4 + k * 2.5 * np.tan(tilt), 100.0 - k * 2.5) for k in range(12)]
    series = write_series(tmp_path, positions=positions)
    for path in series.files:
        _rewrite(path, GantryDetectorTilt=15)
    with pytest.raises(SeriesRejected, match=r"gantry tilt: .*about 15\.0 degrees; Gantry/Detector Tilt 15"):
        load_series(tmp_path)


def test_missing_slices_are_refused(tmp_path: Path) -> None:
    series = write_series(tmp_path, slices=14)
    series.files[5].unlink()
    series.files[6].unlink()
    with pytest.raises(SeriesRejected, match=r"missing slices: 1 gap\(s\) .* about 2 slice\(s\) absent"):
        load_series(tmp_path)


def test_non_uniform_spacing_is_refused(tmp_path: Path) -> None:
    z = [100.0 - k * 2.5 for k in range(12)]
    z[6] -= 0.4  # one slice 0.4 mm off: gaps 2.9 and 2.1 around 2.5
    write_series(tmp_path, positions=[(-6.4, -6.4, v) for v in z])
    with pytest.raises(SeriesRejected, match=r"non-uniform slice spacing: gaps from 2\.100 to 2\.900 mm"):
        load_series(tmp_path)
    assert load_series(tmp_path, spacing_tolerance=0.2).shape[0] == 12


def test_duplicated_positions_are_refused(tmp_path: Path) -> None:
    series = write_series(tmp_path)
    copy = dcmread(series.files[3])
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    copy.save_as(tmp_path / f"{copy.SOPInstanceUID}.dcm", enforce_file_format=True)
    with pytest.raises(SeriesRejected, match=r"duplicated slice positions: 1 slice\(s\)"):
        load_series(tmp_path)


def test_non_ct_modality_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path, modality="MR")
    with pytest.raises(SeriesRejected, match="has modality MR, not CT"):
        load_series(tmp_path)


def test_too_few_slices_are_refused(tmp_path: Path) -> None:
    write_series(tmp_path, slices=4)
    with pytest.raises(SeriesRejected, match=r"series has 4 usable slice\(s\); at least 10 are needed"):
        load_series(tmp_path)
    assert load_series(tmp_path, min_slices=4).shape[0] == 4


def test_only_localizers_leave_too_few_slices(tmp_path: Path) -> None:
    positions = [(0.0, 0.0, float(k)) for k in range(3)]
    write_series(
        tmp_path, slices=3, positions=positions, image_types=[("ORIGINAL", "PRIMARY", "LOCALIZER")] * 3
    )
    with pytest.raises(SeriesRejected, match=r"0 usable slice\(s\) after dropping 3 localizer"):
        load_series(tmp_path, min_slices=2)


def test_series_above_the_configured_size_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path, slices=12)
    with pytest.raises(SeriesRejected, match=r"12 instances, more than the configured maximum of 11"):
        load_series(tmp_path, max_instances=11)
    mf = tmp_path / "mf"
    write_enhanced_ct(mf / "mf.dcm", frames=12)
    with pytest.raises(SeriesRejected, match=r"12 slices, more than the configured maximum of 11"):
        load_series(mf, max_instances=11)


def test_undecodable_pixel_data_is_refused(tmp_path: Path) -> None:
    series = write_series(tmp_path)
    ds = dcmread(series.files[2])
    ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg 2000 stream \xff\xd9"])
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.save_as(series.files[2], enforce_file_format=True)
    with pytest.raises(
        SeriesRejected, match=r"undecodable pixel data in instance .* \(JPEG 2000 Image Compression"
    ):
        load_series(tmp_path)


def test_mixed_series_and_empty_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SeriesRejected, match="no DICOM instances"):
        load_series(tmp_path)
    write_series(tmp_path, slices=6)
    write_series(tmp_path, slices=6, z0=0.0)
    with pytest.raises(SeriesRejected, match="2 different Series Instance UIDs"):
        load_series(tmp_path)


def test_refusal_messages_carry_no_patient_data(tmp_path: Path) -> None:
    write_series(tmp_path, slices=3)
    with pytest.raises(SeriesRejected) as info:
        load_series(tmp_path)
    for value in PATIENT.values():
        assert value not in str(info.value)
