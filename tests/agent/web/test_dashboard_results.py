"""A job's results on the dashboard, over real HTTP: landmarks, the sagittal preview PNG, and patient data
(Accession Number, Series Description) shown only when ``http.show_patient_data`` is on.

The series is a real DICOM CT series in the spool (bright vertebral bodies off the image's centre) and
``landmarks.json`` is written by the pipeline's own function from the loader's volume.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from agent.service.pipeline import landmarks_json
from agent.web.dashboard import Dashboard
from agent.web.http import HealthServer
from agent.web.preview import MAX_PX, POINT_RGB, read_landmarks, render_preview
from config import Settings, example_toml
from config.settings import HttpSettings, LedgerSettings, StorageSettings
from dicom_io.result import Landmark, Result
from dicom_io.series import load_series
from storage import Ledger
from tests.agent.service.conftest import ct_dataset
from tests.agent.web.test_dashboard import Reply, call

ACCESSION = "ACC-7731-SECRET"
DESCRIPTION = "Secret Spine <b>Protocol</b>"
#: What must never appear anywhere with the option off (the description as written and as escaped).
SECRETS = (ACCESSION, "Secret Spine", "Secret%20Spine", "ACC-7731")

SLICES, SIZE, STEP_MM, PIXEL_MM = 60, 64, 3.0, 2.0
Z_TOP = 0.0  # the first slice; the others go down (inferior) by STEP_MM
#: Column (x index) and rows (y indices) of the vertebral bodies: off the centre column (31.5) by more than
#: the slab's half thickness, so only a slab centred on the landmarks shows them.
SPINE_COL, SPINE_ROWS = 46, (36, 44)
#: (name, label, slice index of the centre): three vertebrae, 12 slices apart, each 8 slices high.
VERTEBRAE = (("L1", 20, 14), ("L2", 21, 26), ("L3", 22, 38))


def position(i: float, j: float, k: float) -> tuple[float, float, float]:
    """LPS mm of voxel (column i, row j, slice k) of the written series."""
    return (i * PIXEL_MM, j * PIXEL_MM, Z_TOP - k * STEP_MM)


def write_ct(series_dir: Path, study_uid: str, series_uid: str) -> list[Path]:
    """Air, a soft-tissue body, and three bone blocks (1300 HU) at the vertebrae of :data:`VERTEBRAE`."""
    series_dir.mkdir(parents=True)
    hu = np.full((SLICES, SIZE, SIZE), -1000, dtype=np.int16)
    hu[:, 8:56, 8:60] = 40
    for _name, _label, centre in VERTEBRAE:
        hu[centre - 4 : centre + 4, SPINE_ROWS[0] : SPINE_ROWS[1], SPINE_COL - 3 : SPINE_COL + 4] = 1300
    files = []
    for k in range(SLICES):
        ds = ct_dataset(
            study_uid=study_uid, series_uid=series_uid, frame_of_reference_uid=series_uid + ".9",
            position=position(0, 0, k), pixels=(hu[k] + 1024).astype(np.int16),
            pixel_spacing=(PIXEL_MM, PIXEL_MM), instance_number=k + 1,
        )
        ds.SliceThickness = STEP_MM
        ds.AccessionNumber = ACCESSION
        ds.SeriesDescription = DESCRIPTION
        path = series_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


@dataclass(frozen=True)
class Scenario:
    spool: Path
    succeeded: int  # with results in the spool
    failed: int
    purged: int  # SUCCEEDED, files removed by retention


def build(ledger: Ledger, spool: Path) -> Scenario:
    t0 = datetime.now(UTC) - timedelta(hours=1)
    ids = []
    for n in range(3):
        study, series = f"1.2.826.0.1.3680043.8.498.{n}", f"1.2.826.0.1.3680043.8.498.{n}.1"
        relpath = f"incoming/{study}/{series}"
        for f in write_ct(spool / relpath, study, series):
            data = f.read_bytes()
            ledger.record_instance(study, series, len(data), relpath, t0 + timedelta(minutes=n),
                                   sop_instance_uid=f.stem, sha256=hashlib.sha256(data).hexdigest())
        (job_id,) = ledger.queue_quiet_series(30, now=t0 + timedelta(minutes=n, seconds=40))
        ids.append(job_id)
    volume = load_series(spool / relpath)
    for _ in ids:
        ledger.claim_job("test-worker", lease_s=10**6, now=t0 + timedelta(minutes=5))
    succeeded, failed, purged = ids
    for job_id in (succeeded, purged):
        out = spool / "outgoing" / str(job_id)
        out.mkdir(parents=True)
        landmarks = [
            # Not on the 0.1 mm grid (92.04, 79.06, -40.53 mm): the dashboard rounds as the SR does.
            Landmark(
                label, position(SPINE_COL + 0.02, sum(SPINE_ROWS) / 2 - 0.47, centre - 0.49), 0.9 - 0.1 * n
            )
            for n, (_name, label, centre) in enumerate(VERTEBRAE)
        ]
        result = Result(np.zeros(volume.shape, np.uint8), landmarks, model_version="test")
        (out / "landmarks.json").write_text(landmarks_json(result, volume))
        ledger.succeed_job(job_id, owner="test-worker", timings={"load": 0.1}, model_version="test",
                           output_path=f"outgoing/{job_id}", destinations=[], now=t0 + timedelta(minutes=6))
    ledger.fail_job(failed, "test failure", owner="test-worker", now=t0 + timedelta(minutes=6))
    ledger.mark_purged(purged, now=t0 + timedelta(minutes=7))
    return Scenario(spool, succeeded, failed, purged)


@pytest.fixture
def scenario(ledger: Ledger, tmp_path: Path) -> Scenario:
    return build(ledger, tmp_path / "spool")


def serve(scenario: Scenario, ledger: Ledger, *, show_patient_data: bool) -> HealthServer:
    settings = Settings(
        storage=StorageSettings(spool_dir=scenario.spool),
        ledger=LedgerSettings(url=ledger.url),
        http=HttpSettings(show_patient_data=show_patient_data),
    )
    server = HealthServer(settings, ledger, model_loaded=lambda: True, port=0, dashboard=Dashboard(ledger))
    server.start()
    return server


@pytest.fixture
def server(scenario: Scenario, ledger: Ledger) -> Iterator[HealthServer]:
    http = serve(scenario, ledger, show_patient_data=False)
    yield http
    http.stop()


@pytest.fixture
def with_patient_data(scenario: Scenario, ledger: Ledger) -> Iterator[HealthServer]:
    http = serve(scenario, ledger, show_patient_data=True)
    yield http
    http.stop()


def png(reply: Reply) -> np.ndarray:
    assert reply.status == 200, reply.raw[:300]
    assert reply.headers["Content-Type"] == "image/png"
    picture = Image.open(io.BytesIO(reply.raw))
    assert isinstance(picture, PngImagePlugin.PngImageFile) and not picture.text  # no metadata
    return np.asarray(picture.convert("RGB"))


def expected_pixel(i: float, j: float, k: float, shape: tuple[int, ...]) -> tuple[int, int]:
    """(row, column) of voxel (i, j, k) in the preview: superior up, anterior left, square pixels."""
    mm_per_px = max(SLICES * STEP_MM, SIZE * PIXEL_MM) / MAX_PX
    assert max(shape[:2]) == MAX_PX
    row = (k + 0.5) * STEP_MM / mm_per_px - 0.5  # slice 0 is the most superior
    column = (j + 0.5) * PIXEL_MM / mm_per_px - 0.5  # row 0 of a slice is the most anterior
    return round(row), round(column)


# --- landmarks and the preview --------------------------------------------------------------------------


def test_the_job_page_lists_the_landmarks_and_shows_the_preview(
    server: HealthServer, scenario: Scenario
) -> None:
    body = call(server, f"/dashboard/jobs/{scenario.succeeded}").body
    rows = re.findall(r'<tr data-landmark="(\w+)"><td>\w+</td><td class="num">([^<]+)</td>'
                      r'<td class="num">(\d+) %</td></tr>', body)
    # Positions to 0.1 mm and certainty as a whole percentage, as the SR states them.
    assert rows == [("L1", "92.0, 79.1, -40.5", "90"), ("L2", "92.0, 79.1, -76.5", "80"),
                    ("L3", "92.0, 79.1, -112.5", "70")]
    assert f'<img src="/api/jobs/{scenario.succeeded}/preview.png"' in body
    for job_id in (scenario.failed, scenario.purged):  # no results to show
        page = call(server, f"/dashboard/jobs/{job_id}").body
        assert "preview.png" not in page and "data-landmark" not in page


def test_the_api_gives_the_landmarks_and_the_preview_link(server: HealthServer, scenario: Scenario) -> None:
    data = json.loads(call(server, f"/api/jobs/{scenario.succeeded}").body)
    assert data["preview"] == f"/api/jobs/{scenario.succeeded}/preview.png"
    assert data["landmarks"][1] == {
        "label": 21, "name": "L2", "position_lps_mm": [92.0, 79.1, -76.5], "certainty_percent": 80
    }
    for job_id in (scenario.failed, scenario.purged):
        data = json.loads(call(server, f"/api/jobs/{job_id}").body)
        assert (data["landmarks"], data["preview"]) == (None, None)


def test_the_preview_of_a_finished_job_is_a_png_with_the_landmarks_on_the_bone(
    server: HealthServer, scenario: Scenario
) -> None:
    reply = call(server, f"/api/jobs/{scenario.succeeded}/preview.png")
    pixels = png(reply)
    assert reply.headers["Cache-Control"] == "private, max-age=300"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert len(reply.raw) < 200_000
    # 180 mm high, 128 mm wide: 320 x 228 pixels of 0.5625 mm.
    assert pixels.shape == (MAX_PX, 228, 3)
    centre_row = (SPINE_ROWS[0] + SPINE_ROWS[1]) / 2 - 0.5
    for _name, _label, centre in VERTEBRAE:
        # The landmark's dot is drawn where the landmark is ...
        r, c = expected_pixel(SPINE_COL, centre_row, centre - 0.5, pixels.shape)
        assert tuple(pixels[r, c]) == POINT_RGB
        # ... and on the vertebral body: bone (white in the bone window) around it, above the dot's radius.
        r, c = expected_pixel(SPINE_COL, SPINE_ROWS[0] + 1, centre - 3, pixels.shape)
        assert tuple(pixels[r, c]) == (255, 255, 255)
    # Disc level between L1 and L2 (soft tissue, grey) and the air in front of the body (black).
    r, c = expected_pixel(SPINE_COL, SPINE_ROWS[0] + 1, 20, pixels.shape)
    assert tuple(pixels[r, c]) == (49, 49, 49)  # 40 HU in the bone window
    r, c = expected_pixel(SPINE_COL, 2, 30, pixels.shape)
    assert tuple(pixels[r, c]) == (0, 0, 0)
    # A second request is answered from memory with the same bytes.
    assert call(server, f"/api/jobs/{scenario.succeeded}/preview.png").raw == reply.raw


def test_the_slab_follows_the_landmarks(scenario: Scenario, ledger: Ledger) -> None:
    """Without landmarks the slab is the middle of the image, which misses the off-centre spine."""
    job = ledger.get_job(scenario.succeeded)
    series_dir = scenario.spool / job.series.spool_path
    landmarks = read_landmarks(scenario.spool / f"outgoing/{job.id}")
    assert landmarks is not None
    r, c = expected_pixel(SPINE_COL, SPINE_ROWS[0] + 1, VERTEBRAE[1][2] - 3, (MAX_PX, 228))
    with_points = np.asarray(Image.open(io.BytesIO(render_preview(series_dir, landmarks))).convert("L"))
    without = np.asarray(Image.open(io.BytesIO(render_preview(series_dir, []))).convert("L"))
    assert (with_points[r, c], without[r, c]) == (255, 49)


def test_no_preview_for_unknown_unfinished_or_purged_jobs(server: HealthServer, scenario: Scenario) -> None:
    for path, says in (
        ("/api/jobs/999999/preview.png", "job 999999 does not exist"),
        (f"/api/jobs/{scenario.failed}/preview.png", "it is FAILED, with no results"),
        (f"/api/jobs/{scenario.purged}/preview.png", "its files were removed"),
    ):
        reply = call(server, path)
        assert (reply.status, reply.headers["Content-Type"]) == (404, "application/json"), path
        assert says in json.loads(reply.body)["error"], path


def test_no_preview_once_the_series_files_are_gone(
    server: HealthServer, scenario: Scenario, ledger: Ledger
) -> None:
    job = ledger.get_job(scenario.succeeded)
    for f in (scenario.spool / job.series.spool_path).iterdir():
        f.unlink()
    reply = call(server, f"/api/jobs/{job.id}/preview.png")
    assert reply.status == 404
    assert json.loads(reply.body)["error"] == (
        f"job {job.id} has no preview: the series' files are no longer in the spool"
    )


# --- patient data ---------------------------------------------------------------------------------------


def every_answer(server: HealthServer, scenario: Scenario) -> dict[str, Reply]:
    """Every page and API answer the dashboard and the endpoint give for the scenario."""
    paths = ["/dashboard", "/dashboard/deliveries", "/dashboard/system", "/api/jobs", "/api/deliveries",
             "/api/system", "/healthz", "/readyz", "/metrics", "/dashboard?state=SUCCEEDED",
             "/api/jobs?state=SUCCEEDED,FAILED"]
    for job_id in (scenario.succeeded, scenario.failed, scenario.purged):
        paths += [f"/dashboard/jobs/{job_id}", f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/preview.png",
                  f"/api/deliveries?job={job_id}"]
    return {path: call(server, path) for path in paths}


def test_with_the_option_off_no_patient_data_in_any_page_or_api_answer(
    server: HealthServer, scenario: Scenario
) -> None:
    answers = every_answer(server, scenario)
    assert answers[f"/api/jobs/{scenario.succeeded}/preview.png"].status == 200
    for path, reply in answers.items():
        body = reply.raw.decode("latin-1")
        for secret in SECRETS:
            assert secret not in body, (path, secret)
    for job in json.loads(answers["/api/jobs"].body)["jobs"]:
        assert "accession_number" not in job and "series_description" not in job
    # The series column shows the UID's end instead.
    cells = re.findall(r'<td class="uid" title="([^"]+)">…([^<]+)</td>', answers["/dashboard"].body)
    assert len(cells) == 3 and all(uid.endswith(end) and len(end) > 20 for uid, end in cells)


def test_with_the_option_on_admins_see_accession_number_and_series_description(
    with_patient_data: HealthServer, scenario: Scenario, ledger: Ledger
) -> None:
    escaped = "Secret Spine &lt;b&gt;Protocol&lt;/b&gt;"
    jobs_page = call(with_patient_data, "/dashboard").body
    cells = re.findall(r'<td class="uid" title="[^"]+">([^<]*)</td>', jobs_page)
    # Instead of UID fragments; for the purged job too while its series is still in the spool.
    assert cells == [f"{ACCESSION} · {escaped}"] * 3
    job_page = call(with_patient_data, f"/dashboard/jobs/{scenario.succeeded}").body
    assert f"<dt>accession number</dt><dd>{ACCESSION}</dd>" in job_page
    assert f"<dt>series description</dt><dd>{escaped}</dd>" in job_page
    assert "<b>Protocol" not in jobs_page + job_page
    data = json.loads(call(with_patient_data, "/api/jobs").body)
    pairs = {(j["accession_number"], j["series_description"]) for j in data["jobs"]}
    assert pairs == {(ACCESSION, DESCRIPTION)}
    detail = json.loads(call(with_patient_data, f"/api/jobs/{scenario.failed}").body)
    assert (detail["accession_number"], detail["series_description"]) == (ACCESSION, DESCRIPTION)
    # The ledger itself holds none of it.
    with ledger.engine.connect() as connection:
        dump = "\n".join(connection.connection.driver_connection.iterdump())  # type: ignore[union-attr]
    assert ACCESSION not in dump and "Secret Spine" not in dump
    # A series whose files retention removed: the UID again, and the page says why.
    failed = ledger.get_job(scenario.failed)
    shutil.rmtree(scenario.spool / failed.series.spool_path)
    page = call(with_patient_data, f"/dashboard/jobs/{scenario.failed}").body
    assert "<dt>accession number</dt><dd>(series no longer in the spool)</dd>" in page
    jobs_page = call(with_patient_data, "/dashboard").body
    cells = re.findall(r'<td class="uid" title="([^"]+)">([^<]*)</td>', jobs_page)
    assert [label.startswith("…") and uid.endswith(label[1:]) for uid, label in cells] == [False, True, False]
    data = json.loads(call(with_patient_data, f"/api/jobs/{scenario.failed}").body)
    assert (data["accession_number"], data["series_description"]) == (None, None)


def test_the_option_is_off_by_default(ledger: Ledger) -> None:
    assert Settings().http.show_patient_data is False
    assert "\nshow_patient_data = false\n" in example_toml()
    assert Dashboard(ledger).show_patient_data is False
