"""``spine-agent serve``: the SCP, the scheduler, the worker, the sender and the HTTP endpoint together.

Start order: checks (agent/service/preflight.py: spool, ledger folder, weights, token and TLS files; a
problem stops the start with one line naming the key) -> ledger (migrated) -> HTTP and SCP bound (a busy
port fails in the first second; /readyz says "model not loaded" meanwhile, and what the SCP stores
waits durably in the spool) -> engine (loaded once) -> worker -> scheduler ticks (quiet timer,
deliveries, retention) -> systemd READY=1 (Type=notify). Right after the ledger: the spool is locked
(one agent per spool; its ``agent-id`` file names this agent across restarts) and the jobs this agent
still held RUNNING when it last stopped are released at once (one WARNING line).
Stop order (SIGTERM/SIGINT): SCP first (no new associations), scheduler, then the worker finishes its
job within ``shutdown_grace_s`` or releases it to the queue, HTTP, ledger.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from dataclasses import dataclass
from types import FrameType

from agent.errors import UserError
from agent.service.dicom_client import destination_echo
from agent.service.pipeline import Predictor
from agent.service.preflight import check_startup, redacted_url
from agent.service.scheduler import AgentScheduler
from agent.service.scp import StorageSCP
from agent.service.sd_notify import notify
from agent.service.sender import run_due_deliveries
from agent.service.worker import JobWorker, worker_identity
from agent.web import metrics
from agent.web.dashboard import Dashboard, load_admin_token
from agent.web.http import CheckResult, HealthServer
from config import ConfigError, Settings
from storage import Ledger
from storage.retention import RetentionSweeper
from storage.spool import Spool, SpoolBusy

log = logging.getLogger(__name__)

#: Seconds between delivery ticks (each tick sends what is due; back-off lives in the ledger).
DELIVERY_TICK_S = 2.0
#: How often the main thread wakes to run pending signal handlers while it waits for SIGTERM/SIGINT.
SIGNAL_POLL_S = 0.2


def load_engine(settings: Settings) -> Predictor:
    """Build the predictor once (weights from config, or the newest shipped version)."""
    from inference.engine.engine import Engine
    from inference.engine.weights import WeightsError, default_weights_dir

    device = None if settings.engine.device == "auto" else settings.engine.device
    try:
        directory = settings.engine.weights_dir or default_weights_dir()
        log.info("engine: loading weights from %s", directory)
        return Engine.from_weights(directory, device=device)
    except (WeightsError, ValueError) as exc:  # ValueError: an engine.json this engine cannot read
        raise ConfigError(f"engine.weights_dir: {exc}") from None


@dataclass
class ShutdownReport:
    released_job: int | None


class AgentService:
    """The running agent. ``start()`` returns once everything listens; ``stop()`` is idempotent."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Predictor | None = None,
        shutdown_grace_s: float = 20.0,
        worker_poll_s: float = 1.0,
        config_origin: str | None = None,
    ) -> None:
        # Before anything touches the disk: a bad path or file stops here with one line naming its key.
        check_startup(settings, weights=engine is None)
        self.settings = settings
        self.config_origin = config_origin
        self.shutdown_grace_s = shutdown_grace_s
        self.ledger = Ledger(settings.ledger.url, max_attempts=settings.ledger.max_attempts)
        self.spool = Spool(settings.storage.spool_dir)
        self._engine = engine
        self._worker_poll_s = worker_poll_s
        self.worker: JobWorker | None = None
        self.scheduler: AgentScheduler | None = None
        self.http: HealthServer | None = None
        self.scp: StorageSCP | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stop_report: ShutdownReport | None = None
        self.agent_id: str | None = None

    @property
    def engine(self) -> Predictor | None:
        return self._engine

    def _dashboard(self, admin_token: str | None) -> Dashboard:
        dashboard = Dashboard(self.ledger, admin_token=admin_token)
        dashboard.echo_destination = destination_echo(self.settings)
        return dashboard

    def start(self) -> None:
        # Read the admin token first: a bad token file stops the start before anything listens.
        http = self.settings.http
        admin_token = load_admin_token(http) if http.port and http.dashboard else None
        self._log_configuration()
        self.ledger.upgrade()
        self._claim_spool()
        # Bind both ports before the engine loads: a busy port fails now, not after a minute.
        if self.settings.http.port:
            self.http = HealthServer(
                self.settings,
                self.ledger,
                model_loaded=lambda: self._engine is not None,
                extra_checks={"scp": self._check_scp, "worker": self._check_worker},
                dashboard=self._dashboard(admin_token) if http.dashboard else None,
            )
            try:
                self.http.start()
            except OSError as exc:
                self.http = None
                raise UserError(
                    f"http.port: cannot listen on {http.bind_address}:{http.port}: {exc.strerror or exc}"
                ) from None
        self.scp = StorageSCP(self.settings, self.ledger, spool=self.spool)
        self.scp.start()
        if self._engine is None:
            self._engine = load_engine(self.settings)
        version = getattr(getattr(self._engine, "plan", None), "version", "unknown")
        log.info("engine: weights version %s", version)
        metrics.MODEL_INFO.labels(version=str(version)).set(1)
        self.worker = JobWorker(
            self.settings,
            self.ledger,
            self.spool,
            self._engine,
            owner=worker_identity(self.agent_id),
            poll_s=self._worker_poll_s,
        )
        self.worker.start()
        self.scheduler = AgentScheduler(self.settings, self.ledger, spool=self.spool)
        self.scheduler.add_interval("deliveries", self._deliver, DELIVERY_TICK_S)
        sweeper = RetentionSweeper(self.settings, self.ledger, self.spool, on_sweep=metrics.count_retention)
        self.scheduler.add_interval("retention", sweeper.sweep, self.settings.retention.interval_s)
        self.scheduler.start()
        count = len(self.settings.destinations)
        log.info(
            "spine-agent listening as %s on port %d, %d %s, engine %s",
            self.settings.dicom.ae_title,
            self.scp.port,
            count,
            "destination" if count == 1 else "destinations",
            version,
        )
        notify("READY=1", f"STATUS=listening on DICOM port {self.scp.port}, engine {version}")

    def _claim_spool(self) -> None:
        """Lock the spool (one agent per spool), learn this agent's identity, release its leftover jobs."""
        try:
            self.spool.lock()
        except SpoolBusy as exc:
            raise UserError(str(exc)) from None
        self.agent_id = self.spool.agent_identity()
        released = self.ledger.release_owned_jobs(self.agent_id)
        if released:
            log.warning(
                "agent %s: %d job(s) left RUNNING by its previous run released at start: %s",
                self.agent_id,
                len(released),
                ", ".join(map(str, released)),
            )
        shutil.rmtree(self.spool.work_root, ignore_errors=True)  # input links of interrupted attempts

    def _log_configuration(self) -> None:
        """One INFO line each: the config file, the destinations, the ledger (password hidden)."""
        log.info("configuration: %s", self.config_origin or "built-in defaults (no config file)")
        destinations = self.settings.destinations
        if destinations:
            for d in destinations:
                log.info("destination %s: %s@%s:%d", d.name, d.ae_title, d.host, d.port)
        else:
            log.warning("no destinations configured: results are computed but sent nowhere")
        log.info("ledger: %s", redacted_url(self.settings.ledger.url))

    def _check_scp(self) -> CheckResult:
        if self.scp is None or not self.scp.running:
            return CheckResult(False, "the DICOM SCP is not listening")
        refusal = self.scp.space_refusal()
        if refusal is not None:
            return CheckResult(False, refusal)
        return CheckResult(True, "listening")

    def _check_worker(self) -> CheckResult:
        alive = self.worker is not None and self.worker.alive
        return CheckResult(alive, "running" if alive else "the job worker is not running")

    def _deliver(self) -> None:
        run_due_deliveries(self.ledger, self.settings, self.spool)

    def stop(self) -> ShutdownReport:
        """Stop taking associations, stop the ticks, finish or release the current job, close."""
        with self._stop_lock:
            if self._stop_report is not None:
                return self._stop_report
            notify("STOPPING=1")
            if self.scp is not None:
                self.scp.stop()
            if self.scheduler is not None:
                self.scheduler.shutdown()
            released = self.worker.stop(self.shutdown_grace_s) if self.worker is not None else None
            if self.http is not None:
                self.http.stop()
            self.ledger.close()
            self.spool.unlock()
            self._stop_report = ShutdownReport(released_job=released)
            self._stopped.set()
            log.info("spine-agent stopped%s", f"; job {released} released" if released else "")
            return self._stop_report

    def run_until_signalled(self) -> ShutdownReport:
        """Start, block until SIGTERM or SIGINT, then stop gracefully."""
        wake = threading.Event()

        def _on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s; stopping", signal.Signals(signum).name)
            wake.set()

        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            try:
                self.start()
            except BaseException:
                self.stop()  # what was already listening closes before the error is reported
                raise
            # Wait in short slices: a SIGTERM delivered to another thread (the kernel picks any thread
            # that does not block it) only sets CPython's flag, and a main thread blocked in an untimed
            # wait would never run the handler (seen: 1 start in 3 ignored SIGTERM).
            while not wake.wait(SIGNAL_POLL_S):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.stop()
