"""``python -m tests.e2e.gated_agent GATE <spine-agent arguments>``: the agent, its engine behind a gate.

Before the agent starts, ``Engine.predict`` is wrapped: on entry it creates ``GATE.entered``, then waits
until the file ``GATE`` exists, then runs the real engine. A test can so act *while a job is inside the
engine* (send SIGTERM, kill) by waiting for the ``.entered`` file instead of guessing from timing, and lets
the job go on by creating ``GATE``. Nothing else of the agent is changed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any


def main() -> None:
    gate = Path(sys.argv[1])
    from inference.engine.engine import Engine

    real_predict = Engine.predict

    def gated_predict(self: Engine, volume: Any) -> Any:
        gate.with_name(gate.name + ".entered").touch()
        while not gate.exists():
            time.sleep(0.05)
        return real_predict(self, volume)

    Engine.predict = gated_predict  # type: ignore[method-assign]
    from agent.cli import main as agent_main

    sys.argv = ["spine-agent", *sys.argv[2:]]
    agent_main()


if __name__ == "__main__":
    main()
