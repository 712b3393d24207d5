"""Keeping llama-server processes in the state the panel asks for.

Each server runs in its own process session (it outlives the agent) with its log in a file. Its pid and
command line are written to the state folder, so an agent that starts again re-adopts it (pid + command-line
check) instead of launching a duplicate. A crashed server is restarted with exponential backoff; one that
keeps crashing is marked failed with its last log lines. Plain Python, no Django.

server.log is rotated by size on the supervisor's loop (copy-truncate, see rotate_log): the server holds the
file open across agent restarts and never reopens it, so the file is copied to server.log.1 and cut to zero in
place. Limits: MORPHEUS_SERVER_LOG_MAX_BYTES (default 20 MiB), MORPHEUS_SERVER_LOG_BACKUPS (default 2).
"""

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

from .childenv import child_environment
from .protocol import SERVER_STATES
from .serverspec import ServerSpec, SpecError, launch_args

log = logging.getLogger("morpheus.agent.supervisor")

STOPPED, STARTING, LOADING, HEALTHY, BACKOFF, FAILED = SERVER_STATES
MAX_CRASHES = 5  # within CRASH_WINDOW seconds → failed
CRASH_WINDOW = 600
BACKOFF_BASE, BACKOFF_MAX = 1.0, 60.0
STOP_TIMEOUT = 10.0
LOG_MAX_BYTES = 20 * 1024 * 1024  # MORPHEUS_SERVER_LOG_MAX_BYTES
LOG_BACKUPS = 2  # MORPHEUS_SERVER_LOG_BACKUPS


def env_int(name, default, minimum):
    """An integer setting from the environment; a clear ValueError when it is not one (or is too small)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def port_free(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def read_cmdline(pid):
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pid_alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def write_private(path, text, mode=0o600):
    """Write `text` to `path` atomically (a reader sees the old file or the new one), readable by this user only."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def owned_process_running(proc):
    """A supervised process (`proc` has pid, popen, cmdline, last_exit) is ours and alive: the pid exists, is not a
    zombie, and still runs the command line we started. Records the exit code when our own child has ended."""
    if proc.pid is None:
        return False
    if proc.popen is not None:
        if proc.popen.poll() is not None or not pid_alive(proc.pid):
            # poll() answers None while another thread is polling the same process: wait() gets the exit code.
            proc.last_exit = proc.popen.wait()
            return False
        return True  # our own child; its /proc cmdline is empty for a moment after exec, so don't compare it
    return pid_alive(proc.pid) and read_cmdline(proc.pid) == proc.cmdline


def stop_process_group(pid, still_running, timeout, poll=0.05):
    """SIGTERM the process group `pid` leads, SIGKILL it if `still_running()` after `timeout` s; wait until it is gone.
    Returns True when it had to be killed."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and still_running():
        time.sleep(poll)
    if not still_running():
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while still_running():
        time.sleep(poll)
    return True


def _tail_lines(path, lines):
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return []
    return list(deque(data.splitlines(), maxlen=lines))


def tail(path, lines=40):
    """The last lines of a log. Just after a rotation the file holds few lines or none: the rest come from the
    newest backup (path.1), so a crash right after a rotation still shows what the server said last."""
    found = _tail_lines(path, lines)
    if len(found) < lines:
        found = _tail_lines(f"{path}.1", lines - len(found)) + found
    return "\n".join(found)


def rotate_log(path, max_bytes, backups):
    """Copy-truncate a log that has grown past max_bytes: path.N-1 → path.N …, path → path.1, then cut path to 0.

    The writer (llama-server) keeps its descriptor and never reopens the file, so the file cannot be renamed
    away; it is copied and truncated in place. That is only right because the descriptor was opened with
    O_APPEND (see Supervisor._launch): each write lands at the current end, so after the truncation it writes
    at offset 0 instead of its old offset (which would leave a sparse file of NUL bytes). Lines written between
    the copy and the truncation are lost: a few lines at most, once per rotation. One stat when nothing is due.
    Returns True when it rotated."""
    try:
        if os.stat(path).st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    path = str(path)
    if backups > 0:
        for n in range(backups, 1, -1):
            try:
                os.replace(f"{path}.{n - 1}", f"{path}.{n}")
            except FileNotFoundError:
                pass
        tmp = f"{path}.1.tmp"
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1024 * 1024):
                dst.write(chunk)
        os.replace(tmp, f"{path}.1")  # path.1 appears complete: a tail read never sees half a copy
    # Truncate through a descriptor of our own, not by reopening in "w" mode.
    with open(path, "r+b") as fh:
        fh.truncate(0)
    return True


def probe_health(host, port, timeout=1.0):
    """healthy | loading | None (not answering)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in target:
        target = f"[{target}]"
    try:
        with urllib.request.urlopen(f"http://{target}:{port}/health", timeout=timeout) as response:
            return HEALTHY if response.status == 200 else LOADING
    except urllib.error.HTTPError as exc:
        return LOADING if exc.code == 503 else None
    except (OSError, ValueError):
        return None


class Server:
    """One deployment on this rig: its spec, its process, its history."""

    def __init__(self, spec, folder):
        self.spec = spec
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pid = None
        self.cmdline = None
        self.popen = None
        self.state = STOPPED
        self.started_at = None
        self.restarts = 0
        self.crashes = deque(maxlen=MAX_CRASHES)
        self.next_start = 0.0
        self.message = ""
        self.last_exit = None
        self.healthy_generation = None

    @property
    def log_path(self):
        return self.folder / "server.log"

    @property
    def key_path(self):
        return self.folder / "api-key"

    @property
    def state_path(self):
        return self.folder / "state.json"

    def save(self):
        data = {"spec": self.spec.to_dict(), "pid": self.pid, "cmdline": self.cmdline, "started_at": self.started_at,
                "restarts": self.restarts, "crashes": list(self.crashes), "state": self.state,
                "message": self.message}
        write_private(self.state_path, json.dumps(data))

    @classmethod
    def load(cls, folder):
        data = json.loads((Path(folder) / "state.json").read_text())
        server = cls(ServerSpec.from_dict(data["spec"]), folder)
        server.pid, server.cmdline = data.get("pid"), data.get("cmdline")
        server.started_at, server.restarts = data.get("started_at"), data.get("restarts", 0)
        server.crashes.extend(data.get("crashes", []))
        server.state, server.message = data.get("state", STOPPED), data.get("message", "")
        return server

    def is_running(self):
        return owned_process_running(self)

    def report(self):
        return {
            "deployment": self.spec.deployment_id,
            "state": self.state,
            "pid": self.pid if self.is_running() else None,
            "port": self.spec.port,
            "host": self.spec.host,
            "started_at": self.started_at,
            "restarts": self.restarts,
            "message": self.message,
            "log": tail(self.log_path, 40),
            "generation": self.spec.generation,
            "desired": self.spec.desired,
            "binary": self.spec.binary,
        }


def describe_exit(code):
    """Popen's return code in words: "exit code 1", "SIGKILL"; None when the agent did not start it (re-adopted)."""
    if code is None:
        return "exit status unknown: started before the agent's last restart"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def duration_text(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"


def exit_event(server, now, uptime, restart_in, last_lines):
    """What the panel keeps of one unplanned exit (protocol.SERVER_EXIT)."""
    code = server.last_exit
    return {"deployment": server.spec.deployment_id, "at": now, "uptime": uptime, "restart_in": restart_in,
            "exit_code": code if code is not None and code >= 0 else None,
            "signal": -code if code is not None and code < 0 else None, "log": last_lines}


class Supervisor:
    def __init__(self, state_dir, on_report=None, interval=1.0, on_exit=None, log_max_bytes=None, log_backups=None):
        self.dir = Path(state_dir) / "servers"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.on_report = on_report
        self.on_exit = on_exit  # called with an exit event (exit_event()) each time a server dies by itself
        self.interval = interval
        # server.log rotation (rotate_log): arguments, else the environment, else the defaults.
        self.log_max_bytes = (log_max_bytes if log_max_bytes is not None
                              else env_int("MORPHEUS_SERVER_LOG_MAX_BYTES", LOG_MAX_BYTES, 1))
        self.log_backups = (log_backups if log_backups is not None
                            else env_int("MORPHEUS_SERVER_LOG_BACKUPS", LOG_BACKUPS, 0))
        self.servers = {}
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = None
        self._last_sent = {}

    # --- lifecycle -------------------------------------------------------------------------------
    def adopt_existing(self):
        """After an agent restart: take back servers that kept running (same pid and command line)."""
        for state_file in sorted(self.dir.glob("*/state.json")):
            try:
                server = Server.load(state_file.parent)
            except (OSError, ValueError, SpecError) as exc:
                log.warning("ignoring unreadable server state %s: %s", state_file, exc)
                continue
            if server.is_running():
                server.message = f"re-adopted pid {server.pid} after the agent restarted"
                log.info("deployment %s: %s", server.spec.deployment_id, server.message)
            elif server.spec.desired == "running":
                server.pid = None
                server.state = STOPPED
                server.message = "was not running when the agent started; starting it"
            self.servers[server.spec.deployment_id] = server

    def start(self):
        self.adopt_existing()
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()

    def stop_loop(self):
        self._stop.set()

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception:
                log.exception("reconcile failed")
            self._stop.wait(self.interval)

    # --- desired state ---------------------------------------------------------------------------
    def apply(self, spec_data):
        """Store what the panel wants for one deployment; the loop converges to it. Raises SpecError."""
        spec = ServerSpec.from_dict(spec_data)
        with self.lock:
            server = self.servers.get(spec.deployment_id)
            if server is None:
                server = Server(spec, self.dir / str(spec.deployment_id))
                self.servers[spec.deployment_id] = server
            elif spec.generation != server.spec.generation or spec.desired != server.spec.desired:
                changed_launch = launch_args(spec) != launch_args(server.spec) or spec.api_key != server.spec.api_key
                restart_asked = spec.generation != server.spec.generation and spec.desired == "running"
                if server.is_running() and (changed_launch or restart_asked):
                    self._terminate(server, "restarting with new settings")
                server.spec = spec
                server.crashes.clear()
                server.next_start = 0.0
                if server.state == FAILED:
                    server.state = STOPPED
            server.save()
        self.reconcile_one(server, force_report=True)  # the panel waits on this answer
        return server.report()

    def forget(self, deployment_id):
        """The deployment was deleted on the panel: stop it and drop its state."""
        with self.lock:
            server = self.servers.pop(int(deployment_id), None)
        if server is not None:
            self._terminate(server, "deleted")
            server.state_path.unlink(missing_ok=True)

    def reconcile(self):
        with self.lock:
            servers = list(self.servers.values())
        for server in servers:
            self.rotate_log(server)
            self.reconcile_one(server)

    def rotate_log(self, server):
        """One stat per server per pass; copy-truncate when server.log is past the limit. Outside the lock: only
        this loop rotates, and tail() reads a complete server.log.1 at any moment of a rotation."""
        try:
            if rotate_log(server.log_path, self.log_max_bytes, self.log_backups):
                log.info("deployment %s: rotated %s", server.spec.deployment_id, server.log_path)
        except OSError as exc:
            log.warning("deployment %s: could not rotate %s: %s", server.spec.deployment_id, server.log_path, exc)

    def reconcile_one(self, server, force_report=False):
        with self.lock:
            before = (server.state, server.pid, server.restarts, server.message)
            if server.spec.desired == "stopped":
                if server.is_running():
                    self._terminate(server, "stopped by the provider")
                elif server.state != STOPPED:
                    server.state, server.message = STOPPED, server.message or "stopped"
            else:
                self._keep_running(server)
            if (server.state, server.pid, server.restarts, server.message) != before:
                server.save()
        changed = (server.state, server.pid, server.restarts, server.message) != before
        self._send(server, force=force_report or changed)

    def _keep_running(self, server):
        now = time.time()
        if server.state == FAILED:
            return
        if server.is_running():
            health = probe_health(server.spec.host, server.spec.port)
            if health == HEALTHY:
                if server.state != HEALTHY:
                    server.message = f"healthy ({now - (server.started_at or now):.2f} s after launch)"
                server.state = HEALTHY
            elif health == LOADING:
                server.state = LOADING
            elif server.state not in (STARTING, LOADING):
                server.state = STARTING
            return
        if server.state in (STARTING, LOADING, HEALTHY) and server.pid is not None:
            self._crashed(server, now)
            return
        if server.state == BACKOFF and now < server.next_start:
            return
        self._launch(server)

    def _crashed(self, server, now):
        exit_text = describe_exit(server.last_exit)
        uptime = now - server.started_at if server.started_at else None
        server.crashes.append(now)
        server.pid, server.popen = None, None
        recent = [t for t in server.crashes if now - t <= CRASH_WINDOW]
        last_lines = tail(server.log_path, 15)
        after = f" after {duration_text(uptime)}" if uptime is not None else ""
        if len(recent) >= MAX_CRASHES:
            server.state, delay = FAILED, None
            server.message = (f"crashed {len(recent)} times in {CRASH_WINDOW // 60} min ({exit_text}); not restarting "
                              f"until its settings change or it is started again. Last log lines:\n{last_lines}")
        else:
            delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (len(recent) - 1))
            server.state = BACKOFF
            server.next_start = now + delay
            server.message = f"crashed ({exit_text}){after}; restart {len(recent)} in {delay:.0f} s"
        if self.on_exit is not None:
            self.on_exit(exit_event(server, now, uptime, delay, last_lines))

    def _launch(self, server):
        spec = server.spec
        if not os.access(spec.binary, os.X_OK):
            server.state, server.message = FAILED, f"the build's binary {spec.binary} is missing or not executable"
            return
        if not os.path.isfile(spec.model_path):
            server.state, server.message = FAILED, f"the model file {spec.model_path} is not on this rig"
            return
        if not port_free(spec.host, spec.port):
            server.state = FAILED
            server.message = f"port {spec.port} on {spec.host} is already in use by another program; choose another"
            return
        key_file = None
        if spec.api_key:
            fd = os.open(server.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(spec.api_key + "\n")
            key_file = server.key_path
        args = launch_args(spec, key_file)
        # "ab" (O_APPEND) on purpose: the server inherits this descriptor and keeps it after the agent restarts;
        # rotate_log truncates the file under it, and only with O_APPEND do its next writes go to the new end
        # (offset 0) rather than its old offset, which would leave a sparse file starting with NUL bytes.
        with open(server.log_path, "ab") as log_file:
            log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} launching: {' '.join(args)}\n".encode())
            log_file.flush()
            popen = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=server.folder, env=child_environment())
        if server.started_at is not None:
            server.restarts += 1
        server.popen, server.pid = popen, popen.pid
        server.cmdline = args
        server.started_at = time.time()
        server.state, server.message = STARTING, f"launched pid {popen.pid}"
        server.last_exit = None
        threading.Thread(target=self._watch_start, args=(server, popen.pid), name=f"start-{spec.deployment_id}",
                         daemon=True).start()

    def _watch_start(self, server, pid, timeout=900.0):
        """Probe a fresh server every few milliseconds, so "healthy" is reported the moment it is (the loop polls
        only once a second)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if server.pid != pid or not server.is_running():
                return
            health = probe_health(server.spec.host, server.spec.port, timeout=0.5)
            if health == HEALTHY:
                with self.lock:
                    if server.pid != pid or server.state == HEALTHY:
                        return
                    server.state = HEALTHY
                    server.message = f"healthy ({time.time() - server.started_at:.2f} s after launch)"
                    server.save()
                self._send(server, force=True)
                return
            if health == LOADING and server.state == STARTING:
                with self.lock:
                    server.state = LOADING
            time.sleep(0.005 if time.time() - server.started_at < 10 else 0.1)

    def _terminate(self, server, why):
        if server.pid is not None and server.is_running():
            if stop_process_group(server.pid, server.is_running, STOP_TIMEOUT):
                why += f" (killed after {STOP_TIMEOUT:.0f} s)"
        server.pid, server.popen, server.state, server.message = None, None, STOPPED, why
        server.save()

    # --- reports ---------------------------------------------------------------------------------
    def _send(self, server, force=False):
        if self.on_report is None:
            return
        now = time.monotonic()
        key = server.spec.deployment_id
        if force or now - self._last_sent.get(key, 0) >= 10:
            self._last_sent[key] = now
            try:
                self.on_report(server.report())
            except Exception:
                log.exception("deployment report failed")

    def snapshot(self):
        with self.lock:
            return [server.report() for server in self.servers.values()]
