"""``python -m agent`` is ``spine-agent``."""

from agent.cli import main

main()
