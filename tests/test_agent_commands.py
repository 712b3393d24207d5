"""The agent runs only commands signed for it (nodes/agent/worker.py + envelope.py), through the real Celery tasks
that `create_app` registers; reports are captured instead of published."""

import json
import time

import pytest

from nodes.agent import envelope, protocol
from nodes.agent.config import AgentConfig
from nodes.agent.worker import create_app

TOKEN = "alpha-token-" + "a" * 32
OTHER = "beta-token-" + "b" * 32


@pytest.fixture
def agent(tmp_path):
    config = AgentConfig(broker_url="redis://127.0.0.1:9/0", node="alpha", token=TOKEN, data_dir=tmp_path)
    app = create_app(config)
    sent = []
    app.agent.send = lambda kind, payload, expires=None, durable=False: sent.append((kind, payload))
    app.agent.sent = sent
    return app.agent


def run(agent, task, kwargs):
    agent.app.tasks[task].run(**kwargs)
    return agent.sent


def ping(token=TOKEN, rig="alpha", task=protocol.AGENT_PING, operation=7, ttl=60, now=None, args=None):
    return envelope.sign_command(envelope.derive_keys(token), task=task, rig=rig, args=args or {},
                                 operation=operation, ttl=ttl, now=now)


def rejected(sent):
    return [payload["reason"] for kind, payload in sent if kind == protocol.REJECTED_COMMAND]


def ran(sent):
    return [payload for kind, payload in sent if kind == protocol.OPERATION]


def test_it_runs_a_command_signed_for_this_rig(agent):
    sent = run(agent, protocol.AGENT_PING, ping())
    assert ran(sent)[-1]["status"] == "succeeded" and ran(sent)[-1]["operation"] == 7
    assert not rejected(sent)


def tamper(kwargs, **changes):
    data = json.loads(kwargs["envelope"])
    data.update(changes)
    return {"envelope": json.dumps(data), "mac": kwargs["mac"]}


# Built when the test runs, not at collection: a suite can take longer than a command's lifetime.
FORGED = {
    "another rig's key": (lambda: ping(token=OTHER), "bad signature"),
    "task renamed": (lambda: tamper(ping(), task=protocol.AGENT_REFRESH_HARDWARE), "bad signature"),
    "rig renamed": (lambda: tamper(ping(), rig="beta"), "bad signature"),
    "arguments added": (lambda: tamper(ping(), args={"extra": 1}), "bad signature"),
    "expiry moved": (lambda: tamper(ping(), expires=time.time() + 3600), "bad signature"),
    "operation changed": (lambda: tamper(ping(), operation=8), "bad signature"),
    "for another rig": (lambda: ping(rig="beta"), "addressed to rig 'beta'"),
    "for another task": (lambda: ping(task=protocol.AGENT_REFRESH_HARDWARE),
                         "signed for task 'agent.refresh_hardware'"),
    "expired": (lambda: ping(now=time.time() - 600, ttl=60), "expired"),
    "from the future": (lambda: ping(now=time.time() + 600), "in this rig's future"),
    "wrong arguments": (lambda: ping(args={"path": "/etc"}), "do not match"),
    "no operation": (lambda: ping(operation=None), "needs an operation id"),
    "no envelope": (lambda: {"envelope": None, "mac": None}, "unsigned command"),
    "not JSON": (lambda: {"envelope": "not json", "mac": "00"}, "bad signature"),
}


@pytest.mark.parametrize("case", FORGED)
def test_it_refuses_a_forged_tampered_or_stale_command_and_reports_why(agent, case):
    make, reason = FORGED[case]
    sent = run(agent, protocol.AGENT_PING, make())
    assert not ran(sent)
    assert len(rejected(sent)) == 1 and reason in rejected(sent)[0]


def test_it_refuses_arguments_outside_an_envelope(agent):
    sent = []
    agent.send = lambda kind, payload, expires=None, durable=False: sent.append((kind, payload))
    agent.app.tasks[protocol.AGENT_PING].run(7)
    agent.app.tasks[protocol.AGENT_RECONCILE_DEPLOYMENTS].run(specs=[])
    assert not ran(sent)
    assert [reason.startswith("unsigned command") for reason in rejected(sent)] == [True, True]


def test_it_refuses_a_replay_even_after_a_restart(agent, tmp_path):
    message = ping()
    assert ran(run(agent, protocol.AGENT_PING, message))
    agent.sent.clear()
    assert "already received" in rejected(run(agent, protocol.AGENT_PING, message))[0]

    restarted = create_app(agent.cfg).agent
    sent = []
    restarted.send = lambda kind, payload, expires=None, durable=False: sent.append((kind, payload))
    restarted.app.tasks[protocol.AGENT_PING].run(**message)
    assert not ran(sent) and "already received" in rejected(sent)[0]


def test_it_opens_secrets_sealed_for_it_and_refuses_ones_sealed_for_another_rig(agent, monkeypatch):
    seen = []
    monkeypatch.setattr(agent.supervisor, "forget", lambda deployment_id: seen.append(deployment_id))
    keys = envelope.derive_keys(TOKEN)
    good = envelope.sign_command(keys, task=protocol.AGENT_RECONCILE_DEPLOYMENTS, rig="alpha",
                                 args={"specs": []}, ttl=60)
    run(agent, protocol.AGENT_RECONCILE_DEPLOYMENTS, good)
    assert not rejected(agent.sent)

    foreign = envelope.seal(envelope.derive_keys(OTHER), "sk-secret-key")
    assert envelope.unseal(keys, envelope.seal(keys, "sk-secret-key")) == "sk-secret-key"
    with pytest.raises(envelope.EnvelopeRejected):
        envelope.unseal(keys, {"api_key": foreign})
    bad = envelope.sign_command(keys, task=protocol.AGENT_FORGET_DEPLOYMENT, rig="alpha",
                                args={"deployment_id": foreign}, ttl=60)
    run(agent, protocol.AGENT_FORGET_DEPLOYMENT, bad)
    assert seen == [] and "not sealed for this rig" in rejected(agent.sent)[0]


def test_reports_are_signed_numbered_and_carry_the_rig_clock(tmp_path):
    config = AgentConfig(broker_url="redis://127.0.0.1:9/0", node="alpha", token=TOKEN, data_dir=tmp_path)
    agent = create_app(config).agent
    published = []
    agent.app.send_task = lambda name, **options: published.append((name, options))
    agent.send(protocol.TELEMETRY, {"at": 1})
    agent.send(protocol.TELEMETRY, {"at": 2})
    (name, first), (_name, second) = published
    assert name == protocol.REPORT_TASK and first["queue"].name == "panel"
    assert set(first["kwargs"]) == {"rig", "body", "mac"} and TOKEN not in json.dumps(first["kwargs"])
    opened = [envelope.open_report(envelope.derive_keys(TOKEN), rig="alpha", **{k: o["kwargs"][k] for k in ("body", "mac")})
              for o in (first, second)]
    assert opened[1]["seq"] == opened[0]["seq"] + 1
    assert abs(opened[0]["sent_at"] - time.time()) < 5
    # A restarted agent numbers on from where the last one reserved, never back.
    again = create_app(config).agent
    again.app.send_task = lambda name, **options: published.append((name, options))
    again.send(protocol.TELEMETRY, {"at": 3})
    third = envelope.open_report(envelope.derive_keys(TOKEN), rig="alpha", body=published[-1][1]["kwargs"]["body"],
                                 mac=published[-1][1]["kwargs"]["mac"])
    assert third["seq"] > opened[1]["seq"]


@pytest.mark.parametrize("running_from, deleted, outcome", [
    (12, 1, "succeeded"),  # build 1's folder is not a prefix of build 12's
    (1, 1, "failed"),
])
def test_it_deletes_a_build_folder_only_when_no_running_server_uses_it(agent, monkeypatch, running_from, deleted,
                                                                       outcome):
    builds = agent.cfg.data_dir / "builds"
    for number in (1, 12):
        (builds / str(number) / "bin").mkdir(parents=True)
    binary = str(builds / str(running_from) / "bin" / "llama-server")
    monkeypatch.setattr(agent.supervisor, "snapshot", lambda: [{"deployment": 3, "pid": 4242, "binary": binary}])
    sent = run(agent, protocol.AGENT_DELETE_BUILD,
               ping(task=protocol.AGENT_DELETE_BUILD, args={"build_id": deleted}))
    [done] = [p for p in ran(sent) if p["status"] != "running"]
    assert (done["status"], done["result"]) == (outcome, {"build_id": deleted})
    assert (builds / str(deleted)).exists() == (outcome == "failed")
    assert (builds / "12").exists()


def test_it_reports_running_the_moment_it_takes_a_command(agent):
    sent = run(agent, protocol.AGENT_PING, ping())
    assert [(p["status"], p["message"]) for p in ran(sent)] == [("running", "picked up by the rig"),
                                                               ("succeeded", "agent answered")]


@pytest.mark.parametrize("skew", [-300, -20, 20, 300])
def test_a_rig_whose_clock_is_off_still_runs_commands_the_panel_signed_for_it(tmp_path, skew):
    config = AgentConfig(broker_url="redis://127.0.0.1:9/0", node="alpha", token=TOKEN, data_dir=tmp_path,
                         clock_skew=skew)
    agent = create_app(config).agent
    sent = []
    agent.send = lambda kind, payload, expires=None, durable=False: sent.append((kind, payload))
    # Without the offset the panel measured, a rig minutes off judges expiry wrongly...
    agent.app.tasks[protocol.AGENT_PING].run(**ping(ttl=120))
    assert bool(rejected(sent)) == (abs(skew) > 30)
    # ...with it (signed into the envelope), it runs, and a replay is still refused.
    sent.clear()
    message = envelope.sign_command(envelope.derive_keys(TOKEN), task=protocol.AGENT_PING, rig="alpha", args={},
                                    operation=7, ttl=120, rig_clock_offset=skew)
    agent.app.tasks[protocol.AGENT_PING].run(**message)
    assert ran(sent)[-1]["status"] == "succeeded" and not rejected(sent)
    agent.app.tasks[protocol.AGENT_PING].run(**message)
    assert "already received" in rejected(sent)[0]


def published_agent(tmp_path):
    """A real agent whose publishes are recorded (opened as the panel would), or refused while `broker_down`."""
    config = AgentConfig(broker_url="redis://127.0.0.1:9/0", node="alpha", token=TOKEN, data_dir=tmp_path)
    agent = create_app(config).agent
    agent.published, agent.broker_down = [], False

    def send_task(name, **options):
        if agent.broker_down:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:9. Connection refused.")
        agent.published.append(envelope.open_report(envelope.derive_keys(TOKEN), rig="alpha",
                                                    body=options["kwargs"]["body"], mac=options["kwargs"]["mac"]))

    agent.app.send_task = send_task
    return agent


def test_an_outcome_is_kept_until_the_panel_acknowledges_it_and_progress_never_fails_the_work(tmp_path):
    agent = published_agent(tmp_path)
    agent.broker_down = True
    agent.operation(7, "running", progress={"done": 1, "total": 2, "unit": "B"})  # lost, and no exception
    agent.operation(7, "succeeded", "done")  # kept
    assert agent.published == [] and len(agent.outbox) == 1
    agent.broker_down = False
    agent.outbox.flush(everything=True)
    [sent] = agent.published
    assert sent["ack"] is True and sent["payload"]["status"] == "succeeded"
    # The panel's acknowledgement, a signed command like any other, empties the outbox.
    ack = envelope.sign_command(envelope.derive_keys(TOKEN), task=protocol.AGENT_ACK, rig="alpha",
                                args={"seqs": [sent["seq"]]}, ttl=60)
    agent.app.tasks[protocol.AGENT_ACK].run(**ack)
    assert len(agent.outbox) == 0
    # A forged acknowledgement is refused (it would make the rig drop an outcome the panel never saw).
    agent.operation(8, "failed", "no")
    forged = envelope.sign_command(envelope.derive_keys(OTHER), task=protocol.AGENT_ACK, rig="alpha",
                                   args={"seqs": [agent.published[-1]["seq"]]}, ttl=60)
    agent.app.tasks[protocol.AGENT_ACK].run(**forged)
    assert len(agent.outbox) == 1


def test_the_inventory_lists_running_operations_and_outcomes_not_yet_acknowledged(tmp_path):
    agent = published_agent(tmp_path)

    def probe_while_an_inventory_goes_out():
        agent.publish_inventory()
        return {"gpus": []}

    agent.publish_hardware = probe_while_an_inventory_goes_out
    agent.app.tasks[protocol.AGENT_REFRESH_HARDWARE].run(**ping(task=protocol.AGENT_REFRESH_HARDWARE, operation=7))
    during = next(r for r in agent.published if r["kind"] == "inventory")
    assert during["payload"]["operations"] == [7]  # listed while its command runs
    agent.outbox.acked([r["seq"] for r in agent.published if r["ack"]])
    agent.publish_inventory()
    assert agent.published[-1]["payload"]["operations"] == []  # ended and acknowledged: no longer listed
    agent.broker_down = True
    agent.operation(9, "succeeded", "done")  # outcome waiting in the outbox
    agent.operation(10, "running", "picked up", durable=True)  # a pickup waiting: not "in flight" by itself
    agent.broker_down = False
    agent.publish_inventory(boot=True)
    inventory = agent.published[-1]
    assert inventory["kind"] == "inventory" and inventory["payload"]["boot"] is True
    assert inventory["payload"]["operations"] == [9] and inventory["payload"]["outbox"] == 2
