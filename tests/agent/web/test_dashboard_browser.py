"""The admin dashboard in a real browser: headless Debian Chromium driven by Selenium.

Set ``SPINE_AGENT_DASHBOARD_SCREENSHOT=docs/images/dashboard.png`` to also write the screenshot the docs
show.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from agent.web.http import HealthServer
from config import Settings
from config.settings import LedgerSettings, StorageSettings
from storage import DeliveryState, JobState, Ledger
from tests.agent.web.test_dashboard import TOKEN, XSS, Jobs, build_scenario, start_server
from tests.support import require_module, require_tool

pytestmark = pytest.mark.integration

#: Flags for Chromium as root in a container, with nothing reaching out to the network.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,760",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    webdriver = require_module("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    # Leave prompts open for the test to answer (the default would dismiss them).
    options.set_capability("unhandledPromptBehavior", "ignore")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def agent(ledger: Ledger, tmp_path: Path) -> Iterator[tuple[HealthServer, Jobs]]:
    """The HTTP endpoint with the dashboard (actions enabled) over the scenario's ledger."""
    spool = tmp_path / "spool"
    spool.mkdir()
    jobs = build_scenario(ledger, spool)
    settings = Settings(storage=StorageSettings(spool_dir=spool), ledger=LedgerSettings(url=ledger.url))
    http = start_server(settings, ledger, TOKEN)
    yield http, jobs
    http.stop()


def test_an_admin_retries_a_failed_job_and_a_delivery_in_the_browser(
    browser: Any, agent: tuple[HealthServer, Jobs], ledger: Ledger, tmp_path: Path
) -> None:
    server, jobs = agent
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 15)
    browser.get(server.url + "/")  # redirected to /dashboard
    assert browser.current_url.endswith("/dashboard")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-job-id]")
    assert [r.get_attribute("data-job-id") for r in rows] == [
        str(jobs.queued),
        str(jobs.failed),
        str(jobs.succeeded),
    ]
    failed_row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{jobs.failed}"]')
    # The failure reason is shown as text: no script ran (an alert would make the next call raise).
    assert failed_row.find_element(By.CSS_SELECTOR, "td.reason").text == XSS
    assert browser.execute_script("return document.querySelectorAll('main script, main img').length") == 0

    browser.save_screenshot(str(tmp_path / "jobs.png"))
    docs_copy = os.environ.get("SPINE_AGENT_DASHBOARD_SCREENSHOT")
    if docs_copy:
        browser.save_screenshot(docs_copy)

    # Retry the FAILED job: the page asks for the token, which is answered in the prompt.
    failed_row.find_element(By.CSS_SELECTOR, "button[data-action$='/retry']").click()
    prompt = wait.until(expected_conditions.alert_is_present())
    assert "Admin token" in prompt.text
    prompt.send_keys(TOKEN)
    prompt.accept()
    wait.until(
        expected_conditions.text_to_be_present_in_element((By.ID, "flash"), f"job {jobs.failed} is QUEUED")
    )
    assert ledger.get_job(jobs.failed).state == JobState.QUEUED
    # The page refreshed itself in place: the row shows the new state and no longer offers a retry.
    wait.until(
        expected_conditions.presence_of_element_located(
            (By.CSS_SELECTOR, f'tr[data-job-id="{jobs.failed}"][data-state="QUEUED"]')
        )
    )
    assert browser.execute_script("return sessionStorage.getItem('spine-agent.admin-token')") == TOKEN
    browser.save_screenshot(str(tmp_path / "retried.png"))

    # On the job's page, retry the failed delivery: the token kept in this tab is used, no prompt.
    browser.find_element(By.CSS_SELECTOR, f'a[href="/dashboard/jobs/{jobs.succeeded}"]').click()
    wait.until(expected_conditions.title_contains(f"Job {jobs.succeeded}"))
    browser.find_element(
        By.CSS_SELECTOR, f'button[data-action="/api/deliveries/{jobs.failed_delivery}/retry"]'
    ).click()
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "flash"), "to backup is PENDING"))
    states = {d.id: d.state for d in ledger.list_deliveries(jobs.succeeded)}
    assert states[jobs.failed_delivery] == DeliveryState.PENDING
    wait.until(
        expected_conditions.presence_of_element_located(
            (By.CSS_SELECTOR, f'tr[data-delivery-id="{jobs.failed_delivery}"][data-state="PENDING"]')
        )
    )
    browser.save_screenshot(str(tmp_path / "job.png"))
    for name in ("jobs.png", "retried.png", "job.png"):  # real pages, decoded: not blank, not an error stub
        pixels = imread(str(tmp_path / name))[..., :3]
        assert pixels.shape[0] >= 600 and pixels.shape[1] >= 800, name
        assert pixels.std() > 0.05 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, name


def test_a_finished_jobs_landmarks_and_preview_in_the_browser(
    browser: Any, ledger: Ledger, tmp_path: Path
) -> None:
    """The job's page in Chromium: the landmark table, and the preview PNG loaded (CSP allows it)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.agent.web.test_dashboard_results import VERTEBRAE, build, serve

    scenario = build(ledger, tmp_path / "spool")
    server = serve(scenario, ledger, show_patient_data=False)
    try:
        browser.get(f"{server.url}/dashboard/jobs/{scenario.succeeded}")
        rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-landmark]")
        assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == [v[0] for v in VERTEBRAE]
        assert rows[0].text == "L1 92.0, 79.1, -40.5 90 %"
        image = browser.find_element(By.CSS_SELECTOR, "figure.preview img")
        WebDriverWait(browser, 15).until(
            lambda driver: driver.execute_script("return arguments[0].complete", image)
        )
        size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
        assert size == [228, 320]  # decoded by the browser, not a broken image
        assert image.size["height"] == 320
        browser.save_screenshot(str(tmp_path / "job-results.png"))
        docs_copy = os.environ.get("SPINE_AGENT_DASHBOARD_RESULTS_SCREENSHOT")
        if docs_copy:
            browser.save_screenshot(docs_copy)
    finally:
        server.stop()
