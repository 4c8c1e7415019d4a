"""What a radiologist sees: our SEG and SR opened in the OHIF Viewer v3, in a real (headless) browser.

The PACS is Orthanc with its DICOMweb plugin; it holds the CT (sent with DCMTK's storescu, as a scanner
would) and receives the SEG and SR from ``spine-agent serve``, to which the same series was routed. OHIF
(``@ohif/app``, :data:`tests.integration.ohif.OHIF_VERSION`, its prebuilt ``dist/``) reads the study
over DICOMweb; Chromium renders it with WebGL on SwiftShader. Everything is checked through the page:

* SR: opened from the study panel and tracked ("Yes"), the measurement panel lists one entry per vertebra
  named by its finding site ("L3 vertebra"); clicking an entry shows the CT slice nearest to the landmark
  (by the slice count in the viewport overlay) with a point drawn there (an SVG circle and its
  label, whose pixel position is the landmark's to within a pixel).
* SEG: loaded, the segmentation panel lists the segments the agent wrote (today the engine's mask gives
  one, "Vertebral column") with the colour we recommend, and the overlay is painted over the spine
  (that colour appears in the viewport).

Screenshots go to the test's folder; with ``SPINE_AGENT_OHIF_SCREENSHOTS=docs/images`` they are also
written there (``ohif-sr-points.png``, ``ohif-seg.png``), which is how the docs' pictures are made. The
test's folder also keeps ``ohif-sr-prompt.png`` (the SR opened, before tracking) and
``browser-console.txt`` (the page's console at the end), for a human to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from dicom_io.codes import vertebra_code
from storage import DeliveryState, JobState
from tests.conftest import require_tool
from tests.e2e.conftest import AgentProcess, PhantomSeries, make_agent, read_json, storescu, wait_for
from tests.integration.ohif import OhifServer, chromium, require_ohif_dist
from tests.integration.orthanc import OrthancServer, require_orthanc_dicomweb, start_orthanc

pytestmark = pytest.mark.integration

SCREENSHOTS_ENV = "SPINE_AGENT_OHIF_SCREENSHOTS"
#: "Vertebral column" in the SEG's recommended display colour (dicom_io.seg), as the panel's swatch shows it.
COLUMN_SWATCH = "rgb(241, 214, 145)"


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[OrthancServer]:
    require_orthanc_dicomweb()
    server = start_orthanc(tmp_path / "orthanc", dicomweb=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


def test_radiologist_sees_labelled_points_and_the_spine_segmentation_in_ohif(
    pacs: OrthancServer,
    phantom_series: PhantomSeries,
    agent_factory: list[AgentProcess],
    browser: Any,
    tmp_path: Path,
) -> None:
    dist = require_ohif_dist()
    require_tool("storescu")
    started = time.monotonic()

    # The PACS has the CT; the same series is routed to the agent, whose results go back to the PACS.
    storescu_to(pacs, phantom_series.files)
    agent = make_agent(tmp_path / "agent", pacs.dicom_port)
    agent_factory.append(agent)
    agent.start()
    storescu(agent.dicom_port, phantom_series.files)
    ledger = agent.ledger()
    wait_for(lambda: any(j.state in (JobState.SUCCEEDED, JobState.FAILED) for j in ledger.list_jobs()), 150)
    (job,) = ledger.list_jobs()
    job = ledger.get_job(job.id)
    assert job.state == JobState.SUCCEEDED, job.failure_reason
    wait_for(lambda: all(d.state == DeliveryState.DELIVERED for d in ledger.list_deliveries(job.id)), 60)
    # What the page must show: the engine's landmarks as the worker recorded them, the segments it wrote.
    out = agent.directory / "spool" / str(job.output_path)
    landmarks = read_json(out / "landmarks.json")["landmarks"]
    expected = {vertebra_code(lm["label"]).meaning: np.asarray(lm["position_lps_mm"]) for lm in landmarks}
    assert len(expected) >= 3
    segments = [str(s.SegmentLabel) for s in pydicom.dcmread(out / "seg.dcm").SegmentSequence]
    slices = _slices(phantom_series.files)

    ohif = OhifServer(dist, pacs.dicomweb_url).start()
    try:
        shots = _look(browser, ohif, phantom_series.info.study_uid, expected, segments, slices, tmp_path)
    finally:
        ohif.stop()
    assert agent.terminate() == 0

    target = os.environ.get(SCREENSHOTS_ENV)
    if target:
        for shot in shots:
            shutil.copyfile(shot, Path(target) / shot.name)
    assert time.monotonic() - started < 180, "the issue asks for this test to stay under 3 minutes"


def _look(
    browser: Any,
    ohif: OhifServer,
    study_uid: str,
    expected: dict[str, np.ndarray],
    segments: list[str],
    slices: list[pydicom.Dataset],
    folder: Path,
) -> list[Path]:
    from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def until(condition: Callable[[Any], Any], what: str, timeout_s: float = 60) -> Any:
        try:
            return WebDriverWait(browser, timeout_s, poll_frequency=0.25).until(condition)
        except Exception as exc:
            browser.save_screenshot(str(folder / "failure.png"))
            console = "\n".join(e["message"][:300] for e in browser.get_log("browser")[-40:])
            raise AssertionError(f"OHIF never showed {what}; console:\n{console}") from exc

    def poll(condition: Callable[[Any], Any], timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = condition(browser)
            if found:
                return found
            time.sleep(0.25)
        return None

    def element_with_text(text: str) -> Any:
        return until(
            lambda d: next(iter(d.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']")), None),
            f"'{text}'",
        )

    def click(text: str) -> None:
        """Click the element showing ``text`` once nothing (a loading veil) lies over it."""

        def clicked(d: Any) -> bool:
            try:
                element_with_text(text).click()
            except (ElementClickInterceptedException, StaleElementReferenceException):
                return False
            return True

        until(clicked, f"'{text}' free to click")

    def titles() -> list[str]:
        return [e.text for e in browser.find_elements(By.CSS_SELECTOR, "[data-cy=data-row-title]")]

    def overlay_slice(_: Any) -> int | None:
        """The viewport's slice, as the "(k/N)" of its overlay: k counts from the head end, from 1."""
        shown = browser.find_elements(By.CSS_SELECTOR, "[data-cy=viewport-overlay-bottom-right]")
        match = re.search(r"\((\d+)/(\d+)\)", shown[0].text) if shown else None
        return int(match.group(1)) if match else None

    def show(name: str) -> tuple[int, int, int]:
        """Click the vertebra's entry until the viewport shows the slice nearest its point (either one when
        the point lies half-way between two): a click that lands while the page re-renders is lost."""
        k, column, row = _nearest_pixel(slices, expected[name])

        def on_slice(d: Any) -> bool:
            return abs((overlay_slice(d) or -9) - k) <= 1

        for _attempt in range(3):
            click(name)
            if poll(on_slice, 15):
                break
        until(on_slice, f"{name} on slice {k} from the head", timeout_s=5)
        return k, column, row

    def open_panel(button: str, shows: Callable[[Any], Any], what: str) -> None:
        for _attempt in range(3):
            browser.find_element(By.CSS_SELECTOR, f"[data-cy={button}]").click()
            if poll(shows, 15):
                return
        until(shows, what, timeout_s=5)

    browser.get(ohif.viewer_url(study_uid))
    # The study panel lists the CT and our two results, by Series Description.
    sr_thumbnail = element_with_text("Vertebra landmarks (spine-agent, research use only)")
    element_with_text("Spine segmentation (spine-agent, research use only)")
    until(lambda d: overlay_slice(d) is not None, "the CT in the viewport")

    # SR: open it and track its measurements.
    ActionChains(browser).double_click(sr_thumbnail).perform()
    element_with_text("Yes")
    time.sleep(1.0)  # the SR's own viewport, before tracking: kept beside the others for a human to check
    browser.save_screenshot(str(folder / "ohif-sr-prompt.png"))
    click("Yes")  # "Do you want to continue tracking measurements for this study?"
    open_panel("trackedMeasurements-btn", lambda d: len(titles()) >= len(expected), "the measurement list")
    assert sorted(titles()) == sorted(expected), "one entry per vertebra, named by its finding site"

    for name in expected:
        _, column, row = show(name)

        # the point drawn on it: its label gives the pixel under it, (column, row, slice), and its HU
        def point_here(d: Any, column: int = column, row: int = row) -> list[str] | None:
            labels = _probe_labels(d)
            ijk = re.fullmatch(r"\((\d+), (\d+), (\d+)\)", labels[0]) if labels else None
            if labels is None or ijk is None or "HU" not in labels[1]:
                return None
            near = abs(int(ijk.group(1)) - column) <= 1 and abs(int(ijk.group(2)) - row) <= 1
            return labels if near else None

        until(point_here, f"the point of {name} at column {column}, row {row}", timeout_s=20)
    middle = list(expected)[len(expected) // 2]
    show(middle)
    time.sleep(1.0)  # let the last render settle for the picture
    points = folder / "ohif-sr-points.png"
    browser.save_screenshot(str(points))
    before_seg = _segment_coloured_pixels(points)

    # SEG: open it, load it over the CT, list its segments.
    seg_thumbnail = element_with_text("Spine segmentation (spine-agent, research use only)")
    ActionChains(browser).double_click(seg_thumbnail).perform()
    click("LOAD")
    open_panel("panelSegmentation-btn", lambda d: titles() == segments, f"the segments {segments}")
    swatches = browser.find_elements(By.CSS_SELECTOR, "[data-cy=data-row-colorhex]")
    colours = dict(zip(titles(), (s.get_attribute("style") for s in swatches), strict=True))
    if "Vertebral column" in colours:
        assert colours["Vertebral column"] == f"background-color: {COLUMN_SWATCH};"
    # Back to the middle vertebra's slice, then show the segments beside the overlay.
    open_panel("trackedMeasurements-btn", lambda d: middle in titles(), "the measurement list again")
    show(middle)
    open_panel("panelSegmentation-btn", lambda d: titles() == segments, "the segment list again")
    seg = folder / "ohif-seg.png"
    deadline = time.monotonic() + 30
    while True:  # the labelmap is painted once its frames are in
        time.sleep(1.0)
        browser.save_screenshot(str(seg))
        painted = _segment_coloured_pixels(seg)
        if painted > before_seg + 500 or time.monotonic() > deadline:
            break
    assert painted > before_seg + 500, f"no SEG overlay painted ({before_seg} -> {painted} pixels)"
    console = "\n".join(f"{e['level']} {e['message']}" for e in browser.get_log("browser"))
    (folder / "browser-console.txt").write_text(console + "\n")
    return [points, seg]


def storescu_to(pacs: OrthancServer, files: list[Path]) -> None:
    """Store the CT in the PACS (what the scanner did before the PACS routed the series to the agent)."""
    import subprocess

    result = subprocess.run(
        [require_tool("storescu"), "-aec", pacs.aet, "127.0.0.1", str(pacs.dicom_port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def _slices(files: list[Path]) -> list[pydicom.Dataset]:
    """The CT's headers from the head end to the feet (highest patient z first, as OHIF counts them)."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    return sorted(headers, key=lambda ds: -float(ds.ImagePositionPatient[2]))


def _nearest_pixel(slices: list[pydicom.Dataset], lps: np.ndarray) -> tuple[int, int, int]:
    """(k, column, row): the slice nearest to ``lps`` (1 = the head end) and the point's pixel on it."""

    def distance(ds: pydicom.Dataset) -> float:
        normal = np.cross(*np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3)))
        return abs(float(np.dot(lps - np.asarray(ds.ImagePositionPatient, float), normal)))

    k = min(range(len(slices)), key=lambda n: distance(slices[n]))
    ds = slices[k]
    row_dir, col_dir = np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3))
    offset = lps - np.asarray(ds.ImagePositionPatient, float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    column = round(float(np.dot(offset, row_dir)) / column_spacing)
    row = round(float(np.dot(offset, col_dir)) / row_spacing)
    return k + 1, column, row


def _probe_labels(driver: Any) -> list[str] | None:
    """The text lines of the point drawn in the viewport's annotation layer, when one is drawn."""
    lines = driver.execute_script(
        "const layer = document.querySelector('svg.svg-layer');"
        "if (!layer || !layer.querySelector('circle')) return null;"
        "return Array.from(layer.querySelectorAll('tspan')).map(t => t.textContent);"
    )
    return lines if lines and len(lines) >= 2 else None


def _segment_coloured_pixels(png: Path) -> int:
    """Pixels tinted like the column segment (a warm yellow over grey CT), counted in a screenshot."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(np.count_nonzero((r - b > 40) & (g - b > 25) & (r >= g) & (r > 90)))
