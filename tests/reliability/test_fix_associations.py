"""Issue 16 (3): ``dicom.max_associations`` admits exactly that many peers under a burst, idle
connections do not hold slots and are closed after ``dicom.idle_timeout_s``, each refusal is logged once.

``spine-agent serve`` runs as a process; the peers are real: pynetdicom SCUs over loopback released by a
barrier at the same instant, raw TCP connections that never speak, and DCMTK echoscu.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import require_tool
from tests.reliability.conftest import LIMIT
from tests.reliability.suite_support import SuiteAgent

pytestmark = pytest.mark.integration

PEERS = 6


def _burst(agent: SuiteAgent) -> tuple[int, int]:
    """PEERS synchronised association requests; all established ones are held until every peer is done."""
    barrier = threading.Barrier(PEERS)
    done = threading.Barrier(PEERS + 1)
    outcomes: list[str] = []
    lock = threading.Lock()

    def peer() -> None:
        ae = AE(ae_title="FIXTEST")
        ae.add_requested_context(Verification)
        ae.acse_timeout = 10
        barrier.wait()
        assoc = ae.associate("127.0.0.1", agent.dicom_port, ae_title="SPINEAGENT")
        with lock:
            outcomes.append("accepted" if assoc.is_established else "rejected")
        done.wait()
        if assoc.is_established:
            assoc.release()

    threads = [threading.Thread(target=peer) for _ in range(PEERS)]
    for thread in threads:
        thread.start()
    done.wait(timeout=60)
    for thread in threads:
        thread.join(timeout=30)
    return outcomes.count("accepted"), outcomes.count("rejected")


def _refusal_lines(agent: SuiteAgent) -> int:
    return sum(
        "dicom.max_associations" in r.get("message", "") and r.get("level") == "WARNING"
        for r in agent.log_records()
    )


def test_bursts_get_exactly_the_limit_and_each_refusal_is_logged_once(limit_agent: SuiteAgent) -> None:
    agent = limit_agent  # max_associations = LIMIT (tests/reliability/conftest.py), shared
    before = _refusal_lines(agent)
    for round_ in range(1, 4):
        assert _burst(agent) == (LIMIT, PEERS - LIMIT), f"round {round_}"
        time.sleep(0.5)  # the released associations' threads end
        assert _refusal_lines(agent) - before == round_ * (PEERS - LIMIT)


def test_idle_connections_hold_no_slot_and_are_closed(limit_agent: SuiteAgent) -> None:
    idle_s = 2.0  # dicom.idle_timeout_s of limit_agent
    agent = limit_agent
    sockets: list[socket.socket] = []
    try:
        for _ in range(PEERS):  # connect and say nothing
            sockets.append(socket.create_connection(("127.0.0.1", agent.dicom_port), timeout=10))
        time.sleep(0.3)
        started = time.monotonic()
        echo = subprocess.run(
            [
                require_tool("echoscu"),
                "-aet",
                "ECHOSCU",
                "-aec",
                "SPINEAGENT",
                "127.0.0.1",
                str(agent.dicom_port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert echo.returncode == 0, echo.stdout + echo.stderr
        assert time.monotonic() - started < idle_s, "C-ECHO waited for the idle connections"
        for sock in sockets:  # the agent hangs up on each within the idle timeout (plus slack)
            sock.settimeout(idle_s + 5)
            assert sock.recv(1) == b""
        assert time.monotonic() - started < idle_s + 5
    finally:
        for sock in sockets:
            sock.close()
