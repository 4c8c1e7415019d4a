"""Shared fixtures and marker handling."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from storage import Ledger
from tests.support import free_port, in_ci, require_tool

__all__ = ["free_port", "require_tool"]  # re-exported: older tests import them from here


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    skip_pg = pytest.mark.skip(reason="set SPINE_AGENT_TEST_PG_URL to run PostgreSQL tests")
    for item in items:
        # get_closest_marker, not ``in item.keywords``: keywords also hold folder names (tests/gpu).
        if item.get_closest_marker("gpu") is not None and not has_cuda:
            item.add_marker(skip_gpu)
        if item.get_closest_marker("postgres") is not None and not os.environ.get("SPINE_AGENT_TEST_PG_URL"):
            item.add_marker(skip_pg)


# --- in CI a skip is a failure ----------------------------------------------------------------------------
# .ci/run installs every tool, server and dependency and starts PostgreSQL, so in CI a skipped test means
# something is missing and the run must not look green. Only ``gpu``-marked tests may skip (no CUDA there).


def _fail_skip_in_ci(
    report: pytest.TestReport | pytest.CollectReport, node: pytest.Item | pytest.Collector, what: str
) -> None:
    """In CI, turn a skip (not an xfail) of anything but a ``gpu``-marked test into a failure."""
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail") or node.get_closest_marker("gpu"):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    report.outcome = "failed"
    report.longrepr = f"{what} skipped in CI, where only gpu tests may skip: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_skip_in_ci(report, item, "test")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_skip_in_ci(report, collector, "module")
    return report


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    led = Ledger(ledger_url, max_attempts=3)
    led.upgrade()
    yield led
    led.close()
