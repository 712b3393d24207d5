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

# No fixups: Celery's Django fixup would load the panel's settings wherever DJANGO_SETTINGS_MODULE is set.
app = Celery("morpheus_agent", broker=config.broker_url, fixups=[])
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
        self._booted = False
        self._resumed = False

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

    def publish_hardware(self, boot=False):
        profile = probe_hardware(self.cfg.data_dir)
        profile["telemetry_interval"] = self.cfg.telemetry_interval
        profile["protocol"] = protocol.PROTOCOL_VERSION
        if boot:
            # The panel fails running operations this agent did not take back after a restart.
            profile["boot"] = True
            profile["in_flight"] = in_flight_operations()
        self.send(protocol.HARDWARE, profile, expires=3600)
        return profile

    def publish_telemetry(self):
        with self._lock:
            snapshot = self._snapshot
        if snapshot is None:
            return
        # A reading older than a few intervals is worthless to the panel: let the broker drop it.
        self.send(protocol.TELEMETRY, snapshot, expires=max(10.0, 3 * self.cfg.telemetry_interval))

    def operation(self, operation_id, status, message="", result=None, progress=None, log_tail=None):
        payload = {"operation": operation_id, "status": status, "message": message, "result": result or {}}
        if progress is not None:
            payload["progress"] = progress
        if log_tail is not None:
            payload["log"] = log_tail
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
            self.publish_hardware(boot=not self._booted)
            self._booted = True
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
        if not agent._resumed:
            agent._resumed = True
            resume_downloads()
            supervisor.start()  # re-adopts servers that kept running while the agent was down
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


# --- model files -------------------------------------------------------------------------------------
from .downloader import DownloadCancelled, DownloadError, Downloader, DownloadRequest  # noqa: E402
from .modelfiles import Manifest, ModelFileError, delete as delete_model_path, describe, scan  # noqa: E402
from .validation import InvalidValue  # noqa: E402

downloader = Downloader(config.models_dir, config.state_dir, max_concurrent=config.max_downloads,
                        disk_margin=config.disk_margin)
manifest = Manifest(config.state_dir)
_active = set()
_active_lock = threading.Lock()


def _done_marker(operation_id):
    return config.state_dir / "done" / str(int(operation_id))


def _claim(operation_id):
    """One run per operation: not if it finished before (a redelivered message), not twice at once."""
    with _active_lock:
        if operation_id in _active or _done_marker(operation_id).exists():
            return False
        _active.add(operation_id)
        return True


def _release(operation_id, finished=True):
    with _active_lock:
        _active.discard(operation_id)
    if finished:
        marker = _done_marker(operation_id)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


def run_download(operation_id, request_data, model_file=None, resumed=False):
    if not _claim(operation_id):
        log.info("download %s already handled; ignoring this copy", operation_id)
        return
    try:
        try:
            request = DownloadRequest(**request_data)
        except (InvalidValue, TypeError) as exc:
            agent.operation(operation_id, "failed", f"refused: {exc}")
            return
        names = ", ".join(f.filename for f in request.files)
        agent.operation(operation_id, "running",
                        f"agent restarted; resuming {names}" if resumed else f"downloading {names}")

        def progress(p):
            agent.operation(operation_id, "running", progress=p)

        def waiting():
            agent.operation(operation_id, "running",
                            f"waiting for a download slot ({config.max_downloads} at a time on this rig)")

        result = downloader.download(operation_id, request, progress=progress, on_wait=waiting,
                                     extra={"model_file": model_file})
        first = result["files"][0]
        for item in result["files"]:
            if item["verified"] and not item["already_present"]:
                manifest.record(item["path"], item["sha256"])
        entry = describe(first["path"], manifest, request.repo_id, first["filename"])
        entry["verified"] = all(item["verified"] for item in result["files"])
        entry["sha256"] = first["sha256"] if len(result["files"]) == 1 else ""
        agent.send(protocol.MODEL_FILES, {"mode": "upsert", "model_file": model_file, "files": [entry]})
        total = sum(item["size"] for item in result["files"])
        verb = "already on the rig" if all(i["already_present"] for i in result["files"]) else "downloaded"
        agent.operation(operation_id, "succeeded",
                        f"{verb}: {names} ({total / 1024**3:.2f} GiB, sha256 {'verified' if entry['verified'] else 'not checked'})",
                        {k: result[k] for k in ("bytes_fetched", "resumed_from", "seconds", "commit")},
                        progress={"done": total, "total": total, "unit": "B"})
    except DownloadCancelled as exc:
        agent.operation(operation_id, "cancelled", str(exc))
    except DownloadError as exc:
        agent.operation(operation_id, "failed", str(exc))
    except Exception as exc:
        log.exception("download %s failed", operation_id)
        agent.operation(operation_id, "failed", f"unexpected error on the rig: {type(exc).__name__}: {exc}")
    finally:
        _release(operation_id)


def resume_downloads():
    """Downloads the journal says were in flight when this agent last stopped: continue them."""
    for entry in downloader.in_flight():
        operation_id = entry["operation"]
        model_file = (entry.get("extra") or {}).get("model_file")
        threading.Thread(target=run_download, args=(operation_id, entry["request"], model_file, True),
                         name=f"resume-{operation_id}", daemon=True).start()


def in_flight_operations():
    return [entry["operation"] for entry in downloader.in_flight()]


# Downloads run for hours: no soft/hard limit, and a redelivered copy returns early (_claim).
@app.task(name=protocol.AGENT_DOWNLOAD_MODEL, soft_time_limit=None, time_limit=None)
def download_model(operation_id, request, model_file=None):
    run_download(operation_id, request, model_file)


@app.task(name=protocol.AGENT_CANCEL)
def cancel(operation_id):
    downloader.cancel(operation_id)
    build_id = _build_of_operation.get(operation_id)
    if build_id is not None:  # a running llama.cpp build: kill its process group
        builder.cancel(build_id)


@app.task(name=protocol.AGENT_SCAN_MODELS, soft_time_limit=600, time_limit=900)
def scan_models(operation_id):
    if not _claim(operation_id):
        return
    try:
        agent.operation(operation_id, "running", "scanning " + ", ".join(str(d) for d in config.model_dirs))
        files = scan(config.model_dirs, manifest)
        agent.send(protocol.MODEL_FILES, {"mode": "replace", "files": files})
        agent.operation(operation_id, "succeeded", f"{len(files)} GGUF model{'s' if len(files) != 1 else ''} found",
                        {"count": len(files)})
    except Exception as exc:
        log.exception("scan failed")
        agent.operation(operation_id, "failed", f"scan failed: {exc}")
    finally:
        _release(operation_id)


@app.task(name=protocol.AGENT_DELETE_MODEL_FILE)
def delete_model_file(operation_id, path):
    if not _claim(operation_id):
        return
    try:
        removed = delete_model_path(path, config.model_dirs, manifest)
        agent.send(protocol.MODEL_FILES, {"mode": "remove", "files": [{"path": path}]})
        agent.operation(operation_id, "succeeded",
                        f"deleted {len(removed)} file{'s' if len(removed) != 1 else ''}" if removed else "already gone",
                        {"removed": removed})
    except ModelFileError as exc:
        agent.operation(operation_id, "failed", str(exc))
    except OSError as exc:
        agent.operation(operation_id, "failed", f"could not delete {path}: {exc.strerror}")
    finally:
        _release(operation_id)


# --- llama.cpp builds ----------------------------------------------------------------------------------
from . import builder as builds  # noqa: E402
from .supervisor import FAILED as SERVER_FAILED, Supervisor  # noqa: E402

builder = builds.Builder(config.data_dir / "builds", ccache_dir=config.ccache_dir)
_build_of_operation = {}


@app.task(name=protocol.AGENT_BUILD_LLAMA, soft_time_limit=None, time_limit=None)
def build_llama(operation_id, build_id, request, hardware=None):
    if not _claim(operation_id):
        return
    _build_of_operation[operation_id] = build_id
    try:
        try:
            build_request = builds.BuildRequest(**request)
        except (builds.BuildError, TypeError) as exc:
            agent.operation(operation_id, "failed", f"refused: {exc}")
            return
        # The rig's own view of its GPUs decides the backend, not what the panel last saw.
        hardware = probe_hardware(config.data_dir)
        agent.operation(operation_id, "running", f"building {build_request.ref} from {build_request.source}")

        def progress(p):
            agent.operation(operation_id, "running", f"{p['stage']} {p['percent']}%",
                            progress={"done": p["percent"], "total": 100, "unit": "%"}, log_tail=p["log"])

        result = builder.build(build_request, hardware, progress=progress)
        log_tail = result.pop("log")
        agent.operation(operation_id, "succeeded",
                        f"built llama-server {result['version']} ({result['backend']}) in {result['seconds']:.0f} s",
                        result, progress={"done": 100, "total": 100, "unit": "%"}, log_tail=log_tail)
    except builds.BuildCancelled as exc:
        agent.operation(operation_id, "cancelled", str(exc))
    except builds.BuildError as exc:
        agent.operation(operation_id, "failed", str(exc))
    except Exception as exc:
        log.exception("build %s failed", build_id)
        agent.operation(operation_id, "failed", f"unexpected error on the rig: {type(exc).__name__}: {exc}")
    finally:
        _build_of_operation.pop(operation_id, None)
        _release(operation_id)


@app.task(name=protocol.AGENT_ADOPT_BUILD)
def adopt_build(operation_id, build_id, path):
    if not _claim(operation_id):
        return
    try:
        if not path.startswith("/") or not path.rsplit("/", 1)[-1].startswith("llama-server"):
            raise builds.BuildError(f"{path} is not an absolute path to a llama-server binary")
        version = builds.server_version(path)
        backend = "cuda" if "cuda" in version["version_text"].lower() else "cpu"
        agent.operation(operation_id, "succeeded", f"llama-server {version['version']} runs; adopted",
                        {"binary": path, "backend": backend, "seconds": 0, **version})
    except builds.BuildError as exc:
        agent.operation(operation_id, "failed", str(exc))
    finally:
        _release(operation_id)


@app.task(name=protocol.AGENT_DELETE_BUILD)
def delete_build(operation_id, build_id):
    if not _claim(operation_id):
        return
    try:
        folder = (config.data_dir / "builds" / str(int(build_id))).resolve()
        in_use = [s for s in supervisor.snapshot() if s["pid"] and str(folder) in str(s.get("binary", ""))]
        if in_use:
            agent.operation(operation_id, "failed", "a running server uses this build")
            return
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        agent.operation(operation_id, "succeeded", f"removed {folder}")
    finally:
        _release(operation_id)


# --- llama-server deployments ----------------------------------------------------------------------------
_pending_goal = {}  # deployment id → (operation id, goal state, generation)
_goal_lock = threading.Lock()


def _deployment_report(report):
    # The operation's outcome first: a provider's click waits on it, the state report can follow.
    with _goal_lock:
        pending = _pending_goal.get(report["deployment"])
        if pending is not None and report["generation"] >= pending[2]:
            operation_id, goal, _generation = pending
            if report["state"] == goal:
                del _pending_goal[report["deployment"]]
                agent.operation(operation_id, "succeeded", report["message"] or goal)
            elif report["state"] == SERVER_FAILED:
                del _pending_goal[report["deployment"]]
                agent.operation(operation_id, "failed", report["message"])
    agent.send(protocol.DEPLOYMENT, report)


supervisor = Supervisor(config.state_dir, on_report=_deployment_report)


@app.task(name=protocol.AGENT_APPLY_DEPLOYMENT)
def apply_deployment(operation_id, spec, goal):
    from .serverspec import SpecError

    with _goal_lock:
        _pending_goal[spec["deployment_id"]] = (operation_id, goal, spec.get("generation", 0))
    try:
        supervisor.apply(spec)
    except SpecError as exc:
        with _goal_lock:
            _pending_goal.pop(spec["deployment_id"], None)
        agent.operation(operation_id, "failed", f"refused on the rig: {exc}")


@app.task(name=protocol.AGENT_FORGET_DEPLOYMENT)
def forget_deployment(deployment_id):
    supervisor.forget(deployment_id)


@app.task(name=protocol.AGENT_RECONCILE_DEPLOYMENTS)
def reconcile_deployments(specs):
    """The panel's periodic reminder of every deployment it wants here; anything else is stopped and dropped."""
    from .serverspec import SpecError

    wanted = set()
    for spec in specs:
        wanted.add(spec.get("deployment_id"))
        try:
            supervisor.apply(spec)
        except SpecError as exc:
            log.warning("deployment %s refused: %s", spec.get("deployment_id"), exc)
    for report in supervisor.snapshot():
        if report["deployment"] not in wanted:
            supervisor.forget(report["deployment"])
