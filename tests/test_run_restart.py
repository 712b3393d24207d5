"""`scripts/run` stopped (Ctrl-C) and started again: an enrolled remote rig's agent, left running, comes back online
by itself: Redis returns on the port and with the admin password kept in var/redis/broker.json, the panel worker
recreates the rig's broker account, and the agent's own retries log it in again."""

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis

from morpheus_admin.localredis import free_port, url_for
from tests import harness
from tests.harness import ROOT, wait_until

pytestmark = pytest.mark.integration

START_TIMEOUT = 180  # the first start may reinstall requirements.txt (scripts/venvtools.py's stamp)
STOP_TIMEOUT = 60
ONLINE_TIMEOUT = 90
POLL = 0.5


def run_env(tmp_path, web_port):
    """The test process's environment without anything of its own panel (test DB, test Redis, shared secrets key)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MORPHEUS_") and k not in ("REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env.update({
        "MORPHEUS_DATA_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "MORPHEUS_PORT": str(web_port),
        "MORPHEUS_ADMIN_PASSWORD": "restart-test-operator-password-0123456789",
        "PYTHONUNBUFFERED": "1",
    })
    return env


class RunCommand:
    """`scripts/run` in its own session (process group = its pid), its output in one log file."""

    def __init__(self, env, log_path):
        self.env, self.log_path, self.popen, self.since = env, Path(log_path), None, 0

    def start(self):
        self.since = len(self.log())
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "scripts/run"], cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self):
        """What this start printed (not the earlier ones)."""
        return self.log()[self.since:]

    def wait_ready(self, timeout=START_TIMEOUT):
        def ready():
            if "is running at" in self.output():
                return True
            if self.popen.poll() is not None:
                raise AssertionError(f"scripts/run exited with {self.popen.returncode}:\n{self.output()[-4000:]}")
            return False

        try:
            wait_until(ready, timeout=timeout, interval=POLL, message="scripts/run to print 'is running at'")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- scripts/run output ---\n{self.output()[-4000:]}") from None

    def interrupt(self, timeout=STOP_TIMEOUT):
        """Ctrl-C: SIGINT to the whole process group, as a terminal sends it; returns the exit status."""
        try:
            os.killpg(self.popen.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        return self.popen.wait(timeout=timeout)

    def kill(self):
        """Teardown: SIGINT, then SIGKILL the group (its children then get SIGTERM from PR_SET_PDEATHSIG)."""
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            self.interrupt(timeout=30)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=10)


def processes_of(data_dir):
    """Pids of live processes started by scripts/run for `data_dir` (its environment names that folder)."""
    marker = f"MORPHEUS_DATA_DIR={data_dir}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as fh:
                state = fh.read().rpartition(b")")[2].split()[0]
        except OSError:
            continue
        if marker in environ and state != b"Z":
            found.append(int(pid))
    return found


def kill_leftovers(data_dir):
    for pid in processes_of(data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def panel_shell(env, code):
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def rig_state(env, name):
    """The panel's view of rig `name`: {"status": ..., "last_seen": aware datetime or None}."""
    out = panel_shell(env, (
        "import json\nfrom nodes.models import Node\n"
        f"n = Node.objects.get(name={name!r})\n"
        "print('RIG-STATE ' + json.dumps({'status': n.status, "
        "'last_seen': n.last_seen.isoformat() if n.last_seen else None}))"
    ))
    line = next(line for line in out.splitlines() if line.startswith("RIG-STATE "))
    state = json.loads(line.removeprefix("RIG-STATE "))
    state["last_seen"] = datetime.fromisoformat(state["last_seen"]) if state["last_seen"] else None
    return state


def rig_logged_in(admin_url, name):
    """Whether a client is connected to the broker as the rig's own ACL user."""
    client = redis.Redis.from_url(admin_url, socket_timeout=5)
    try:
        return any(entry.get("user") == f"rig-{name}" for entry in client.client_list())
    except redis.RedisError:
        return False
    finally:
        client.close()


def test_remote_rig_comes_back_after_scripts_run_restarts(tmp_path):
    data_dir = (tmp_path / "var").resolve()
    env = run_env(tmp_path, free_port())
    run = RunCommand(env, tmp_path / "run.log")
    remote = None
    try:
        # 1. First start.
        run.start().wait_ready()
        first = run.output()
        assert "Secrets key:" in first and "(created; back it up)" in first, first
        saved = json.loads((data_dir / "redis" / "broker.json").read_text())
        port, password = saved["port"], saved["password"]
        assert f"Started Redis at redis://127.0.0.1:{port}/0" in first, first
        admin_env = dict(env, REDIS_URL=url_for("127.0.0.1", port, password),
                         DJANGO_SETTINGS_MODULE="morpheus_admin.settings")

        # 2. Enrol a remote rig the way the panel's enrolment view does.
        out = panel_shell(admin_env, (
            "from nodes.models import Node\nfrom nodes import rigs\n"
            "token, problem = rigs.enrol(Node(name='remote'))\n"
            "assert problem is None, problem\n"
            "print('TOKEN ' + token)"
        ))
        token = next(line for line in out.splitlines() if line.startswith("TOKEN ")).removeprefix("TOKEN ")

        # 3. Its agent, started as a provider starts it (address only, token in a 0600 file).
        remote = harness.agent("remote", token, f"redis://127.0.0.1:{port}/0", tmp_path / "remote-data",
                               tmp_path / "logs").start()
        wait_until(lambda: rig_state(admin_env, "remote")["status"] == "online", timeout=ONLINE_TIMEOUT,
                   interval=POLL, message="rig 'remote' online (first run)")
        assert rig_logged_in(admin_env["REDIS_URL"], "remote")

        # 4. Ctrl-C: everything scripts/run started stops; the remote agent keeps running (it is on another machine).
        assert run.interrupt() == 0, run.output()[-4000:]
        assert "Stopped every process scripts/run started." in run.output()
        wait_until(lambda: not processes_of(data_dir), timeout=20, interval=POLL,
                   message="no process of the first scripts/run left")
        assert remote.alive(), remote.log()[-4000:]
        assert json.loads((data_dir / "redis" / "broker.json").read_text()) == saved

        # 5. Start again: same Redis address and password, key kept; the rig comes back with nothing done on it.
        restarted_at = datetime.now(timezone.utc)
        run.start().wait_ready()
        second = run.output()
        ready_at = datetime.now(timezone.utc)
        assert "(kept)" in second and "Secrets key:" in second, second
        assert f"Started Redis at redis://127.0.0.1:{port}/0" in second, second
        assert json.loads((data_dir / "redis" / "broker.json").read_text()) == saved

        # Reports queued in Redis before it stopped would also move last_seen once the worker is back: require the
        # agent logged in again as its own user and reports processed well after the panel was up.
        wait_until(lambda: rig_logged_in(admin_env["REDIS_URL"], "remote"), timeout=ONLINE_TIMEOUT, interval=POLL,
                   message="the remote agent to log in to the restarted broker as rig-remote")
        state = wait_until(
            lambda: (s := rig_state(admin_env, "remote"))["last_seen"] and s["last_seen"] > ready_at and s,
            timeout=ONLINE_TIMEOUT, interval=POLL, message="rig 'remote' seen after the restart")
        assert state["last_seen"] > restarted_at
        later = state["last_seen"]
        state = wait_until(
            lambda: (s := rig_state(admin_env, "remote"))["last_seen"] > later and s["status"] == "online" and s,
            timeout=30, interval=POLL, message="rig 'remote' reporting steadily after the restart")
        assert remote.alive()

        # 6. Stop it all; nothing of scripts/run may be left.
        remote.stop()
        assert run.interrupt() == 0, run.output()[-4000:]
        wait_until(lambda: not processes_of(data_dir), timeout=20, interval=POLL,
                   message="no process of scripts/run left")
    finally:
        if remote is not None:
            remote.stop()
        run.kill()
        kill_leftovers(data_dir)
