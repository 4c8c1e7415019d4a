"""The documented install: build the wheel, install it into a fresh venv outside the checkout, run it.

What an admin does (docs/install.md): ``pip wheel --no-deps -w dist .`` in the checkout, then
``python3 -m venv /opt/spine-agent/venv && /opt/spine-agent/venv/bin/pip install dist/*.whl``. The
installed copy must find its shipped weights (they travel as data files, setup.py), start ``serve`` (until
it listens; then SIGTERM) and run ``predict`` -- from a folder that is not the checkout, with no
PYTHONPATH, so nothing can come from the source tree.

Slow (about two minutes: pip installs torch and the rest from the local wheels); CI runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from inference.phantoms import generate_phantom, write_dicom_series
from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
#: What a wheel is built from: everything but local state (venvs, build output, caches, data).
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache",
    ".pytest_cache", "spine-agent-data", "demo-out", "runs", "tmp", ".cache", "node_modules",
)


def _shipped_dir() -> Path:
    """The newest weights folder in the checkout (the one the installed copy must load)."""
    from inference.engine.engine import default_weights_dir

    return default_weights_dir(REPO / "weights")


def _shipped_version() -> str:
    return str(json.loads((_shipped_dir() / "engine.json").read_text())["version"])


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPINE_AGENT_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from a copy of the checkout; returns the venv's bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    dist = root / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        capture_output=True, text=True, timeout=600, check=False, env=_clean_env(),
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("spine_agent-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
        capture_output=True, text=True, timeout=1200, check=False, env=_clean_env(),
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return venv / "bin"


def test_the_wheel_carries_the_shipped_weights(installed: Path, tmp_path: Path) -> None:
    probe = subprocess.run(
        [str(installed / "python"), "-c",
         "import inference.engine.engine as e; print(e.__file__); print(e.default_weights_dir())"],
        capture_output=True, text=True, cwd=tmp_path, env=_clean_env(), timeout=120, check=False,
    )
    assert probe.returncode == 0, probe.stderr
    module, weights = probe.stdout.split()
    venv = installed.parent
    assert Path(module).is_relative_to(venv), module  # the installed copy, not the checkout
    assert Path(weights) == venv / "share" / "spine-agent" / "weights" / _shipped_dir().name


def test_serve_from_the_wheel_listens_then_stops_on_sigterm(installed: Path, tmp_path: Path) -> None:
    dicom_port, http_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[dicom]\nport = {dicom_port}\nallowed_calling_aes = ["PACS"]\n'
        f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'[storage]\nspool_dir = "{tmp_path / "spool"}"\ndisk_reserve_mb = 0\n'
        f'[ledger]\nurl = "sqlite:///{tmp_path / "ledger.sqlite3"}"\n'
        f'[http]\nport = {http_port}\n'
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(installed / "spine-agent"), "--config", str(config), "serve", "--grace", "0"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=_clean_env(),
        )
    try:
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and proc.poll() is None and not ready:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as r:
                    ready = r.status == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert ready, log_path.read_text()
        echo = subprocess.run(
            [str(installed / "spine-agent"), "--config", str(config), "echo"],
            capture_output=True, text=True, cwd=tmp_path, env=_clean_env(), timeout=60, check=False,
        )
        assert echo.returncode == 0 and "Success" in echo.stdout, echo.stdout + echo.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    text = log_path.read_text()
    assert rc == 0, text
    version = _shipped_version()
    for line in (
        f"configuration: {config}",
        "destination pacs: PACS@127.0.0.1",
        f"ledger: sqlite:///{tmp_path / 'ledger.sqlite3'}",
        f"engine: weights version {version}",
        "spine-agent stopped",
    ):
        assert line in text, f"{line!r} not in the log:\n{text}"
    assert "Traceback" not in text


def test_predict_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    phantom = generate_phantom(seed=910_001, fov="lumbar", spacing=(1.5, 1.5, 3.0))
    write_dicom_series(phantom, tmp_path / "series")
    out = tmp_path / "out"
    result = subprocess.run(
        [str(installed / "spine-agent"), "predict", "--input", str(tmp_path / "series"), "--out", str(out),
         "--device", "cpu"],
        capture_output=True, text=True, cwd=tmp_path, env=_clean_env(), timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    landmarks = json.loads((out / "prediction_landmarks.json").read_text())
    assert landmarks["model_version"] == _shipped_version()
    assert (out / "prediction_ctd.json").is_file() and (out / "prediction_msk.nii.gz").is_file()
