"""Operations asked through the panel's own views and run by real rig agents on their own queues."""

import pytest

from nodes.models import Node, Operation
from tests.helpers import make_node
from tests.harness import wait_until

pytestmark = pytest.mark.integration


def ask(client, rig, kind):
    """Click an operation button on the rig page; the view enqueues it when its transaction commits."""
    response = client.post(f"/rigs/{rig}/operations/{kind}/")
    assert response.status_code == 302
    return Operation.objects.get(pk=int(response.url.rstrip("/").rsplit("/", 1)[1]))


def finished(operation, timeout=60):
    return wait_until(lambda: Operation.objects.filter(pk=operation.pk, status__in=Operation.TERMINAL).first(),
                      timeout=timeout, message=f"operation {operation.pk} to finish")


def poll(client, operation):
    """What the operation page's htmx poll gets: 200 while it runs, 286 (stop polling) once it is done."""
    return client.get(operation.get_absolute_url(), HTTP_HX_REQUEST="true")


def tasks_logged(agent, task, event):
    """How many times the agent's log says `Task <task>[id] <event>` (received, succeeded, …)."""
    return sum(1 for line in agent.log().splitlines() if f"Task {task}[" in line and f"] {event}" in line)


def tasks_received(agent, task):
    return tasks_logged(agent, task, "received")


def test_it_runs_an_operation_for_alpha_on_alpha_and_never_on_beta(rigs, operator_client):
    _, alpha_token = make_node("alpha")
    _, beta_token = make_node("beta")
    beta_agent = rigs.start("beta", beta_token, fake_nvml="nodriver")

    # Asked while alpha's agent is still starting: it waits in alpha's queue, and beta, which is up, leaves it.
    ping = ask(operator_client, "alpha", "ping")
    assert ping.status == Operation.QUEUED
    assert poll(operator_client, ping).status_code == 200
    alpha_agent = rigs.start("alpha", alpha_token, fake_nvml="2x3090")

    ping = finished(ping)
    assert (ping.status, ping.message, ping.result.get("node")) == (Operation.SUCCEEDED, "agent answered", "alpha")
    assert ping.created <= ping.started <= ping.finished
    response = poll(operator_client, ping)
    assert response.status_code == 286
    assert "agent answered" in response.content.decode()

    hardware_before = Node.objects.get(name="alpha").hardware_at
    refresh = finished(ask(operator_client, "alpha", "refresh_hardware"))
    assert (refresh.status, refresh.message, refresh.result) == (Operation.SUCCEEDED, "2 GPUs detected", {"gpus": 2})
    assert Node.objects.get(name="alpha").hardware_at > hardware_before

    beta_ping = finished(ask(operator_client, "beta", "ping"))
    assert (beta_ping.status, beta_ping.result.get("node")) == (Operation.SUCCEEDED, "beta")

    # Each agent ran exactly the work sent to its own rig.
    assert (tasks_received(alpha_agent, "agent.ping"), tasks_received(alpha_agent, "agent.refresh_hardware")) == (1, 1)
    assert (tasks_received(beta_agent, "agent.ping"), tasks_received(beta_agent, "agent.refresh_hardware")) == (1, 0)


def test_it_fails_an_operation_that_no_agent_picks_up(rigs, operator_client, settings):
    _, token = make_node("beta")  # enrolled, but its agent is down

    ping = ask(operator_client, "beta", "ping")
    assert ping.status == Operation.QUEUED

    ping = finished(ping, timeout=settings.OPERATION_PICKUP_TIMEOUT + 40)
    assert ping.status == Operation.FAILED
    assert "did not pick this up within" in ping.message
    # Failed after the pickup timeout, not before.
    assert (ping.finished - ping.created).total_seconds() >= settings.OPERATION_PICKUP_TIMEOUT
    assert "did not pick this up within" in poll(operator_client, ping).content.decode()

    # When the agent comes back it drops the expired message instead of running it late.
    agent = rigs.start("beta", token)
    agent.wait_for_log("Discarding revoked task: agent.ping")
    assert tasks_logged(agent, "agent.ping", "succeeded") == 0
    assert Operation.objects.get(pk=ping.pk).status == Operation.FAILED


def test_it_ignores_a_rig_reporting_on_another_rigs_operation(panel, operator_client):
    make_node("alpha")  # its agent is down, so its operation stays queued
    _, beta_token = make_node("beta")
    ping = ask(operator_client, "alpha", "ping")

    mark = panel.worker.mark()
    forged = {"operation": ping.pk, "status": "succeeded", "message": "done, trust me", "result": {}}
    panel.wait_done("panel.report", panel.report("beta", beta_token, "operation", forged))

    assert f"rig beta reported on operation {ping.pk}, which is not its own" in panel.worker.log(since=mark)
    ping.refresh_from_db()
    assert (ping.status, ping.message, ping.finished) == (Operation.QUEUED, "", None)
