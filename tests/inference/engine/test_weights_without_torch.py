"""Finding and checking the shipped weights needs no torch: ``serve``'s start-up checks and ``config
check`` use :mod:`inference.engine.weights`, and importing the engine (torch) for them cost about 0.8 s of
every start (1.8 s -> 0.9 s for the reliability suite's agent, which starts some 40 times a run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_the_start_up_checks_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from agent.service.preflight import startup_problems\n"
        "from agent.service.service import AgentService\n"
        "from config import Settings\n"
        "startup_problems(Settings(), weights=True)  # whatever it finds on this machine\n"
        "from inference.engine import WeightsError, default_weights_dir\n"
        "from inference.engine.weights import verify_checksums\n"
        "verify_checksums(default_weights_dir())\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_engine_still_offers_its_names() -> None:
    from inference.engine import Engine, WeightsError, default_weights_dir
    from inference.engine.engine import Engine as Same

    assert Engine is Same and issubclass(WeightsError, Exception) and default_weights_dir().is_dir()
