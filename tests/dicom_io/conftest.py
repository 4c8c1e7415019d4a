"""Fixtures for the result-writer tests: a small CT series on disk and results on its grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dicom_io.ct_series import CTSeries, write_ct_series


@pytest.fixture
def ct_series(tmp_path: Path) -> CTSeries:
    return write_ct_series(tmp_path / "ct")
