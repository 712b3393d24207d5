"""The rig-side supervisor keeping real llama-server processes as the panel asks, with a small generated model.

No agent and no panel here: a Supervisor over a temporary state folder, its reports collected in a list.
Every server a test starts is stopped at teardown (the fixture kills whatever is left of it).
"""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nodes.agent import supervisor as sup
from nodes.agent.supervisor import Supervisor
from tests import llama
from tests.gguf_model import write_tiny_llama
from tests.harness import wait_until
from tests.helpers import free_port


@pytest.fixture(scope="session")
def binary():
    return str(llama.server_binary())


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama-F32.gguf"))


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def alive(pid):
    return sup.pid_alive(pid)


class Supervisors:
    """Makes supervisors over one state folder; at teardown stops their loops and every server they launched."""

    def __init__(self, state_dir, binary):
        self.state_dir, self.binary = state_dir, binary
        self.made, self.reports, self.pids, self.exits = [], [], set(), []

    def new(self, loop=False, interval=0.1):
        supervisor = Supervisor(self.state_dir, on_report=self._record, interval=interval, on_exit=self.exits.append)
        self.made.append(supervisor)
        if loop:
            supervisor.start()
        return supervisor

    def _record(self, report):
        self.reports.append(report)
        if report["pid"]:
            self.pids.add(report["pid"])

    def states(self, deployment_id=1):
        return [r["state"] for r in self.reports if r["deployment"] == deployment_id]

    def stop_all(self):
        for supervisor in self.made:
            supervisor.stop_loop()
        for supervisor in self.made:
            for server in list(supervisor.servers.values()):
                if server.pid:
                    self.pids.add(server.pid)
                supervisor._terminate(server, "test teardown")
        for pid in self.pids:  # anything a test left behind on purpose
            if alive(pid) and self.binary.encode() in cmdline(pid):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def supervisors(tmp_path, binary):
    made = Supervisors(tmp_path / "state", binary)
    yield made
    made.stop_all()


@pytest.fixture
def spec(binary, model):
    def make(**changes):
        return {"deployment_id": 1, "binary": binary, "model_path": model, "port": free_port(), "host": "127.0.0.1",
                "ctx_size": 512, "n_gpu_layers": 0, "parallel": 1, "flash_attn": "off", "desired": "running",
                "generation": 1, "extra_flags": ["--no-webui"], **changes}
    return make


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(sup, "BACKOFF_BASE", 0.05)
    monkeypatch.setattr(sup, "BACKOFF_MAX", 0.2)


def health(port, headers=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/health", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def port_is_free(port):
    """Free for a new server: no listener. SO_REUSEADDR as llama-server sets it: closed probes linger in TIME_WAIT."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def healthy(server, timeout=60):
    wait_until(lambda: server.state == sup.HEALTHY or server.state == sup.FAILED or not server.is_running(),
               timeout=timeout, message="healthy")
    assert server.state == sup.HEALTHY, f"{server.state}: {server.message}\n{sup.tail(server.log_path, 10)}"
    return server.pid


# --- launch and health -------------------------------------------------------------------------------------
def test_it_launches_a_server_and_reports_healthy_the_moment_it_answers(supervisors, spec):
    supervisor = supervisors.new()  # no reconcile loop: only the start watcher can see it turn healthy
    data = spec()
    started = time.monotonic()
    first = supervisor.apply(data)
    server = supervisor.servers[1]
    assert first["state"] in (sup.STARTING, sup.LOADING) and first["pid"] == server.pid
    wait_until(lambda: sup.HEALTHY in supervisors.states(), timeout=30, message="a healthy report")
    took = time.monotonic() - started
    assert health(data["port"]) == 200
    assert took < 10, took  # FACTS.md: this model is healthy ≈ 0.07 s after launch
    healthy_report = [r for r in supervisors.reports if r["state"] == sup.HEALTHY][0]
    assert healthy_report["pid"] == server.pid and healthy_report["message"].startswith("healthy (")
    assert supervisors.states()[0] in (sup.STARTING, sup.LOADING)
    assert f"launching: {data['binary']} --model" in healthy_report["log"]  # the log file, as the panel shows it
    # llama-server logs from its own thread: its lines reach the file a moment later.
    wait_until(lambda: f"listening on http://127.0.0.1:{data['port']}" in server.report()["log"], timeout=30,
               message="the server's own log lines")
    # Its own session: it outlives the agent's process group.
    assert os.getsid(server.pid) == server.pid


def test_it_restarts_a_killed_server_after_a_backoff(supervisors, spec, fast_backoff):
    supervisor = supervisors.new(loop=True)
    data = spec()
    supervisor.apply(data)
    server = supervisor.servers[1]
    pid = healthy(server)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: server.pid not in (None, pid) and server.state == sup.HEALTHY, timeout=60,
               message=f"restarted and healthy ({server.message})")
    assert server.restarts == 1
    assert sup.BACKOFF in supervisors.states()
    crash = [r for r in supervisors.reports if r["state"] == sup.BACKOFF][0]
    assert "crashed (SIGKILL) after " in crash["message"]
    assert health(data["port"]) == 200
    # The exit is kept as an event for the panel's crash history: the signal, how long it ran, its last lines.
    [event] = supervisors.exits
    assert (event["deployment"], event["signal"], event["exit_code"]) == (1, 9, None)
    assert event["uptime"] > 0 and event["restart_in"] == pytest.approx(sup.BACKOFF_BASE)
    assert "listening on" in event["log"]


def test_it_gives_up_on_a_server_that_keeps_crashing_and_shows_its_last_log_lines(supervisors, spec, fast_backoff,
                                                                                   tmp_path):
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(os.urandom(1 << 20))
    supervisor = supervisors.new(loop=True)
    supervisor.apply(spec(model_path=str(corrupt)))
    server = supervisor.servers[1]
    wait_until(lambda: server.state == sup.FAILED, timeout=60, message=f"failed ({server.message})")
    assert server.message.startswith(f"crashed {sup.MAX_CRASHES} times in 10 min (exit code 1); not restarting")
    assert [e["exit_code"] for e in supervisors.exits] == [1] * sup.MAX_CRASHES
    assert supervisors.exits[-1]["restart_in"] is None  # it gave up
    assert "Last log lines:" in server.message
    assert "exiting due to model loading error" in server.message.split("Last log lines:")[1]  # llama.cpp's words
    assert server.restarts == sup.MAX_CRASHES - 1
    assert server.pid is None
    # The report leaves a moment after the state changes (it is sent outside the supervisor's lock).
    wait_until(lambda: supervisors.reports[-1]["state"] == sup.FAILED, timeout=30, message="a failed report")
    assert supervisors.reports[-1]["pid"] is None and "Last log lines:" in supervisors.reports[-1]["message"]
    assert server.log_path.read_text().count("launching: ") == sup.MAX_CRASHES
    time.sleep(0.5)  # several loop rounds (0.1 s each) that must not launch it again
    assert server.state == sup.FAILED and server.log_path.read_text().count("launching: ") == sup.MAX_CRASHES


def test_it_refuses_to_launch_on_a_port_another_program_holds(supervisors, spec):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        supervisor = supervisors.new()
        report = supervisor.apply(spec(port=port))
    assert report["state"] == sup.FAILED and report["pid"] is None
    assert report["message"] == f"port {port} on 127.0.0.1 is already in use by another program; choose another"
    assert supervisor.servers[1].popen is None
    assert not supervisor.servers[1].log_path.exists()  # nothing was launched


def test_it_refuses_to_launch_a_missing_binary_or_model(supervisors, spec, tmp_path):
    supervisor = supervisors.new()
    report = supervisor.apply(spec(binary=str(tmp_path / "nope" / "llama-server")))
    assert report["state"] == sup.FAILED and "is missing or not executable" in report["message"]
    report = supervisor.apply(spec(deployment_id=2, model_path=str(tmp_path / "gone.gguf")))
    assert report["state"] == sup.FAILED and "is not on this rig" in report["message"]


def test_it_stops_a_server_and_frees_its_port(supervisors, spec):
    supervisor = supervisors.new()
    data = spec()
    supervisor.apply(data)
    server = supervisor.servers[1]
    pid = healthy(server)
    report = supervisor.apply({**data, "desired": "stopped"})
    assert report["state"] == sup.STOPPED and report["pid"] is None
    assert report["message"] == "stopped by the provider"
    assert not alive(pid)
    assert port_is_free(data["port"])
    assert health(data["port"]) is None


def test_it_restarts_the_server_when_a_setting_changes(supervisors, spec):
    supervisor = supervisors.new()
    data = spec()
    supervisor.apply(data)
    server = supervisor.servers[1]
    pid = healthy(server)
    supervisor.apply(data)  # the same settings again (a periodic reminder): nothing happens
    assert server.pid == pid and server.restarts == 0

    supervisor.apply({**data, "ctx_size": 1024, "generation": 2})
    new_pid = healthy(server)
    assert new_pid != pid and not alive(pid)
    assert b"1024" in cmdline(new_pid)[cmdline(new_pid).index(b"--ctx-size") + 1:][:1]
    assert server.restarts == 1


def test_it_passes_the_api_key_in_a_private_file_not_on_the_command_line(supervisors, spec):
    supervisor = supervisors.new()
    data = spec(api_key="sk-test-key-0123456789")
    supervisor.apply(data)
    server = supervisor.servers[1]
    pid = healthy(server)  # /health needs no key
    args = b"\0".join(cmdline(pid))
    assert b"sk-test-key-0123456789" not in args
    assert b"--api-key-file" in args
    key_file = server.key_path
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == "sk-test-key-0123456789"
    assert stat.S_IMODE(server.state_path.stat().st_mode) == 0o600  # the state file holds the key too
    assert "sk-test-key" not in json.dumps(supervisors.reports)  # reports to the panel never carry it
    models = f"http://127.0.0.1:{data['port']}/v1/models"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(models, timeout=5)
    assert refused.value.code == 401
    with urllib.request.urlopen(urllib.request.Request(
            models, headers={"Authorization": "Bearer sk-test-key-0123456789"}), timeout=5) as response:
        assert response.status == 200


# --- after an agent restart ------------------------------------------------------------------------------
def test_it_re_adopts_a_running_server_instead_of_launching_another(supervisors, spec):
    first = supervisors.new()
    data = spec()
    first.apply(data)
    pid = healthy(first.servers[1])
    first.stop_loop()  # the agent "dies"; its server keeps serving

    second = supervisors.new()
    second.adopt_existing()
    server = second.servers[1]
    assert server.pid == pid
    assert server.message == f"re-adopted pid {pid} after the agent restarted"
    second.reconcile()
    second.apply(data)  # the panel's reminder after the restart: still nothing new
    assert server.pid == pid and server.state == sup.HEALTHY
    assert supervisors.reports[-1]["pid"] == pid
    same_port = [p for p in os.listdir("/proc") if p.isdigit() and str(data["port"]).encode() in cmdline(p)]
    assert same_port == [str(pid)]


def test_it_does_not_adopt_a_pid_that_now_runs_another_program(supervisors, spec):
    first = supervisors.new()
    data = spec()
    first.apply(data)
    server = first.servers[1]
    healthy(server)
    first._terminate(server, "gone with a reboot")
    # After a reboot the recorded pid belongs to something else entirely.
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        state = json.loads(server.state_path.read_text())
        state.update(pid=stranger.pid, state=sup.HEALTHY)
        server.state_path.write_text(json.dumps(state))

        second = supervisors.new()
        second.adopt_existing()
        adopted = second.servers[1]
        assert adopted.pid is None
        assert adopted.message == "was not running when the agent started; starting it"
        second.reconcile()
        new_pid = healthy(adopted)
        assert new_pid != stranger.pid
        assert stranger.poll() is None  # the other program was left alone
    finally:
        stranger.kill()
        stranger.wait()


def test_it_ignores_an_unreadable_state_file(supervisors, spec):
    folder = Path(supervisors.state_dir) / "servers" / "9"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{not json")
    supervisor = supervisors.new()
    supervisor.adopt_existing()
    assert supervisor.servers == {}


def test_it_forgets_a_deleted_deployment_and_stops_its_server(supervisors, spec):
    supervisor = supervisors.new()
    data = spec()
    supervisor.apply(data)
    server = supervisor.servers[1]
    pid = healthy(server)
    supervisor.forget(1)
    assert not alive(pid) and port_is_free(data["port"])
    assert not server.state_path.exists()
    assert supervisor.snapshot() == []


# --- what the server process sees --------------------------------------------------------------------------
def test_it_starts_the_server_without_the_agents_credentials_in_its_environment(tmp_path, monkeypatch):
    secrets = {"MORPHEUS_NODE_TOKEN": "node-token-must-not-leak", "MORPHEUS_BROKER_URL": "redis://:pw@panel:6379/0",
               "HF_TOKEN": "hf_must_not_leak", "OPENAI_API_KEY": "key-must-not-leak"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    fake = tmp_path / "llama-server"  # never answers /health: enough to read what it was started with
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    supervisor = Supervisor(tmp_path / "state")
    supervisor.apply({"deployment_id": 1, "binary": str(fake), "model_path": str(model), "port": free_port(),
                      "api_key": "sk-test-key-0123456789", "generation": 1})
    server = supervisor.servers[1]
    try:
        assert server.pid and alive(server.pid)

        def environ_after_exec():
            # Read mid-exec, /proc shows an empty environment: wait for the started program's own.
            found = dict(item.split(b"=", 1) for item in
                         Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0") if b"=" in item)
            return found if b"PATH" in found else None

        environ = wait_until(environ_after_exec, timeout=10, message="the server's environment")
        assert not {name.encode() for name in secrets} & set(environ)
        assert not any(value.encode() in b"\0".join(environ.values()) for value in secrets.values())
        assert b"sk-test-key" not in b"\0".join(environ.values())
        assert environ[b"PATH"] == os.environ["PATH"].encode() and environ[b"CUDA_VISIBLE_DEVICES"] == b"0,1"
    finally:
        supervisor._terminate(server, "test teardown")


# --- server.log rotation -----------------------------------------------------------------------------------
def fake_server(tmp_path, body):
    """A stand-in llama-server (a Python script; it ignores its arguments and never answers /health) and a model
    file for it: enough to drive what the supervisor does with the log file the process writes."""
    binary = tmp_path / "llama-server"
    binary.write_text(f"#!{sys.executable}\nimport sys, time\nfrom pathlib import Path\n{textwrap.dedent(body)}")
    binary.chmod(0o755)
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    return {"deployment_id": 1, "binary": str(binary), "model_path": str(model), "port": free_port(),
            "generation": 1}


def test_it_reads_the_log_rotation_limits_from_the_environment(tmp_path, monkeypatch):
    supervisor = Supervisor(tmp_path / "state")
    assert (supervisor.log_max_bytes, supervisor.log_backups) == (20 * 1024 * 1024, 2)
    monkeypatch.setenv("MORPHEUS_SERVER_LOG_MAX_BYTES", "4096")
    monkeypatch.setenv("MORPHEUS_SERVER_LOG_BACKUPS", "5")
    supervisor = Supervisor(tmp_path / "state")
    assert (supervisor.log_max_bytes, supervisor.log_backups) == (4096, 5)
    monkeypatch.setenv("MORPHEUS_SERVER_LOG_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="MORPHEUS_SERVER_LOG_MAX_BYTES must be an integer"):
        Supervisor(tmp_path / "state")


def test_it_rotates_a_growing_server_log_while_the_server_keeps_appending(tmp_path, monkeypatch):
    limit = 4096
    monkeypatch.setenv("MORPHEUS_SERVER_LOG_MAX_BYTES", str(limit))
    monkeypatch.setenv("MORPHEUS_SERVER_LOG_BACKUPS", "2")
    # ≈ 36 KB over ≈ 1 s: about nine rotations on a 0.05 s loop. Then it waits, alive, and writes once more.
    data = fake_server(tmp_path, """
        for i in range(400):
            print(f"line {i:05d} " + "x" * 80, flush=True)
            if i % 10 == 0:
                time.sleep(0.02)
        print("writer done", flush=True)
        while not Path("go").exists():  # its working directory is the deployment's state folder
            time.sleep(0.01)
        print("written after the rotations", flush=True)
        time.sleep(60)
    """)
    supervisor = Supervisor(tmp_path / "state", interval=0.05)
    supervisor.start()
    try:
        supervisor.apply(data)
        server = supervisor.servers[1]
        pid = server.pid
        log_path = server.log_path
        wait_until(lambda: "writer done" in sup.tail(log_path, 3) and log_path.stat().st_size <= limit,
                   timeout=30, message="all written and the log rotated under the limit")
        backups = sorted(p.name for p in log_path.parent.glob("server.log.*"))
        assert backups == ["server.log.1", "server.log.2"]  # at most BACKUPS, the oldest dropped
        older, newer = (log_path.with_name(name).read_bytes() for name in ("server.log.2", "server.log.1"))
        assert len(newer) > limit and len(older) > limit and b"\0" not in older + newer
        numbers = [[int(line.split()[1]) for line in text.splitlines() if line.startswith(b"line ")]
                   for text in (older, newer)]
        assert numbers[0] and numbers[1] and numbers[0][-1] < numbers[1][0]  # .2 is older than .1

        (server.folder / "go").touch()
        wait_until(lambda: b"written after the rotations" in log_path.read_bytes(), timeout=10,
                   message="the server's next line in server.log")
        assert server.pid == pid and alive(pid)  # the same process, its descriptor never reopened
        content = log_path.read_bytes()
        # Appended at the new end: no hole of NUL bytes where its old offset was, the size on disk is the data's.
        assert b"\0" not in content and content.endswith(b"written after the rotations\n")
        assert log_path.stat().st_size == len(content) <= limit
    finally:
        supervisor.stop_loop()
        for server in supervisor.servers.values():
            supervisor._terminate(server, "test teardown")


def test_the_exit_event_keeps_the_last_log_lines_right_after_a_rotation(tmp_path):
    data = fake_server(tmp_path, """
        for i in range(100):
            print(f"line {i:05d} " + "x" * 80)
        print("last words before the crash", flush=True)
        sys.exit(3)
    """)
    exits = []
    supervisor = Supervisor(tmp_path / "state", on_exit=exits.append, log_max_bytes=4096, log_backups=1)
    supervisor.apply(data)  # no loop: the test runs its passes itself
    server = supervisor.servers[1]
    try:
        wait_until(lambda: not alive(server.pid), timeout=10, message="the server to exit")
        supervisor.reconcile()  # one pass: it rotates the log, then sees the exit
        assert server.log_path.stat().st_size == 0  # nothing written since the rotation
        assert sorted(p.name for p in server.folder.glob("server.log.*")) == ["server.log.1"]
        [event] = exits
        assert event["exit_code"] == 3 and event["signal"] is None
        assert event["log"].splitlines()[-1] == "last words before the crash"  # taken from server.log.1
        assert len(event["log"].splitlines()) == 15
        assert server.message.startswith("crashed (exit code 3)")
        assert "last words before the crash" in server.report()["log"]
    finally:
        supervisor._terminate(server, "test teardown")
