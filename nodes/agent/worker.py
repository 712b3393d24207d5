"""The rig agent: a Celery worker (no Django) consuming only its own queue `node.<name>`.

It reports everything it learns as tasks on the panel queue; a consumer bootstep publishes telemetry
on the worker's own timer, from a snapshot a sampler thread keeps fresh (NVML never blocks the loop).
"""

import logging
import threading
import time

from celery import Celery, bootsteps

from . import protocol
from .config import AgentConfig
from .probe import TelemetrySampler, probe_hardware

log = logging.getLogger("morpheus.agent")

config = AgentConfig.from_env()

app = Celery("morpheus_agent", broker=config.broker_url)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_soft_time_limit=60,
    task_time_limit=90,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    task_default_queue=protocol.node_queue(config.node),
    worker_hijack_root_logger=True,
)


class Agent:
    def __init__(self, cfg):
        self.cfg = cfg
        self.sampler = TelemetrySampler(cfg.data_dir)
        self._snapshot = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def send(self, kind, payload, expires=None):
        app.send_task(
            protocol.REPORT_TASK,
            kwargs={
                "node": self.cfg.node,
                "token": self.cfg.token,
                "kind": kind,
                "payload": payload,
                "sent_at": time.time(),
            },
            queue=protocol.PANEL_QUEUE,
            expires=expires,
        )

    def publish_hardware(self):
        profile = probe_hardware(self.cfg.data_dir)
        profile["telemetry_interval"] = self.cfg.telemetry_interval
        profile["protocol"] = protocol.PROTOCOL_VERSION
        self.send(protocol.HARDWARE, profile, expires=3600)
        return profile

    def publish_telemetry(self):
        with self._lock:
            snapshot = self._snapshot
        if snapshot is None:
            return
        # A reading older than a few intervals is worthless to the panel: let the broker drop it.
        self.send(protocol.TELEMETRY, snapshot, expires=max(10.0, 3 * self.cfg.telemetry_interval))

    def operation(self, operation_id, status, message="", result=None):
        payload = {"operation": operation_id, "status": status, "message": message, "result": result or {}}
        self.send(protocol.OPERATION, payload)

    def start_sampler(self):
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_sampler, name="telemetry-sampler", daemon=True)
        self._thread.start()

    def stop_sampler(self):
        self._stop.set()

    def _run_sampler(self):
        try:
            self.publish_hardware()
        except Exception:
            log.exception("hardware report failed")
        while not self._stop.is_set():
            try:
                reading = self.sampler.sample()
                with self._lock:
                    self._snapshot = reading
            except Exception:
                log.exception("telemetry sample failed")
            self._stop.wait(self.cfg.telemetry_interval)


agent = Agent(config)


class TelemetryStep(bootsteps.StartStopStep):
    """Starts on connect, stops on connection loss, starts again on reconnect."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.tref = None

    def start(self, c):
        agent.start_sampler()
        self.tref = c.timer.call_repeatedly(agent.cfg.telemetry_interval, agent.publish_telemetry)
        log.info("rig %s reporting telemetry every %ss", agent.cfg.node, agent.cfg.telemetry_interval)

    def stop(self, c):
        # Called twice at shutdown: keep it idempotent.
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, c):
        self.stop(c)
        agent.stop_sampler()


app.steps["consumer"].add(TelemetryStep)


@app.task(name=protocol.AGENT_PING)
def ping(operation_id):
    agent.operation(operation_id, "succeeded", "agent answered", {"agent_time": time.time(), "node": config.node})


@app.task(name=protocol.AGENT_REFRESH_HARDWARE)
def refresh_hardware(operation_id):
    agent.operation(operation_id, "running", "probing hardware")
    try:
        profile = agent.publish_hardware()
    except Exception as exc:
        agent.operation(operation_id, "failed", f"hardware probe failed: {exc}")
        raise
    gpus = len(profile["gpus"])
    agent.operation(operation_id, "succeeded", f"{gpus} GPU{'s' if gpus != 1 else ''} detected", {"gpus": gpus})
