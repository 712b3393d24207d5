"""Faults, with real processes: nothing lost, nothing applied twice, nothing left running, nothing growing without
bound. (The broker going away under agents: tests/test_agent_broker_loss.py.)"""

import random
import signal
import time

import pytest
import redis as redis_client
from django.utils import timezone

from hosting.models import Build, Deployment
from models_catalog.models import RigFile
from nodes import broker
from nodes.agent import protocol
from nodes.channel import send_command
from nodes.models import Operation
from nodes.tasks import drop_offline_messages
from tests import harness
from tests.harness import wait_until
from tests.helpers import make_node

pytestmark = pytest.mark.integration


def rig_memory(redis_url, name):
    """Bytes Redis holds for rig `name`'s messages (its queue, sub-queues, unacknowledged copies)."""
    client = redis_client.Redis.from_url(redis_url)
    keys = [k for k in broker.rig_keys(client, name) if not k.startswith("_kombu.binding")]
    return sum(client.memory_usage(k) or 0 for k in keys)


def test_a_rig_offline_for_a_week_leaves_nothing_waiting_in_redis(panel, redis_url, settings):
    node, token = make_node("gone")
    broker.ensure_account("gone", token)
    node.last_seen = timezone.now() - timezone.timedelta(days=7)
    node.save(update_fields=["last_seen"])
    # A week of clicks on an offline rig: each an operation whose message waits in its queue.
    for _ in range(300):
        op = Operation.objects.create(node=node, kind=Operation.PING)
        send_command(node, protocol.AGENT_PING, operation=op.pk, ttl=7 * 86400)
    before = rig_memory(redis_url, "gone")
    assert before > 100_000
    # A rig offline for less than the limit keeps what waits for it.
    recent, recent_token = make_node("recent")
    recent.last_seen = timezone.now() - timezone.timedelta(hours=1)
    recent.save(update_fields=["last_seen"])
    send_command(recent, protocol.AGENT_PING, operation=Operation.objects.create(node=recent, kind="ping").pk)

    assert drop_offline_messages() == {"gone": {"messages": 300, "operations": 300}}

    assert rig_memory(redis_url, "gone") == 0
    assert rig_memory(redis_url, "recent") > 0
    ended = Operation.objects.filter(node=node)
    assert {(op.status, op.message) for op in ended} == {
        ("failed", "the rig has been offline for over 24 h: its waiting commands were dropped")}
    assert Operation.objects.get(node=recent).status == "queued"
    assert drop_offline_messages() == {}  # nothing more to do: bounded, not cumulative


def server(row, state, seq_hint):
    return {"deployment": row.pk, "state": state, "pid": 4000 + seq_hint, "port": 8080, "host": "127.0.0.1",
            "started_at": time.time() - 30, "restarts": 0, "message": f"{state} #{seq_hint}", "log": "",
            "generation": 1, "desired": "running", "binary": "/b/llama-server"}


def test_two_panel_workers_and_reports_out_of_order_never_move_state_back(panel, worker_env, proc_dir, tmp_path):
    """Reports numbered 1..N sent shuffled to two workers at once (the shared one and a second, with the default
    quiet log): the end state is that of report N, as with one worker in order; every change logged once."""
    node, token = make_node("alpha")
    build = Build.objects.create(node=node, source="/s", ref="b1", status=Build.READY, binary_path="/b/llama-server")
    rig_file = RigFile.objects.create(node=node, path="/m/tiny.gguf", size=1)
    deployment = Deployment.objects.create(node=node, name="tiny", model_file=rig_file, build=build, port=8080)
    op = Operation.objects.create(node=node, kind=Operation.DOWNLOAD_MODEL)
    env = dict(worker_env)
    env.pop("MORPHEUS_LOG_REPORTS", None)
    second = harness.panel_worker(env, tmp_path, name="panel-second").start()
    try:
        second.wait_for_log("ready.", timeout=60)
        base = 10_000_000
        reports = []
        for i in range(1, 61):
            state = "healthy" if i == 60 else random.choice(["starting", "loading", "backoff", "healthy"])
            reports.append((base + i, "deployment", server(deployment, state, i)))
            progress = {"done": i, "total": 100, "unit": "B"}
            status = "succeeded" if i == 60 else "running"
            reports.append((base + i, "operation", {"operation": op.pk, "status": status, "progress": progress}))
        random.shuffle(reports)
        for seq, kind, payload in reports:
            panel.report("alpha", token, kind, payload, seq=seq)

        def settled():
            d = Deployment.objects.get(pk=deployment.pk)
            o = Operation.objects.get(pk=op.pk)
            return d.report_seq == base + 60 and o.report_seq == base + 60 and (d, o)

        d, o = wait_until(settled, timeout=60, message="the last reports applied")
        assert (d.actual_state, d.message, d.pid) == ("healthy", "healthy #60", 4060)
        assert (o.status, o.progress_done) == ("succeeded", 60)
        # The default log: no line per report, one per change (the operation's end, once, by whichever worker).
        assert "Task panel.report[" not in second.log()
        logged = panel.worker.log() + second.log()
        assert logged.count(f"operation {op.pk} (download_model on alpha): succeeded") == 1
    finally:
        second.stop()


def test_the_panel_worker_killed_mid_ingest_loses_no_outcome(panel, panel_processes, rigs):
    """Kill -9 of the panel worker while it applies a rig's reports: the messages it had taken are gone with it
    (Redis gives them back only after an hour), but the rig keeps its outcomes in its outbox and sends them again
    until the restarted worker has applied them."""
    node, token = make_node("alpha")
    agent = rigs.start("alpha", token)
    wait_until(lambda: type(node).objects.get(pk=node.pk).last_seen, timeout=30, message="rig alpha seen")
    ops = [Operation.objects.create(node=node, kind=Operation.PING) for _ in range(20)]
    for op in ops:
        send_command(node, protocol.AGENT_PING, operation=op.pk)
    wait_until(lambda: Operation.objects.filter(pk__in=[o.pk for o in ops], status="succeeded").exists(),
               timeout=30, message="the worker applying outcomes")
    worker = panel_processes["worker"]
    worker.kill(signal.SIGKILL)
    mark = worker.mark()
    applied_before = Operation.objects.filter(pk__in=[o.pk for o in ops], status="succeeded").count()
    wait_until(lambda: agent.log().count("agent.ping[") >= 40, timeout=30, message="the agent to answer all")
    worker.start()
    worker.wait_for_log("ready.", timeout=60, since=mark)
    wait_until(lambda: Operation.objects.filter(pk__in=[o.pk for o in ops], status="succeeded").count() == 20,
               timeout=60, message="all twenty outcomes applied")
    assert applied_before < 20 and agent.alive()
    outbox = rigs.root / "alpha" / "data" / "state" / "outbox"
    wait_until(lambda: not list(outbox.glob("*.json")), timeout=30, message="the rig's outbox emptied by acks")
