"""A worker outlives a broker outage: Redis is killed and started again on the same port (its AOF keeps the queues
and the unacked hashes, not the rig accounts, which the panel recreates), with the rig agent idle or in the middle
of a command. The agent keeps running, logs in again, reports again, and the command that was running ends once.

kombu 5.7 kills a worker whose connection drops while a task runs when its consumer connection has a second channel
(nodes/agent/brokerloss.py says how; `install()` fixes it). The agent has a single channel (no remote control), so
the agent tests pass with or without the fix; the last test runs a bare Celery worker that has the second channel
(remote control on, like the panel worker) with the agent's settings, and fails without `install()`.

Each test has its own Redis: the session's shared one must not go away under the other tests.
"""

import os
import secrets
import sys
import time

import pytest
import redis
from celery import Celery
from django.utils import timezone

from hosting.models import Build, Deployment
from models_catalog.models import CatalogModel, ModelFile, RigFile
from morpheus_admin import localredis
from nodes import broker as broker_accounts
from nodes import rigs as rig_accounts
from nodes.agent import protocol
from nodes.models import Node, Operation
from tests import harness, llama
from tests.conftest import point_celery_at
from tests.gguf_model import write_tiny_llama
from tests.harness import ROOT, stop_llama_servers_under, wait_until
from tests.helpers import free_port, make_node

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
OUTAGE = 2.0  # seconds Redis stays away


class Broker:
    """A Redis of this test's own (AOF on, as `scripts/run` keeps it), killed and started again on the same port."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.port, self.password = localredis.free_port(), secrets.token_hex(16)
        self.proc, self.url = None, None

    def start(self):
        self.proc, self.url = localredis.start(self.workdir, port=self.port, password=self.password,
                                               log_path=self.workdir / "redis.log", persist=True)
        return self

    def outage(self, seconds=OUTAGE):
        self.proc.kill()
        self.proc.wait(timeout=10)
        time.sleep(seconds)
        return self.start()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def client(self):
        return redis.Redis.from_url(self.url, socket_timeout=5)


@pytest.fixture
def broker(tmp_path):
    server = Broker(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def own_panel(broker, worker_env, tmp_path, settings, transactional_db, django_db_serialized_rollback):
    """A panel worker on `broker`; this process's Celery app and settings point there too."""
    point_celery_at(broker.url)
    settings.CELERY_BROKER_URL = settings.RIG_BROKER_URL = broker.url
    settings.OPERATION_PICKUP_TIMEOUT = int(worker_env["MORPHEUS_OPERATION_PICKUP_TIMEOUT"])
    worker = harness.panel_worker(dict(worker_env, REDIS_URL=broker.url), tmp_path, name="panel-own").start()
    try:
        worker.wait_for_log("ready.", timeout=60)
        yield worker
    finally:
        worker.stop()
        point_celery_at(worker_env["REDIS_URL"])


@pytest.fixture
def start_agent(own_panel, broker, tmp_path):
    started = []

    def start(name, token, extra_env=None):
        broker_accounts.ensure_account(name, token)
        proc = harness.agent(name, token, broker.url, tmp_path / name / "data", tmp_path, extra_env=extra_env)
        started.append(proc.start())
        proc.wait_for_log("ready.", timeout=60)
        return proc

    yield start
    for proc in started:
        proc.stop(timeout=15)


def outage(broker, seconds=OUTAGE):
    """Redis away for `seconds`, then the rig accounts recreated (what the panel's minutely
    `panel.sync_broker_accounts` does). Returns the moment Redis was back."""
    broker.outage(seconds)
    back = timezone.now()
    wait_until(lambda: "error" not in rig_accounts.sync_accounts(Node.objects.all()), timeout=20,
               message="rig accounts recreated")
    return back


def count(proc, task, event):
    return sum(1 for line in proc.log().splitlines() if f"Task {task}[" in line and f"] {event}" in line)


def assert_survived(agent, name, since):
    assert "Unrecoverable error" not in agent.log(), agent.log()[-6000:]
    assert agent.alive(), agent.log()[-6000:]
    wait_until(lambda: (node := Node.objects.get(name=name)).last_seen and node.last_seen > since, timeout=30,
               message=f"rig {name} reporting after the broker came back")
    assert agent.alive()


def test_an_idle_agent_outlives_a_broker_restart_and_logs_to_a_rotated_file(broker, start_agent, tmp_path):
    _, token = make_node("alpha")
    log_file = tmp_path / "logs" / "agent.log"
    agent = start_agent("alpha", token, extra_env={"MORPHEUS_AGENT_LOG_FILE": str(log_file),
                                                   "MORPHEUS_AGENT_LOG_MAX_BYTES": "400"})
    wait_until(lambda: Node.objects.get(name="alpha").last_seen, timeout=30, message="rig alpha seen")

    back = outage(broker)
    assert_survived(agent, "alpha", back)

    # --log-file: Celery's log goes there as well as to stderr, rotated by size (3 old files kept).
    assert "Connected to redis://rig-alpha:**@" in agent.log()
    files = sorted(p.name for p in log_file.parent.iterdir())
    assert files == ["agent.log", "agent.log.1", "agent.log.2", "agent.log.3"], files
    assert "reporting telemetry" in "".join(p.read_text() for p in log_file.parent.iterdir())


def test_an_agent_running_a_command_outlives_a_broker_restart_and_ends_it_once(broker, start_agent, hub,
                                                                              operator_client, settings, tmp_path):
    settings.HF_ENDPOINT = hub.url
    path = write_tiny_llama(tmp_path / "slow.gguf", chat_template="{{ bos_token }}", pad_to=20 * MiB)
    served = hub.add_file("test-org/Slow-GGUF", "slow-Q8_0.gguf", path)
    hub.add_repo("test-org/Slow-GGUF")
    model = CatalogModel.objects.create(repo_id="test-org/Slow-GGUF", name="Slow")
    model_file = ModelFile.objects.create(model=model, filename="slow-Q8_0.gguf", size=path.stat().st_size,
                                          quant="Q8_0")
    _, token = make_node("alpha")
    agent = start_agent("alpha", token)
    served.rate = 2 * MiB  # ~10 s: it runs through the outage

    response = operator_client.post(f"/models/files/{model_file.pk}/download/", {"nodes": ["alpha"]})
    assert response.status_code == 302
    op = Operation.objects.get(kind=Operation.DOWNLOAD_MODEL)
    wait_until(lambda: (Operation.objects.get(pk=op.pk).progress_done or 0) > 0, timeout=30,
               message="the download running")

    back = outage(broker)
    assert_survived(agent, "alpha", back)

    op = wait_until(lambda: (o := Operation.objects.get(pk=op.pk)).is_terminal and o, timeout=40,
                    message="the download to end")
    assert op.status == Operation.SUCCEEDED, op.message
    # Ended once: no copy of the command redelivered and run (or refused) again, the file fetched once.
    client = broker.client()
    wait_until(lambda: not client.hlen(protocol.unacked_keys("alpha")["unacked_key"]), timeout=10,
               message="the command's message acknowledged")
    client.close()
    assert count(agent, protocol.AGENT_DOWNLOAD_MODEL, "received") == 1, agent.log()[-6000:]
    assert count(agent, protocol.AGENT_DOWNLOAD_MODEL, "succeeded") == 1, agent.log()[-6000:]
    assert "already handled" not in agent.log()
    assert served.served == path.stat().st_size
    assert agent.alive()


def slow_download(hub, tmp_path, rate, mib=20):
    path = write_tiny_llama(tmp_path / "slow.gguf", chat_template="{{ bos_token }}", pad_to=mib * MiB)
    served = hub.add_file("test-org/Slow-GGUF", "slow-Q8_0.gguf", path)
    hub.add_repo("test-org/Slow-GGUF")
    model = CatalogModel.objects.create(repo_id="test-org/Slow-GGUF", name="Slow")
    model_file = ModelFile.objects.create(model=model, filename="slow-Q8_0.gguf", size=path.stat().st_size,
                                          quant="Q8_0")
    served.rate = rate
    return model_file, served, path


def test_a_download_that_ends_while_the_broker_is_away_still_ends_right(broker, start_agent, hub, operator_client,
                                                                         settings, tmp_path):
    """The outcome is sent while Redis is down: kept in the rig's outbox, sent once Redis is back, applied once. The
    progress reports lost meanwhile did not fail the download."""
    settings.HF_ENDPOINT = hub.url
    model_file, served, path = slow_download(hub, tmp_path, rate=4 * MiB, mib=12)
    _, token = make_node("alpha")
    agent = start_agent("alpha", token)
    operator_client.post(f"/models/files/{model_file.pk}/download/", {"nodes": ["alpha"]})
    op = Operation.objects.get(kind=Operation.DOWNLOAD_MODEL)
    wait_until(lambda: (Operation.objects.get(pk=op.pk).progress_percent or 0) >= 40, timeout=30,
               message="the download half way")
    broker.proc.kill()
    broker.proc.wait(timeout=10)
    outbox = tmp_path / "alpha" / "data" / "state" / "outbox"
    # Ended on the rig while the broker is away: its outcome waits in the outbox.
    wait_until(lambda: any('"succeeded"' in p.read_text() for p in outbox.glob("*.json")), timeout=30,
               message="the outcome kept in the outbox")
    assert Operation.objects.get(pk=op.pk).status == Operation.RUNNING
    broker.start()
    wait_until(lambda: "error" not in rig_accounts.sync_accounts(Node.objects.all()), timeout=20,
               message="rig accounts recreated")
    op = wait_until(lambda: (o := Operation.objects.get(pk=op.pk)).is_terminal and o, timeout=40,
                    message="the outcome applied")
    assert op.status == Operation.SUCCEEDED, op.message
    wait_until(lambda: not list(outbox.glob("*.json")), timeout=30, message="the outbox emptied by the panel's acks")
    assert served.served == path.stat().st_size and agent.alive()
    assert count(agent, protocol.AGENT_DOWNLOAD_MODEL, "received") == 1


def test_a_launch_through_a_broker_restart_ends_right_and_the_server_stays_up(broker, start_agent, operator_client,
                                                                            tmp_path):
    """Redis killed while llama-server loads (a wrapper holds it 3 s) and away for 5 s: the server becomes healthy
    during the outage, the launch's outcome and the healthy state arrive once Redis is back."""
    slow = llama.slow_server(tmp_path / "llama-server-slow", 3)
    node, token = make_node("alpha")
    agent = start_agent("alpha", token)
    try:
        operator_client.post("/rigs/alpha/builds/adopt/", {"adopt-path": str(slow)})
        build = Build.objects.get(node=node, adopted=True)
        wait_until(lambda: Build.objects.get(pk=build.pk).status == Build.READY, timeout=60, message="adopted")
        model = write_tiny_llama(tmp_path / "tiny-llama-F32.gguf")
        rig_file = RigFile.objects.create(node=node, path=str(model), size=model.stat().st_size)
        response = operator_client.post("/rigs/alpha/deployments/new/",
                                        llama.tiny_server_form("tiny", rig_file, build, free_port()))
        assert response.status_code == 302
        launch = Operation.objects.get(kind=Operation.LAUNCH)
        wait_until(lambda: Operation.objects.get(pk=launch.pk).status == Operation.RUNNING, timeout=30,
                   message="the launch picked up")
        back = outage(broker, seconds=5)
        assert_survived(agent, "alpha", back)
        launch = wait_until(lambda: (o := Operation.objects.get(pk=launch.pk)).is_terminal and o, timeout=60,
                            message="the launch to end")
        assert launch.status == Operation.SUCCEEDED, launch.message
        wait_until(lambda: Deployment.objects.get(node=node).actual_state == "healthy", timeout=30,
                   message="the deployment healthy")
        assert Operation.objects.filter(kind=Operation.LAUNCH).count() == 1
    finally:
        agent.stop(timeout=15)
        stop_llama_servers_under(tmp_path)


def test_a_build_through_a_broker_restart_ends_right(broker, start_agent, operator_client):
    """Redis killed while llama.cpp compiles (the compiler cache of the other build tests makes it short): the build
    goes on, its outcome arrives once Redis is back, and the rig's default build is ready."""
    node, token = make_node("alpha")
    agent = start_agent("alpha", token, extra_env={"MORPHEUS_CCACHE_DIR": str(llama.CCACHE_DIR)})
    operator_client.post("/rigs/alpha/builds/", {"build-source": str(llama.source_repo()), "build-ref": llama.TAG,
                                                 "build-backend": "auto", "build-options": "LLAMA_CURL=OFF"})
    build = Build.objects.get(node=node)
    wait_until(lambda: "compile" in Operation.objects.get(pk=build.operation_id).message, timeout=300,
               message="the compile step")
    back = outage(broker)
    assert_survived(agent, "alpha", back)
    op = wait_until(lambda: (o := Operation.objects.get(pk=build.operation_id)).is_terminal and o, timeout=1200,
                    message="the build to end")
    assert op.status == Operation.SUCCEEDED, op.message + op.log_tail[-2000:]
    assert Build.objects.get(pk=build.pk).status == Build.READY
    assert count(agent, protocol.AGENT_BUILD_LLAMA, "received") == 1


# A bare worker with the agent's Celery settings, remote control on (a second channel on the consumer connection,
# as the panel worker has), and the fix installed as the agent installs it.
WORKER = """
import sys, time
from celery import Celery
from nodes.agent import brokerloss

url, done, name = sys.argv[1:4]
app = Celery("brokerloss-probe", broker=url, fixups=[])
app.conf.update(
    task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1, task_ignore_result=True,
    broker_connection_retry_on_startup=True, broker_connection_max_retries=None,
    broker_transport_options={"visibility_timeout": 3600, "unacked_key": f"unacked.node.{name}",
                              "unacked_index_key": f"unacked_index.node.{name}",
                              "unacked_mutex_key": f"unacked_mutex.node.{name}"},
    worker_send_task_events=False, worker_hijack_root_logger=True,
)

@app.task(name="probe.sleep")
def sleep(seconds):
    print("started", flush=True)
    time.sleep(seconds)
    with open(done, "a") as fh:
        fh.write("done\\n")

brokerloss.install()
app.worker_main(["worker", "--queues", f"node.{name}", "--hostname", f"{name}@%h", "--pool", "threads",
                 "--concurrency", "6", "--without-gossip", "--without-mingle", "--without-heartbeat",
                 "--loglevel", "INFO"])
"""


def test_a_worker_with_two_channels_outlives_a_broker_restart_during_a_task(broker, tmp_path):
    done, name = tmp_path / "done", "probe"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    worker = harness.Proc("probe", [sys.executable, "-c", WORKER, broker.url, str(done), name], env,
                          tmp_path / "probe.log").start()
    sender = Celery("probe-sender", broker=broker.url, set_as_current=False, fixups=[])
    try:
        worker.wait_for_log("ready.", timeout=60)
        sender.send_task("probe.sleep", args=[10], queue=f"node.{name}")
        worker.wait_for_log("started", timeout=20)
        mark = worker.mark()
        broker.outage()

        wait_until(lambda: "Connected to" in worker.log(mark) or not worker.alive(), timeout=30,
                   message="the worker to reconnect")
        assert worker.alive() and "Unrecoverable error" not in worker.log(), worker.log()[-6000:]
        wait_until(done.exists, timeout=30, message="the task to end")
        client = broker.client()
        wait_until(lambda: not client.hlen(f"unacked.node.{name}"), timeout=10, message="the message acknowledged")
        time.sleep(1)  # a requeued copy would be taken by now
        assert done.read_text() == "done\n"  # ran once: not requeued, not lost
        assert client.llen(f"node.{name}") == 0 and count(worker, "probe.sleep", "received") == 1
        assert worker.alive(), worker.log()[-6000:]
        client.close()
    finally:
        sender.close()
        worker.stop(timeout=15)
