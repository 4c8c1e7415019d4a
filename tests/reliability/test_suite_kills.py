"""Kills: SIGKILL ``spine-agent serve`` at seeded random moments while DCMTK storescu streams series.

One campaign per variant (module-scoped, shared by the checks below): the short one in the default run
(10 kills, 20 series), the long one under ``slow``, only with ``SPINE_SUITE_LONG=1`` (``SPINE_SUITE_KILLS``
kills, default 100, and twice as many series). Each
cycle starts the agent, starts storescu on the next series (a series storescu could not finish is sent
again in full later, as a PACS retries), kills the agent after a seeded random delay (during receive,
the quiet timer, the engine stand-in, writing or delivery: whatever is in flight), and reaps storescu.
After the last kill the agent is started once more and left to drain. Then:

* every instance storescu saw Success for is on disk in the spool and counted in the ledger;
* every series version has exactly one job, and it is finished;
* every result (SEG, SR) of every succeeded job is held by the destination, counted per reception.

The destination is either a PACS that answers C-FIND (:class:`QueryStoreSCP`, the sender's default
``query_before_resend = true``): every result must be held exactly once, the one in flight at a kill
included (the sender asks before re-sending it); or DCMTK storescp (``+uf``, no C-FIND): the sender
cannot ask and re-sends an instance in doubt, so at most one result per kill may be held twice
(at-least-once). The default run has the first with 10 kills; the long variant both.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from storage import DeliveryState, JobState
from storage.ledger import utcnow
from tests.agent.service.conftest import SyntheticSeries
from tests.reliability.suite_support import (
    LONG_ENV,
    LONG_TIMEOUT_S,
    LedgerView,
    QueryStoreSCP,
    StoreSCP,
    SuiteAgent,
    long_marks,
    make_agent,
    make_series,
    result_uids,
    start_query_scp,
    start_storescp,
    storescu,
    wait_for,
    write_report,
)

pytestmark = pytest.mark.integration

SEED = 15_001
SHORT_KILLS = 10
LONG_KILLS = int(os.environ.get("SPINE_SUITE_KILLS", "100"))
#: Seconds after the last restart for everything to be finished and delivered.
DRAIN_S = 300.0
#: Seconds an agent may take to start (imports, ledger, SCP): minutes on a starved machine, not a check.
START_S = 300.0
#: ``delivery.lease_s`` (issue 16 item 1): how long a delivery claimed by a killed agent waits.
DELIVERY_LEASE_S = 5.0


#: The destinations a campaign sends to: one that answers C-FIND (exactly-once), DCMTK storescp (not).
QUERY, STORESCP = "query", "storescp"


@dataclass
class Campaign:
    kills: int
    series: list[SyntheticSeries]
    agent: SuiteAgent
    dest: StoreSCP | QueryStoreSCP
    destination: str = QUERY
    acknowledged: dict[str, tuple[str, str]] = field(default_factory=dict)  # sop -> (study, series)
    resends: int = 0
    kill_delays: list[float] = field(default_factory=list)
    view: LedgerView | None = None
    held: Counter[str] = field(default_factory=Counter)
    results: dict[int, list[str]] = field(default_factory=dict)  # succeeded job -> result SOP UIDs
    lease_held: list[int] = field(default_factory=list)  # deliveries still parked by a lease at the end
    seconds: float = 0.0


def run_campaign(root: Path, kills: int, seed: int, destination: str = QUERY) -> Campaign:
    t0 = time.monotonic()
    rng = random.Random(seed)
    series = make_series(root / "series", max(20, 2 * kills), seed=seed)
    dest: StoreSCP | QueryStoreSCP = (
        start_query_scp(root / "dest", ae_title="DEST")
        if destination == QUERY
        else start_storescp(root / "dest")
    )
    agent = make_agent(
        root / "agent",
        destinations=[("dest", "DEST", dest.port)],
        delivery={"retry_base_s": 0.5, "retry_cap_s": 2.0, "lease_s": DELIVERY_LEASE_S},
        engine_delay_s=0.3,
    )
    campaign = Campaign(kills, series, agent, dest, destination)
    pending = list(series)
    try:
        for _ in range(kills):
            agent.start(timeout_s=START_S)
            batch, pending = pending[:2], pending[2:]
            run = storescu(agent.dicom_port, [f for s in batch for f in s.files]) if batch else None
            delay = rng.uniform(0.3, 3.0)
            campaign.kill_delays.append(delay)
            time.sleep(delay)
            agent.kill()
            if run is not None:
                run.wait(timeout_s=START_S)
                acked = set(run.acknowledged())
                for s in batch:
                    for f in s.files:
                        if f in acked:
                            campaign.acknowledged[f.stem] = (s.study_uid, s.series_uid)
                    if not all(f in acked for f in s.files):
                        pending.append(s)  # the PACS sends the series again
                        campaign.resends += 1
        agent.start(timeout_s=START_S)
        while pending:
            batch, pending = pending[:4], pending[4:]
            run = storescu(agent.dicom_port, [f for s in batch for f in s.files])
            assert run.wait(timeout_s=START_S) == 0, run.output[-2000:]
            for s in batch:
                for f in s.files:
                    campaign.acknowledged[f.stem] = (s.study_uid, s.series_uid)
        ledger = agent.ledger()
        uids = [s.series_uid for s in series]

        def drained() -> bool:
            view = LedgerView.read(ledger, uids)
            if not view.all_versions_finished():
                return False
            now = utcnow()
            return all(
                d.state != DeliveryState.PENDING or d.next_attempt_at > now + timedelta(seconds=60)
                for d in view.deliveries
            )

        with contextlib.suppress(AssertionError):  # the checks below say what is missing
            wait_for(drained, DRAIN_S, 0.5, what="every version finished and every delivery settled")
        # no sleep: a job's deliveries are made with its SUCCEEDED, and DELIVERED or FAILED are final
        view = LedgerView.read(ledger, uids)
        campaign.view = view
        now = utcnow()
        campaign.lease_held = [
            d.id
            for d in view.deliveries
            if d.state == DeliveryState.PENDING and d.next_attempt_at > now + timedelta(seconds=60)
        ]
        for jobs in view.jobs_by_series.values():
            for job in jobs:
                if job.state == JobState.SUCCEEDED:
                    campaign.results[job.id] = result_uids(agent, job.output_path)
        campaign.held = dest.held()
        ledger.close()
    finally:
        agent.kill()
        dest.stop()
    campaign.seconds = time.monotonic() - t0
    _report(campaign)
    return campaign


def lost_instances(c: Campaign) -> list[str]:
    """Acknowledged instances missing from the spool or not counted in the ledger."""
    assert c.view is not None
    lost = [
        sop
        for sop, (study, series) in c.acknowledged.items()
        if not (c.agent.spool / "incoming" / study / series / f"{sop}.dcm").is_file()
    ]
    per_series = Counter(series for _, series in c.acknowledged.values())
    for series_uid, n in per_series.items():
        counted = sum(count for _, _, count in c.view.versions.get(series_uid, []))
        if counted < n:
            lost.append(f"series {series_uid[-8:]}: ledger counts {counted} < {n} acknowledged")
    return lost


def bad_versions(c: Campaign) -> list[str]:
    assert c.view is not None
    bad = []
    for uid, versions in c.view.versions.items():
        for sid, version, _ in versions:
            jobs = c.view.jobs_by_series.get(sid, [])
            states = [j.state.value for j in jobs]
            if len(jobs) != 1 or jobs[0].state not in (
                JobState.SUCCEEDED,
                JobState.FAILED,
                JobState.CANCELLED,
            ):
                bad.append(f"series ...{uid[-8:]} v{version}: jobs {states}")
    return bad


def delivery_counts(c: Campaign) -> tuple[list[str], list[str]]:
    """(results held more than once, results of succeeded jobs not held), lease-parked ones aside."""
    assert c.view is not None
    parked_jobs = {d.job_id for d in c.view.deliveries if d.id in c.lease_held}
    twice = [uid for uid, n in c.held.items() if n > 1]
    missing = [
        f"job {job_id}: {uid[-8:]}"
        for job_id, uids in c.results.items()
        if job_id not in parked_jobs
        for uid in uids
        if c.held[uid] == 0
    ]
    return twice, missing


def _report(c: Campaign) -> None:
    if c.view is None:
        return
    twice, missing = delivery_counts(c)
    versions = sum(len(v) for v in c.view.versions.values())
    multi = sum(1 for v in c.view.versions.values() if len(v) > 1)
    write_report(
        "kills",
        [
            {
                "destination": c.destination,
                "kills": c.kills,
                "series": len(c.series),
                "series_resent": c.resends,
                "instances_acknowledged": len(c.acknowledged),
                "instances_lost": len(lost_instances(c)),
                "series_versions": versions,
                "series_with_extra_versions": multi,
                "versions_without_one_finished_job": len(bad_versions(c)),
                "jobs_succeeded": len(c.results),
                "results_held_twice": len(twice),
                "results_missing": len(missing),
                "deliveries_parked_by_lease": len(c.lease_held),
                "agent_starts": c.agent.starts,
                "seconds": round(c.seconds, 1),
            }
        ],
    )


def _variants() -> list[Any]:
    """The short campaign (to a destination that answers C-FIND) and, with $SPINE_SUITE_LONG=1, the long one
    to each kind of destination."""
    out = [pytest.param((SHORT_KILLS, QUERY), id="short")]
    if os.environ.get(LONG_ENV) == "1":
        out.append(pytest.param((LONG_KILLS, QUERY), id="long", marks=long_marks()))
        out.append(pytest.param((LONG_KILLS, STORESCP), id="long-storescp", marks=long_marks()))
    return out


@pytest.fixture(scope="module", params=_variants())
def campaign(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    kills, destination = request.param
    root = tmp_path_factory.mktemp(f"kills-{kills}-{destination}")
    return run_campaign(root, kills, SEED + kills, destination)


def test_every_acknowledged_instance_survives_the_kills(campaign: Campaign) -> None:
    assert campaign.agent.starts == campaign.kills + 1
    assert len(campaign.acknowledged) >= sum(len(s.files) for s in campaign.series)
    assert lost_instances(campaign) == []


def test_every_series_version_ends_in_exactly_one_finished_job(campaign: Campaign) -> None:
    assert bad_versions(campaign) == []


def test_every_result_is_delivered_once_where_the_destination_answers_c_find(campaign: Campaign) -> None:
    """Every result of every succeeded job is held by the destination. A kill that falls between the
    destination storing a result and the agent recording its Success leaves that result in doubt: a
    destination that answers C-FIND is asked and holds every result exactly once; storescp cannot be
    asked, so the result is sent again: at most one instance per kill held twice (at-least-once)."""
    twice, missing = delivery_counts(campaign)
    assert missing == []
    extra = sum(campaign.held[uid] - 1 for uid in twice)
    if campaign.destination == QUERY:
        assert twice == [], f"{extra} result instances re-sent after {campaign.kills} kills"
    else:
        assert extra <= campaign.kills, f"{extra} result instances re-sent after {campaign.kills} kills"


# --- a kill while a delivery is half done (deterministic; long variant only) ----------------------------
# Since 2026-12-07 (issue 15, to keep the short run under 5 minutes) only with SPINE_SUITE_LONG=1, and then
# not at all in the default run (a skip fails CI, where only gpu tests may skip): the short run kills at the
# same point of a delivery in test_suite_in_doubt.py (the SEG's Success on record, the SR under way; after
# the restart and the lease the SEG is not sent again, the SR arrives, both held once), and sends an
# instance in doubt again to a destination without C-FIND in its capability test. What only this test
# adds, a kill mid-delivery to DCMTK storescp, the long campaign to storescp does at random moments.

if os.environ.get(LONG_ENV) == "1":

    @pytest.mark.slow
    @pytest.mark.timeout(LONG_TIMEOUT_S)
    def test_kill_mid_delivery_resumes_without_resending(tmp_path: Path) -> None:
        """The destination stored the SEG and sits on the SR; the agent is killed; after a restart the SR
        arrives once the delivery lease (``delivery.lease_s``) lapses and the SEG is not sent again
        (docs/operations.md promises exactly this; issue 16 item 1)."""
        (series,) = make_series(tmp_path / "series", 1, seed=77)
        # storescp sleeps 3 s inside every C-STORE: a delivery takes > 6 s, so the kill lands inside it.
        dest = start_storescp(tmp_path / "dest", extra=["--sleep-during", "3"])
        agent = make_agent(
            tmp_path / "agent",
            destinations=[("dest", "DEST", dest.port)],
            delivery={"retry_base_s": 0.5, "retry_cap_s": 2.0, "lease_s": DELIVERY_LEASE_S},
            engine_delay_s=0.0,
        )
        try:
            agent.start()
            assert storescu(agent.dicom_port, series.files).wait() == 0
            ledger = agent.ledger()
            wait_for(lambda: any(ledger.list_deliveries()), 30, 0.2, what="a delivery to be created")
            wait_for(lambda: sum(dest.held().values()) >= 1, 60, 0.2, what="the destination to store the SEG")
            # Kill only once the agent has the SEG's Success on record: a kill between the destination writing
            # the file and its response is the one window where a re-send is right (DICOM cannot ask).
            wait_for(
                lambda: any(d.sent_instances for d in ledger.list_deliveries()),
                30,
                0.1,
                what="the SEG's Success recorded",
            )
            agent.kill()
            (job,) = ledger.list_jobs()
            results = result_uids(agent, ledger.get_job(job.id).output_path)
            assert len(results) == 2
            dest.restart(extra=[])  # the destination is fast again
            agent.start()
            # DELIVERED is final: a re-sent SEG would have gone before the SR, nothing is sent after
            wait_for(
                lambda: [d.state for d in ledger.list_deliveries()] == [DeliveryState.DELIVERED],
                30,
                0.2,
                what="the delivery finished",
            )
            assert [dest.held()[uid] for uid in results] == [1, 1]
            ledger.close()
        finally:
            agent.kill()
            dest.stop()
