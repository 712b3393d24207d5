"""The rig agent: a Celery worker (no Django) consuming only its own queue `node.<name>`.

`create_app(config)` builds it: a Celery app logged in with this rig's own broker account, an `Agent` holding the
rig-side services, and the commands of `tasks/` registered on it. Every command arrives as a signed envelope
(nodes/agent/envelope.py) and runs only if it is authentic, addressed to this rig, under its own task name,
current and not seen before; anything else is refused and the refusal reported. Reports go back signed, numbered
and stamped with this rig's clock. A consumer bootstep publishes telemetry on the worker's own timer, from a
snapshot a sampler thread keeps fresh (NVML never blocks the loop).
"""

import logging
import threading
import time
from contextlib import contextmanager

from celery import Celery, bootsteps

from . import envelope, protocol, transport
from .outbox import Outbox
from .probe import TelemetrySampler, probe_hardware

log = logging.getLogger("morpheus.agent")

BASE_SETTINGS = dict(
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
    worker_hijack_root_logger=True,
)


class Agent:
    """What the commands share: config, keys, the report channel, and the rig-side services."""

    def __init__(self, app, config):
        self.app, self.cfg = app, config
        self.started_at = time.time() + config.clock_skew  # this agent's start, on the rig's clock
        self.keys = envelope.derive_keys(config.token)
        self.nonces = envelope.NonceBook(config.state_dir / "nonces.json", tolerance=config.clock_tolerance)
        self.sequence = envelope.Sequence(config.state_dir / "report-seq")
        self.report_queue = transport.report_queue()
        # Outcomes and state changes wait here until the panel acknowledges them (resent after a broker outage).
        self.outbox = Outbox(config.state_dir / "outbox", self._publish_kept, retry_after=config.resend_after)
        self._send_failed_at = 0.0
        self.sampler = TelemetrySampler(config.data_dir, clock=self.clock)
        self._snapshot = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.resumed = False
        self._active = set()
        self._active_lock = threading.Lock()
        self.on_first_connect = []  # callables run once the broker is first reachable (resume work, adopt servers)
        self.in_flight = []  # callables returning ids of operations in flight outside a command (downloads, launches)
        self._running = set()  # operations whose command is running now

    def clock(self):
        """This rig's clock (shifted by MORPHEUS_AGENT_CLOCK_SKEW in tests): reports carry it, commands are judged by
        it corrected with the offset the panel measured."""
        return time.time() + self.cfg.clock_skew

    # --- commands in -----------------------------------------------------------------------------
    def command(self, name, **task_options):
        """Register `fn` as the handler of command `name`; the Celery task around it checks the envelope."""
        takes_operation, required, optional = protocol.COMMANDS[name]

        def register(fn):
            def run(*args, envelope=None, mac=None, **extra):
                data = self.open_command(name, envelope, mac, args, extra)
                if data is None:
                    return None
                if not takes_operation:
                    return fn(**data["args"])
                operation_id = data["operation"]
                if name == protocol.AGENT_CANCEL:  # a cancel's operation is the one it stops, not its own
                    return fn(operation_id, **data["args"])
                # Picked up: from now on the operation's run limit counts, not the pickup timeout. Kept until the
                # panel has it, or a launch slower than the pickup timeout would be failed as never picked up.
                with self._active_lock:
                    self._running.add(operation_id)
                try:
                    self.operation(operation_id, protocol.RUNNING, "picked up by the rig", durable=True)
                    return fn(operation_id, **data["args"])
                finally:
                    with self._active_lock:
                        self._running.discard(operation_id)

            run.__name__ = fn.__name__
            self.app.task(name=name, shared=False, **task_options)(run)
            return fn

        return register

    def open_command(self, name, body, mac, args, extra):
        """The envelope with its secrets opened, or None when it is refused (logged and reported)."""
        try:
            if args or extra:
                raise envelope.EnvelopeRejected("unsigned command (arguments outside a signed envelope)")
            data = envelope.open_command(self.keys, rig=self.cfg.node, task=name, envelope=body, mac=mac,
                                         now=self.clock(), tolerance=self.cfg.clock_tolerance)
            takes_operation, required, optional = protocol.COMMANDS[name]
            given = set(data["args"])
            if not set(required) <= given or not given <= set(required) | set(optional):
                raise envelope.EnvelopeRejected(f"arguments {sorted(given)} do not match {name}")
            if takes_operation and data["operation"] is None:
                raise envelope.EnvelopeRejected(f"{name} needs an operation id")
            # Kept until it expires on the panel's clock, the one its expiry was judged by.
            if not self.nonces.accept(data["nonce"], data["expires"],
                                      now=self.clock() - (data.get("rig_clock_offset") or 0)):
                raise envelope.EnvelopeRejected("already received (a replay, or redelivered after a restart)")
            data["args"] = envelope.unseal(self.keys, data["args"])
            return data
        except envelope.EnvelopeRejected as exc:
            log.warning("refused %s: %s", name, exc)
            self.send(protocol.REJECTED_COMMAND, {"task": name, "reason": str(exc)}, expires=3600)
            return None

    @contextmanager
    def claimed(self, operation_id):
        """One run per operation: not if it finished before (a redelivered message), not twice at once."""
        with self._active_lock:
            mine = operation_id not in self._active and not self._done_marker(operation_id).exists()
            if mine:
                self._active.add(operation_id)
        if not mine:
            log.info("operation %s already handled; ignoring this copy", operation_id)
            yield False
            return
        try:
            yield True
        finally:
            with self._active_lock:
                self._active.discard(operation_id)
            marker = self._done_marker(operation_id)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()

    def _done_marker(self, operation_id):
        return self.cfg.state_dir / "done" / str(int(operation_id))

    # --- reports out -----------------------------------------------------------------------------
    def send(self, kind, payload, expires=None, durable=False, seq=None):
        """Report to the panel. Never raises: a `durable` report (an outcome, a state change) is kept in the outbox
        and sent again until the panel acknowledges it; any other (telemetry, progress) is best-effort — lost if
        the broker is away, and the work goes on. Returns whether it was published now."""
        seq = self.sequence.next() if seq is None else seq
        if durable:
            self.outbox.put(kind, payload, seq)
            return True
        try:
            self._publish(kind, payload, seq, expires=expires)
            return True
        except Exception as exc:
            if time.monotonic() - self._send_failed_at > 30:  # once per outage, not once per reading
                self._send_failed_at = time.monotonic()
                log.warning("%s report not sent (broker unreachable?), carrying on: %s", kind, exc)
            return False

    def _publish(self, kind, payload, seq, expires=None, ack=False):
        """Sign (stamped with this rig's clock now, also for a report sent again) and publish; raises if it cannot."""
        signed = envelope.sign_report(self.keys, rig=self.cfg.node, kind=kind, payload=payload, seq=seq,
                                      now=self.clock(), ack=ack)
        self.app.send_task(protocol.REPORT_TASK, kwargs=signed, queue=self.report_queue, expires=expires,
                           argsrepr="()", kwargsrepr=f"<{kind} report>")

    def _publish_kept(self, kind, payload, seq):
        self._publish(kind, payload, seq, ack=True)

    def operation(self, operation_id, status, message="", result=None, progress=None, log_tail=None, durable=None):
        """An operation's report. Its outcome is durable; a "running" one is progress (best-effort) unless `durable`."""
        payload = {"operation": operation_id, "status": status, "message": message, "result": result or {}}
        if progress is not None:
            payload["progress"] = progress
        if log_tail is not None:
            payload["log"] = log_tail
        self.send(protocol.OPERATION, payload, durable=status != protocol.RUNNING if durable is None else durable)

    def operations_in_flight(self):
        """Operation ids this rig still has: running here, or ended with the outcome not yet acknowledged."""
        with self._active_lock:
            ids = set(self._running) | set(self._active)
        for source in self.in_flight:
            ids.update(source())
        for entry in self.outbox.pending(protocol.OPERATION):
            if entry["payload"].get("status") != protocol.RUNNING:
                ids.add(entry["payload"]["operation"])
        return sorted(ids)

    def publish_inventory(self, boot=False):
        """What this rig has: the panel ends any running operation of this rig that is not listed here and whose
        last report came before this one (lost with an agent restart, or its outcome never sent)."""
        # Numbered before it is made: an operation picked up meanwhile has a higher number than it, and is not
        # taken for lost for being missing from it.
        seq = self.sequence.next()
        supervisor = getattr(self, "supervisor", None)
        payload = {
            "boot": boot,
            "agent_started_at": self.started_at,
            "operations": self.operations_in_flight(),
            "deployments": supervisor.snapshot() if supervisor is not None else [],
            "outbox": len(self.outbox),
        }
        self.send(protocol.INVENTORY, payload, expires=max(60.0, 2 * self.cfg.inventory_interval), seq=seq)

    def publish_hardware(self, boot=False):
        profile = probe_hardware(self.cfg.data_dir)
        profile["telemetry_interval"] = self.cfg.telemetry_interval
        profile["protocol"] = protocol.PROTOCOL_VERSION
        profile["agent_started_at"] = self.started_at
        self.send(protocol.HARDWARE, profile, expires=3600)
        return profile

    def publish_telemetry(self):
        with self._lock:
            snapshot = self._snapshot
        if snapshot is None:
            return
        serving = getattr(self, "serving", None)  # its servers' live metrics (nodes/agent/serving.py)
        if serving is not None:
            snapshot = {**snapshot, "servers": serving.readings()}
        # A reading older than a few intervals is worthless to the panel: let the broker drop it.
        self.send(protocol.TELEMETRY, snapshot, expires=max(10.0, 3 * self.cfg.telemetry_interval))

    # --- telemetry sampler -------------------------------------------------------------------------
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


def telemetry_step(agent):
    class TelemetryStep(bootsteps.StartStopStep):
        """Starts on connect, stops on connection loss, starts again on reconnect."""

        requires = {"celery.worker.consumer.tasks:Tasks"}

        def __init__(self, parent, **kwargs):
            super().__init__(parent, **kwargs)
            self.trefs = []

        def start(self, c):
            boot = not agent.resumed
            if boot:
                agent.resumed = True
                for hook in agent.on_first_connect:
                    hook()
            agent.publish_inventory(boot=boot)
            agent.outbox.flush(everything=True)  # connected (again): whatever waited goes now
            agent.start_sampler()
            cfg = agent.cfg
            self.trefs = [
                c.timer.call_repeatedly(cfg.telemetry_interval, agent.publish_telemetry),
                c.timer.call_repeatedly(min(cfg.resend_after, 5.0), agent.outbox.flush),
                c.timer.call_repeatedly(cfg.inventory_interval, agent.publish_inventory),
            ]
            log.info("rig %s reporting telemetry every %ss", cfg.node, cfg.telemetry_interval)

        def stop(self, c):
            # Called twice at shutdown: keep it idempotent.
            for tref in self.trefs:
                tref.cancel()
            self.trefs = []

        def shutdown(self, c):
            self.stop(c)
            agent.stop_sampler()
            if getattr(agent, "serving", None) is not None:
                agent.serving.stop()

    return TelemetryStep


def create_app(config):
    # No fixups: Celery's Django fixup would load the panel's settings wherever DJANGO_SETTINGS_MODULE is set.
    app = Celery("morpheus_agent", fixups=[])
    app.conf.update(BASE_SETTINGS, **transport.agent_celery_config(config.broker_url, config.node, config.token))
    agent = app.agent = Agent(app, config)
    from .tasks import benchmarks, builds, chat, deployments, models, rig, router, routerchain, routerinstall

    for module in (rig, models, builds, deployments, benchmarks, chat, router, routerchain, routerinstall):
        module.register(agent)
    app.steps["consumer"].add(telemetry_step(agent))
    return app
