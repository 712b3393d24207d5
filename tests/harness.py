"""Real processes for integration tests: Redis, the panel worker, beat and rig agents."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from morpheus_admin.localredis import free_port

ROOT = Path(__file__).resolve().parent.parent
FAKES = Path(__file__).resolve().parent / "fakes"


def wait_until(predicate, timeout=20.0, interval=0.1, message="condition"):
    """Poll until predicate() is truthy; return its value or fail with what was awaited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message} (last: {last!r})")


def database_url(settings_dict):
    """The URL of the DB the test process uses (the test DB), for the worker processes."""
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    if engine.endswith("postgresql"):
        user = settings_dict.get("USER") or ""
        password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
        auth = f"{user}{password}@" if user else ""
        host = settings_dict.get("HOST") or "127.0.0.1"
        port = settings_dict.get("PORT") or 5432
        return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"
    raise RuntimeError(f"no worker URL for {engine}")


class Proc:
    def __init__(self, name, args, env, log_path, cwd=ROOT):
        self.name, self.args, self.env, self.log_path, self.cwd = name, args, env, Path(log_path), cwd
        self.popen = None

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.args, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        return self

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig=signal.SIGKILL):
        """Signal the whole process group (a prefork worker's children too)."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=15)

    def stop(self, timeout=10):
        self.ask_to_stop()
        self.wait_stopped(timeout)

    def ask_to_stop(self):
        """SIGTERM (a Celery worker's warm shutdown) without waiting, so several can stop at once."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait_stopped(self, timeout=10):
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def wait_for_log(self, text, timeout=30, since=0):
        """Wait for `text` in the log, looking only past `since` (a `mark()` taken earlier)."""
        return wait_until(lambda: text in self.log(since), timeout=timeout,
                          message=f"{text!r} in {self.name}'s log")

    def log(self, since=0):
        try:
            return self.log_path.read_text(errors="replace")[since:]
        except FileNotFoundError:
            return ""

    def mark(self):
        """Where the log ends now, so a later wait sees only what came after."""
        return len(self.log())


ALERT_SMTP_PORT = free_port()


def panel_env(redis_url, db_url, **extra):
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "morpheus_admin.settings",
        "REDIS_URL": redis_url,
        "DATABASE_URL": db_url,
        "PYTHONUNBUFFERED": "1",
        # Every report's "received"/"succeeded" line: wait_done reads them (the default logs one line per change).
        "MORPHEUS_LOG_REPORTS": "1",
        # Alerts evaluated every second, email channels sent to the SMTP sink tests start on ALERT_SMTP_PORT.
        "MORPHEUS_ALERT_CHECK_INTERVAL": "1",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(ALERT_SMTP_PORT),
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def panel_worker(env, log_dir, name="panel"):
    args = [sys.executable, "-m", "celery", "-A", "morpheus_admin", "worker", "-Q", "panel", "-P", "solo",
            "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "INFO"]
    return Proc(name, args, env, Path(log_dir) / f"{name}.log")


def beat(env, log_dir):
    schedule = Path(log_dir) / "celerybeat-schedule"
    args = [sys.executable, "-m", "celery", "-A", "morpheus_admin", "beat", "-s", str(schedule), "-l", "INFO"]
    return Proc("beat", args, env, Path(log_dir) / "beat.log")


def agent(name, token, redis_url, data_dir, log_dir, fake_nvml="nodriver", interval=1.0, extra_env=None):
    """A rig agent started as a provider starts it: the broker address (no credentials), its name, and its token in
    a 0600 file in its data folder."""
    from nodes.agent.transport import without_credentials

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    token_file = data_dir / "token"
    token_file.unlink(missing_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    env = dict(os.environ)
    for key in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL"):
        env.pop(key, None)  # an agent never touches the DB; make sure it could not
    env.update({
        "PYTHONPATH": os.pathsep.join([str(FAKES), str(ROOT)]),
        "FAKE_NVML": fake_nvml,
        "PYTHONUNBUFFERED": "1",
        # Outcomes sent again quickly, and inventories often: every integration test exercises both.
        "MORPHEUS_AGENT_RESEND_AFTER": "2",
        "MORPHEUS_AGENT_INVENTORY_INTERVAL": "3",
    })
    for key in ("MORPHEUS_NODE_TOKEN", "MORPHEUS_SECRETS_KEY", "REDIS_URL"):
        env.pop(key, None)  # a rig holds its own token, nothing of the panel's
    env.update(extra_env or {})
    args = [sys.executable, "-m", "nodes.agent", "--broker", without_credentials(redis_url), "--node", name,
            "--data-dir", str(data_dir), "--interval", str(interval)]
    return Proc(f"agent-{name}", args, env, Path(log_dir) / f"agent-{name}.log")


class Panel:
    """The shared panel worker as a test sees it: send it tasks and wait until it has handled them."""

    def __init__(self, worker, celery_app):
        self.worker, self.app = worker, celery_app

    def send(self, task, **kwargs):
        return self.app.send_task(task, kwargs=kwargs, queue="panel").id

    def report(self, node, token, kind, payload, seq=None, ack=False):
        """A `panel.report` signed with `token`, as an agent (or a forger holding some token) sends it; returns the
        task id. Numbered after the previous one unless `seq` is given."""
        from nodes.agent import envelope
        from tests.helpers import next_seq

        signed = envelope.sign_report(envelope.derive_keys(token), rig=node, kind=kind, payload=payload,
                                      seq=next_seq() if seq is None else seq, ack=ack)
        return self.send("panel.report", **signed)

    def wait_done(self, task, task_id, timeout=30):
        """Wait until the worker finished task `task_id`; returns its log line (with the return value)."""
        prefix = f"Task {task}[{task_id}] "

        def finished():
            # Celery logs "received" when it takes the task, then "succeeded in …: <result>" or "raised …".
            return next((line for line in self.worker.log().splitlines()
                         if prefix in line and f"{prefix}received" not in line), None)

        line = wait_until(finished, timeout=timeout, message=f"{task}[{task_id}] to finish in the panel worker")
        assert f"{prefix}succeeded" in line, line
        return line

    def roundtrip(self, timeout=30):
        """The worker (`-P solo`) takes its queue in order: once this is done, everything sent before is handled."""
        task_id = self.send("panel.check_node_status")
        self.wait_done("panel.check_node_status", task_id, timeout=timeout)


def purge_rig_queues(redis_url):
    """Drop messages left in rig queues (`node.<name>`) so the next test's agents do not receive them."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match="node.*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def llama_servers_under(folder):
    """Pids of the llama-servers serving a model under `folder` (a test's own tmp_path)."""
    return [int(pid) for pid in os.listdir("/proc")
            if pid.isdigit() and "llama-server" in (line := cmdline(pid)) and str(folder) in line]


def stop_llama_servers_under(folder, timeout=10):
    """Servers run in their own session and outlive the agent that started them: a test stops its own at teardown
    (after its agent, so nothing relaunches them)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in llama_servers_under(folder):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                continue
        try:
            wait_until(lambda: not llama_servers_under(folder), timeout=timeout, message="llama-server to exit")
            return
        except AssertionError:
            continue
