"""``python -m agent.cli`` is ``spine-agent``."""

from agent.cli.app import main

main()
