"""The dashboard of a real agent (``spine-agent serve``) after the engine labelled a phantom series sent
with DCMTK's storescu: the job's landmarks and its sagittal preview PNG, 404 for an unknown job, and the
series' Accession Number and Series Description nowhere until ``http.show_patient_data`` is turned on."""

from __future__ import annotations

import io
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.web.preview import MAX_PX, POINT_RGB
from tests.conftest import free_port
from tests.e2e.conftest import AgentProcess, PhantomSeries, make_agent, read_json, run_one_series

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _get(agent: AgentProcess, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.http_port}{path}", timeout=60) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_the_dashboard_shows_a_finished_jobs_landmarks_and_preview(
    phantom_series: PhantomSeries,
    agent_factory: list[AgentProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The destination is a closed port: the deliveries wait, the job is SUCCEEDED all the same.
    agent = make_agent(tmp_path / "agent", free_port())
    agent_factory.append(agent)
    job = run_one_series(agent, phantom_series.files)
    engine = read_json(agent.directory / "spool" / str(job.output_path) / "landmarks.json")["landmarks"]

    # The job's page lists what the engine found, as the SR states it (0.1 mm, whole percentages).
    status, _, body = _get(agent, f"/dashboard/jobs/{job.id}")
    page = body.decode()
    shown = re.findall(r'<tr data-landmark="(\w+)"><td>\w+</td><td class="num">([^<]+)</td>'
                       r'<td class="num">(\d+) %</td></tr>', page)
    assert status == 200 and len(shown) == len(engine) >= 3
    for (name, position, certainty), lm in zip(shown, engine, strict=True):
        assert name == lm["name"]
        assert position == ", ".join(f"{v:.1f}" for v in lm["position_lps_mm"])
        assert int(certainty) == round(100 * lm["confidence"])
    assert f'<img src="/api/jobs/{job.id}/preview.png"' in page

    status, content_type, png = _get(agent, f"/api/jobs/{job.id}/preview.png")
    assert (status, content_type) == (200, "image/png")
    if docs_copy := os.environ.get("SPINE_AGENT_DASHBOARD_PREVIEW_COPY"):  # docs/images/dashboard-preview.png
        Path(docs_copy).write_bytes(png)
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and max(picture.size) == MAX_PX and len(png) < 200_000
    pixels = np.asarray(picture.convert("RGB"))
    assert (pixels == POINT_RGB).all(axis=-1).sum() >= 10 * len(engine)  # the dots and names are drawn
    grey = pixels[(pixels[..., 0] == pixels[..., 1]) & (pixels[..., 1] == pixels[..., 2])][:, 0]
    assert (grey >= 128).sum() > 500 and (grey == 0).sum() > 500  # bone and air in the bone window

    status, content_type, body = _get(agent, "/api/jobs/999999/preview.png")
    assert (status, content_type) == (404, "application/json")
    assert json.loads(body) == {"error": "job 999999 does not exist"}

    # Patient data: nowhere with the option off (the default) ...
    accession = phantom_series.info.accession
    description = f"seed {phantom_series.phantom.spec.seed}"
    paths = ["/dashboard", f"/dashboard/jobs/{job.id}", "/dashboard/deliveries", "/dashboard/system",
             "/api/jobs", f"/api/jobs/{job.id}", f"/api/jobs/{job.id}/preview.png", "/api/deliveries",
             "/api/system", "/readyz", "/metrics"]
    for path in paths:
        status, _, body = _get(agent, path)
        assert status == 200, path
        assert accession.encode() not in body and description.encode() not in body, path

    # ... shown instead of the UID once an admin turns it on (here from the environment) and restarts.
    assert agent.terminate() == 0
    monkeypatch.setenv("SPINE_AGENT_HTTP__SHOW_PATIENT_DATA", "true")
    agent.start()
    _, _, body = _get(agent, "/dashboard")
    cells = re.findall(r'<td class="uid" title="[^"]+">([^<]*)</td>', body.decode())
    assert len(cells) == 1 and cells[0].startswith(f"{accession} · Phantom lumbar {description}")
    _, _, body = _get(agent, f"/api/jobs/{job.id}")
    assert json.loads(body)["accession_number"] == accession
    assert agent.terminate() == 0
