"""Fixtures shared by the reliability tests (issues 15 and 16)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.suite_support import SuiteAgent, make_agent

#: ``dicom.max_associations`` of :func:`limit_agent`.
LIMIT = 3


@pytest.fixture(scope="session")
def limit_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuiteAgent]:
    """One ``spine-agent serve`` with ``dicom.max_associations = 3`` and a 2 s ``dicom.idle_timeout_s``,
    shared by the tests of the association limit (test_fix_associations.py, test_suite_load.py; one start
    instead of three): each leaves no association open. What it receives is never queued (quiet time of
    an hour), so it stays idle between them."""
    agent = make_agent(
        tmp_path_factory.mktemp("limit-agent"),
        dicom={
            "max_associations": LIMIT,
            "idle_timeout_s": 2.0,
            "allowed_calling_aes": ["FIXTEST", "ECHOSCU", "STORESCU"],
            "stable_age_s": 3600.0,
        },
        engine_delay_s=0.0,
    )
    try:
        agent.start()
        yield agent
    finally:
        agent.kill()
