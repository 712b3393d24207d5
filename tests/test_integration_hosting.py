"""Building llama.cpp and hosting a model with a real llama-server, through a real agent."""

import html
import json
import os
import signal
import socket
import threading
import time
import urllib.request

import pytest

from hosting.models import Build, Deployment
from models_catalog.models import RigFile
from nodes.models import Operation
from tests import llama
from tests.helpers import free_port, make_node
from tests.gguf_model import write_tiny_llama
from tests.harness import cmdline, llama_servers_under, stop_llama_servers_under, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def llama_server_binary():
    return llama.server_binary()


@pytest.fixture
def alpha(rigs, tmp_path):
    node, token = make_node("alpha")
    agent = rigs.start("alpha", token, extra_env={"MORPHEUS_CCACHE_DIR": str(llama.CCACHE_DIR)})
    yield node, token, agent
    rigs.stop_all()
    stop_llama_servers_under(tmp_path)


def _op(kind):
    return Operation.objects.filter(kind=kind).order_by("-pk").first()


def _finished(op, timeout=120):
    wait_until(lambda: Operation.objects.get(pk=op.pk).is_terminal, timeout=timeout, message=f"{op.kind} to end")
    return Operation.objects.get(pk=op.pk)


def test_it_builds_llama_cpp_from_a_git_folder_and_reports_its_version(alpha, operator_client):
    node, _, _ = alpha
    response = operator_client.post("/rigs/alpha/builds/", {
        "build-source": str(llama.source_repo()), "build-ref": llama.TAG, "build-backend": "auto",
        "build-options": "LLAMA_CURL=OFF"})
    assert response.status_code == 302
    build = Build.objects.get(node=node)
    op = _finished(build.operation, timeout=1200)  # cold: ~4-5 min on 2 cores; warm ccache: seconds
    assert op.status == Operation.SUCCEEDED, op.message + op.log_tail[-2000:]
    build.refresh_from_db()
    assert build.status == Build.READY and build.is_default
    assert build.backend == "cpu"  # the rig reported no NVIDIA GPU
    assert build.commit and build.commit in build.version and "build 1" in build.version
    assert os.access(build.binary_path, os.X_OK)
    assert "%]" in op.log_tail  # CMake's progress lines came through

    # A ref that does not exist fails the build with git's own words.
    operator_client.post("/rigs/alpha/builds/", {"build-source": str(llama.source_repo()),
                                                 "build-ref": "no-such-tag", "build-backend": "auto"})
    bad = Build.objects.filter(node=node).order_by("-pk").first()
    op = _finished(bad.operation)
    assert op.status == Operation.FAILED
    assert "no-such-tag" in op.message and "invalid reference" in op.message  # git's own words
    assert Build.objects.get(pk=bad.pk).status == Build.FAILED


def test_it_refuses_bad_build_input_before_anything_runs(alpha, operator_client):
    node, _, _ = alpha
    for data, error in [
        ({"build-source": "https://x.example/a; rm -rf /", "build-ref": "b1"}, "not a git URL"),
        ({"build-source": str(llama.source_repo()), "build-ref": "../../etc"}, "not a valid git ref"),
        ({"build-source": str(llama.source_repo()), "build-ref": "b1", "build-options": "CMAKE_C_COMPILER=/evil"},
         "is not allowed"),
        ({"build-source": str(llama.source_repo()), "build-ref": "b1", "build-backend": "cuda"}, "no NVIDIA GPU"),
    ]:
        response = operator_client.post("/rigs/alpha/builds/", {"build-backend": "auto", **data}, follow=True)
        assert error in response.content.decode(), error
    assert not Build.objects.filter(node=node).exists()
    assert not Operation.objects.filter(kind=Operation.BUILD_LLAMA).exists()


def _adopt(client, node, binary):
    client.post("/rigs/alpha/builds/adopt/", {"adopt-path": str(binary)})
    build = Build.objects.get(node=node, adopted=True)
    op = _finished(build.operation)
    assert op.status == Operation.SUCCEEDED, op.message
    build.refresh_from_db()
    return build


def _health(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status
    except OSError:
        return None


@pytest.fixture
def hosted(alpha, operator_client, llama_server_binary, tmp_path):
    node, token, agent = alpha
    build = _adopt(operator_client, node, llama_server_binary)
    model = write_tiny_llama(tmp_path / "tiny-llama-F32.gguf")
    rig_file = RigFile.objects.create(node=node, path=str(model), size=model.stat().st_size)
    port = free_port()
    response = operator_client.post("/rigs/alpha/deployments/new/", {
        "name": "tiny", "model_file": rig_file.pk, "build": build.pk, "host": "127.0.0.1", "port": port,
        "ctx_size": 512, "n_gpu_layers": 0, "parallel": 2, "flash_attn": "off", "cache_type_k": "f16",
        "cache_type_v": "f16", "extra_flags_text": "--no-webui"})
    assert response.status_code == 302, response.content.decode()[-3000:]
    deployment = Deployment.objects.get(node=node, name="tiny")
    launch = _finished(_op(Operation.LAUNCH), timeout=60)
    assert launch.status == Operation.SUCCEEDED, launch.message
    return deployment, port, agent, rig_file, build


def _state(deployment):
    return Deployment.objects.get(pk=deployment.pk)


def test_it_hosts_a_model_that_answers_and_comes_back_after_a_crash(hosted, operator_client):
    deployment, port, _, _, _ = hosted
    wait_until(lambda: _state(deployment).actual_state == "healthy", timeout=30, message="healthy")
    body = json.dumps({"prompt": "Hello", "n_predict": 8}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    assert answer["timings"]["predicted_n"] > 0

    page = operator_client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert f"http://127.0.0.1:{port}/v1" in page and "healthy" in page

    pid = _state(deployment).pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: _state(deployment).pid not in (None, pid) and _state(deployment).actual_state == "healthy",
               timeout=60, message="restarted and healthy")
    assert _state(deployment).restarts >= 1
    assert _health(port) == 200
    # The kill is in the crash history, with its signal, on the page and in the list.
    exit_row = wait_until(lambda: deployment.exits.first(), timeout=30, message="the exit recorded")
    assert (exit_row.signal, exit_row.exit_code, exit_row.how) == (9, None, "SIGKILL")
    assert exit_row.summary.startswith("crashed (SIGKILL) after ") and exit_row.summary.endswith("s later")
    assert exit_row.summary in html.unescape(operator_client.get(f"/deployments/{deployment.pk}/").content.decode())


def test_it_keeps_serving_while_the_agent_restarts_and_re_adopts_the_server(hosted, rigs):
    deployment, port, agent, _, _ = hosted
    wait_until(lambda: _state(deployment).actual_state == "healthy", timeout=30, message="healthy")
    pid = _state(deployment).pid
    failures, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            if _health(port) != 200:
                failures.append(time.time())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        agent.kill()  # SIGKILL to the agent's process group: the server has its own session and survives
        assert _health(port) == 200
        node_token = deployment.node.token
        rigs.start("alpha", node_token, extra_env={"MORPHEUS_CCACHE_DIR": str(llama.CCACHE_DIR)})
        wait_until(lambda: "re-adopted" in _state(deployment).message, timeout=60, message="re-adopted")
    finally:
        stop.set()
        watcher.join()
    assert failures == []
    assert _state(deployment).pid == pid
    # No duplicate: exactly one llama-server on that port.
    assert llama_servers_under(deployment.model_file.path) == [pid]


def test_it_stops_the_server_frees_the_port_and_refuses_deletes_in_use(hosted, operator_client):
    deployment, port, _, rig_file, build = hosted
    wait_until(lambda: _state(deployment).actual_state == "healthy", timeout=30, message="healthy")
    pid = _state(deployment).pid

    response = operator_client.post(f"/rigs/alpha/files/{rig_file.pk}/delete/", follow=True)
    assert f"stop and delete {deployment.name} first" in response.content.decode()
    response = operator_client.post(f"/builds/{build.pk}/delete/", follow=True)
    assert "stop them first" in response.content.decode()

    operator_client.post(f"/deployments/{deployment.pk}/stop/")
    stop = _finished(_op(Operation.STOP), timeout=60)
    assert stop.status == Operation.SUCCEEDED, stop.message
    assert pid not in llama_servers_under(deployment.model_file.path)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with socket.socket() as sock:  # free for the next server (which, like llama-server, sets SO_REUSEADDR)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
    assert _state(deployment).actual_state == "stopped"


def test_it_refuses_bad_launch_parameters_before_anything_starts(alpha, operator_client, llama_server_binary, tmp_path):
    node, _, _ = alpha
    build = _adopt(operator_client, node, llama_server_binary)
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    rig_file = RigFile.objects.create(node=node, path=str(model), size=model.stat().st_size)
    other, _ = make_node("beta")
    elsewhere = RigFile.objects.create(node=other, path=str(model), size=1)
    failed = Build.objects.create(node=node, status=Build.FAILED, source="x", ref="y")
    base = {"name": "bad", "model_file": rig_file.pk, "build": build.pk, "host": "127.0.0.1", "port": 8085,
            "ctx_size": 512, "n_gpu_layers": 0, "parallel": 1, "flash_attn": "off", "cache_type_k": "f16",
            "cache_type_v": "f16"}
    for change, error in [
        ({"ctx_size": 0}, "Ensure this value is greater than or equal to 256"),
        ({"ctx_size": 10_000_000}, "less than or equal to 1048576"),
        ({"port": 80}, "greater than or equal to 1024"),
        ({"extra_flags_text": "--rpc 1.2.3.4"}, "is not allowed"),
        ({"extra_flags_text": "--mlock; rm -rf /"}, "is not allowed"),
        ({"alias": "x$(reboot)"}, "alias may hold"),
        ({"model_file": elsewhere.pk}, "Select a valid choice"),
        ({"build": failed.pk}, "Select a valid choice"),
        ({"tensor_split": "1,1;ls"}, "tensor-split must look like"),
    ]:
        response = operator_client.post("/rigs/alpha/deployments/new/", {**base, **change})
        assert response.status_code == 200 and error in response.content.decode(), error
    assert not Deployment.objects.exists()

    # A port another program holds is detected on the rig before launch and reported. Bound but not listening:
    # the rig's telemetry lists listening ports (and the form refuses those), so this one only the launch finds.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        operator_client.post("/rigs/alpha/deployments/new/", {**base, "port": busy})
        launch = _finished(_op(Operation.LAUNCH), timeout=60)
    assert launch.status == Operation.FAILED
    assert f"port {busy}" in launch.message and "already in use" in launch.message


def test_it_cancels_a_build_and_kills_its_whole_process_group(alpha, operator_client, tmp_path):
    node, _, _ = alpha
    operator_client.post("/rigs/alpha/builds/", {"build-source": str(llama.source_repo()), "build-ref": llama.TAG,
                                                 "build-backend": "cpu"})
    build = Build.objects.get(node=node)
    wait_until(lambda: "compile" in Operation.objects.get(pk=build.operation_id).message, timeout=300,
               message="the compile step")
    response = operator_client.post(f"/operations/{build.operation_id}/cancel/")
    assert response.status_code == 302
    op = _finished(build.operation, timeout=60)
    assert op.status == Operation.CANCELLED, op.message
    assert Build.objects.get(pk=build.pk).status == Build.CANCELLED
    build_dir = str(tmp_path / "alpha" / "data" / "builds")
    wait_until(lambda: not [p for p in os.listdir("/proc") if p.isdigit() and build_dir in cmdline(p)],
               timeout=15, message="no compiler left running")


def test_a_launch_slower_than_the_pickup_timeout_still_succeeds(alpha, operator_client, llama_server_binary,
                                                                  tmp_path, worker_env):
    """A big model takes minutes to load: the agent reports "running" on pickup, so only the launch's own run limit
    applies, not the pickup timeout (20 s in the tests)."""
    node, _, _ = alpha
    pickup = int(worker_env["MORPHEUS_OPERATION_PICKUP_TIMEOUT"])
    slow = llama.slow_server(tmp_path / "llama-server-slow", pickup + 5, llama_server_binary)
    build = _adopt(operator_client, node, slow)
    model = write_tiny_llama(tmp_path / "tiny-llama-F32.gguf")
    rig_file = RigFile.objects.create(node=node, path=str(model), size=model.stat().st_size)
    response = operator_client.post("/rigs/alpha/deployments/new/",
                                    llama.tiny_server_form("slow", rig_file, build, free_port()))
    assert response.status_code == 302, response.content.decode()[-2000:]
    launch = _op(Operation.LAUNCH)
    wait_until(lambda: Operation.objects.get(pk=launch.pk).status == Operation.RUNNING, timeout=30,
               message="the launch picked up")
    launch = _finished(launch, timeout=pickup + 60)
    assert launch.status == Operation.SUCCEEDED, launch.message
    assert (launch.finished - launch.created).total_seconds() > pickup  # it did outlast the pickup timeout
