"""The signed channel through real processes: a Redis with ACLs, the panel worker, and real rig agents.

Commands are forged the way someone with write access to a rig's queue would forge them (here: the admin
connection, since no rig account may write another rig's queue — tests/test_broker_acl.py proves that part).
"""

import json
import subprocess
import time

import pytest
import redis
from django.utils import timezone

from morpheus_admin.celery import app as celery_app
from nodes import channel
from nodes.agent import envelope, protocol
from nodes.models import Node, Operation
from nodes.operations import start_operation
from tests.harness import wait_until
from tests.helpers import make_node

pytestmark = pytest.mark.integration

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": "/tmp"}


def rig(name):
    return Node.objects.get(name=name)


@pytest.fixture
def trap(tmp_path):
    """A git repo whose CMake configure step writes a marker: if any build of it starts, the marker appears."""
    repo, marker = tmp_path / "trap", tmp_path / "ran"
    repo.mkdir()
    (repo / "CMakeLists.txt").write_text(f'cmake_minimum_required(VERSION 3.10)\nproject(trap NONE)\n'
                                         f'file(WRITE "{marker}" "ran")\n')
    for args in (["init", "-q", "-b", "master"], ["add", "CMakeLists.txt"], ["commit", "-q", "-m", "trap"],
                 ["tag", "v1"]):
        subprocess.run(["git", *args], cwd=repo, env=GIT_ENV, check=True, capture_output=True)
    return repo, marker


def build_args(repo, build_id=1):
    request = {"build_id": build_id, "source": str(repo), "ref": "v1", "backend": "cpu", "options": {}}
    return {"build_id": build_id, "request": request}


def push(task, kwargs, queue="node.beta"):
    """Put a message on a rig's queue as it is, bypassing the panel's signing."""
    celery_app.send_task(task, kwargs=kwargs, queue=queue, expires=60)


def tampered(kwargs, **changes):
    data = json.loads(kwargs["envelope"])
    data.update(changes)
    return {"envelope": json.dumps(data, separators=(",", ":"), sort_keys=True), "mac": kwargs["mac"]}


def rejected_with(reason):
    return lambda: reason in rig("beta").command_rejected_reason and rig("beta")


def test_forged_commands_run_nothing_and_the_rig_page_says_so(rigs, operator_client, trap, tmp_path):
    repo, marker = trap
    alpha, alpha_token = make_node("alpha")
    beta, beta_token = make_node("beta")
    rigs.start("beta", beta_token)
    operation = start_operation(beta, Operation.BUILD_LLAMA, target="trap")  # an id for the forged envelopes
    keys_beta, keys_alpha = envelope.derive_keys(beta_token), envelope.derive_keys(alpha_token)
    signed = envelope.sign_command(keys_beta, task=protocol.AGENT_BUILD_LLAMA, rig="beta", args=build_args(repo),
                                   operation=operation.pk, ttl=60)
    forgeries = [
        ("unsigned", {"operation_id": operation.pk, **build_args(repo)}, "unsigned command"),
        ("another rig's key", envelope.sign_command(keys_alpha, task=protocol.AGENT_BUILD_LLAMA, rig="beta",
                                                    args=build_args(repo), operation=operation.pk, ttl=60),
         "bad signature"),
        ("task renamed", tampered(signed, task=protocol.AGENT_PING), "bad signature"),
        ("arguments changed", tampered(signed, args=build_args(tmp_path)), "bad signature"),
        ("expiry moved", tampered(signed, expires=time.time() + 86400), "bad signature"),
        ("signed for alpha", envelope.sign_command(keys_beta, task=protocol.AGENT_BUILD_LLAMA, rig="alpha",
                                                   args=build_args(repo), operation=operation.pk, ttl=60),
         "addressed to rig 'alpha'"),
        ("delivered as another task", envelope.sign_command(keys_beta, task=protocol.AGENT_PING, rig="beta",
                                                            args={}, operation=operation.pk, ttl=60),
         "signed for task 'agent.ping'"),
        ("expired", envelope.sign_command(keys_beta, task=protocol.AGENT_BUILD_LLAMA, rig="beta", args=build_args(repo),
                                          operation=operation.pk, ttl=5, now=time.time() - 300), "expired"),
    ]
    for label, kwargs, reason in forgeries:
        task = protocol.AGENT_BUILD_LLAMA
        push(task, kwargs)
        wait_until(rejected_with(reason), timeout=30, message=f"beta to refuse the command ({label})")
        Node.objects.filter(name="beta").update(command_rejected_reason="")

    page = operator_client.get("/rigs/beta/").content.decode()
    assert "Rejected command" in page
    assert not marker.exists(), "a forged build ran"
    assert not list((tmp_path / "beta" / "data").glob("builds/*/src"))
    assert Operation.objects.get(pk=operation.pk).status == Operation.QUEUED  # nothing reported on it

    # The same envelope, genuine: it runs (so the trap works), and a replay of it is refused.
    push(protocol.AGENT_BUILD_LLAMA, signed)
    wait_until(marker.exists, timeout=60, message="the genuine build to run CMake")
    marker.unlink()
    push(protocol.AGENT_BUILD_LLAMA, signed)
    wait_until(rejected_with("already received"), timeout=30, message="beta to refuse the replay")
    assert not marker.exists()


def test_a_rig_ignores_commands_for_another_rig_even_signed_by_the_panel(rigs, trap):
    repo, marker = trap
    alpha, alpha_token = make_node("alpha")
    beta, beta_token = make_node("beta")
    rigs.start("beta", beta_token)
    operation = start_operation(alpha, Operation.BUILD_LLAMA, target="trap")
    # A genuine command for alpha, copied onto beta's queue.
    push(protocol.AGENT_BUILD_LLAMA, channel.signed_command(alpha, protocol.AGENT_BUILD_LLAMA, build_args(repo),
                                                            operation=operation.pk, ttl=60))
    wait_until(rejected_with("bad signature"), timeout=30, message="beta to refuse alpha's command")
    assert not marker.exists()


def test_removing_a_rig_leaves_no_key_or_account_of_it_in_redis(rigs, operator_client, redis_url):
    beta, beta_token = make_node("beta")
    agent = rigs.start("beta", beta_token)
    wait_until(lambda: rig("beta").last_seen, timeout=30, message="beta heard")
    start_operation(beta, Operation.PING)  # a message may be waiting in its queue
    admin = redis.Redis.from_url(redis_url)
    assert admin.acl_getuser("rig-beta")

    response = operator_client.post("/rigs/beta/delete/")
    assert response.status_code == 302
    wait_until(lambda: not agent.alive() or "beta" not in str(admin.client_list()), timeout=30,
               message="beta's connections cut")
    assert admin.acl_getuser("rig-beta") is None
    assert [key for key in admin.scan_iter() if b"node.beta" in key] == []
    agent.stop()


@pytest.mark.parametrize("skew", [-300, 300])
def test_a_rig_five_minutes_off_reports_runs_operations_and_is_warned_about(rigs, operator_client, skew):
    beta, token = make_node("beta")
    rigs.start("beta", token, extra_env={"MORPHEUS_AGENT_CLOCK_SKEW": str(skew)})
    wait_until(lambda: rig("beta").clock_offset is not None and rig("beta").gpus.count() == 0
               and rig("beta").host_reading, timeout=30, message="beta's reports")
    assert abs(rig("beta").clock_offset - skew) < 5
    # Its telemetry lands at the panel's time, not five minutes away.
    from datetime import datetime

    reading_at = datetime.fromisoformat(rig("beta").host_reading["at"])
    assert abs((reading_at - timezone.now()).total_seconds()) < 30
    ping = start_operation(rig("beta"), Operation.PING)
    wait_until(lambda: Operation.objects.get(pk=ping.pk).is_terminal, timeout=30, message="the ping to end")
    assert Operation.objects.get(pk=ping.pk).status == Operation.SUCCEEDED
    page = operator_client.get("/rigs/beta/").content.decode()
    assert "set up NTP on the rig" in page
