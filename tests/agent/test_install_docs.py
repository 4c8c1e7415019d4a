"""The install commands of README.md, docs/install.md and docs/operations.md work on a fresh Debian host,
as walked in a booted Debian 12 container (issue 17): the CPU-only torch of the version the wheel pins
is installed before the wheel (PyPI's build of it is the CUDA one), the venv comes from the
distribution's ``python3`` (any supported version, not one named minor version), and the sysusers file
goes into a folder the command creates (a fresh Debian has no /etc/sysusers.d)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("README.md", "docs/install.md", "docs/operations.md")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _torch_pin() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dependencies = pyproject["project"]["dependencies"]
    (pin,) = [d for d in dependencies if re.match(r"torch\s*==", d)]
    return pin.split("==", 1)[1].strip()


def _lines(page: str) -> list[str]:
    return (ROOT / page).read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("page", PAGES)
def test_the_cpu_torch_of_the_pinned_version_is_installed_before_the_wheel(page: str) -> None:
    lines = _lines(page)
    wheel_line = re.compile(r"/venv/bin/pip install \S*spine_agent-")
    wheel = next(i for i, line in enumerate(lines) if wheel_line.search(line))
    torch = [i for i, line in enumerate(lines) if "/venv/bin/pip install torch==" in line]
    assert torch, f"{page}: no CPU torch line before the wheel"
    line = lines[torch[0]]
    assert torch[0] < wheel, f"{page}: the torch line comes after the wheel's"
    assert f"torch=={_torch_pin()} " in line, f"{page}: {line!r} is not pyproject's pin {_torch_pin()}"
    assert f"--index-url {CPU_INDEX}" in line, f"{page}: {line!r} does not use PyTorch's CPU index"


@pytest.mark.parametrize("page", PAGES)
def test_the_program_venv_uses_the_distributions_python3(page: str) -> None:
    named = [line for line in _lines(page) if re.search(r"python3\.\d+ -m venv", line)]
    assert not named, f"{page}: a venv from one minor version (3.11-3.13 are supported): {named}"


@pytest.mark.parametrize("page", ("docs/install.md", "docs/operations.md"))
def test_the_sysusers_file_is_installed_into_a_folder_the_command_creates(page: str) -> None:
    target = "/etc/sysusers.d/spine-agent.conf"
    (line,) = [line for line in _lines(page) if target in line and "install" in line]
    assert re.match(r"install -D ", line), f"{page}: {line!r} fails on a host without /etc/sysusers.d"
