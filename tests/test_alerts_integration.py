"""Alerts against real processes: a real agent stopped and started again, the panel worker and beat evaluating the
rules every second (harness.panel_env), a real SMTP server (aiosmtpd) and a real HTTP receiver. Prints the latency
from the cause (the agent stopped) to each notification received."""

import sys
import time

import pytest

from alerts.models import Alert, Channel
from hosting.models import Build, Deployment
from models_catalog.models import RigFile
from nodes.models import Node
from tests.alertkit import SmtpSink, WebhookReceiver
from tests.harness import ALERT_SMTP_PORT, stop_llama_servers_under, wait_until
from tests.helpers import free_port, make_node

pytestmark = pytest.mark.integration


@pytest.fixture
def sinks(panel):
    smtp = SmtpSink(port=ALERT_SMTP_PORT).start()  # where the panel worker sends mail (harness.panel_env)
    hook = WebhookReceiver().start()
    Channel.objects.create(name="ops mail", kind="email", target="ops@example.com")
    Channel.objects.create(name="ops hook", kind="webhook", target=hook.url())
    yield smtp, hook
    hook.stop()
    smtp.stop()


def _alert_runs(panel, count):
    """Wait until beat has had the worker evaluate the alerts `count` more times."""
    mark = panel.worker.mark()
    wait_until(lambda: panel.worker.log(mark).count("Task panel.check_alerts[") >= 2 * count, timeout=30,
               message=f"{count} more alert runs")


def test_a_stopped_agent_opens_rig_offline_tells_mail_and_webhook_once_and_resolves_when_it_is_back(
        panel, rigs, sinks):
    smtp, hook = sinks
    node, token = make_node("alpha")
    agent = rigs.start("alpha", token, interval=1.0)
    wait_until(lambda: Node.objects.get(pk=node.pk).status == Node.ONLINE, timeout=30, message="alpha online")
    _alert_runs(panel, 2)
    assert not Alert.objects.exists() and hook.posts == [] and smtp.messages == []

    agent.stop()
    stopped = time.time()
    wait_until(lambda: hook.states() == [("rig:alpha", "open")] and len(smtp.messages) == 1, timeout=60,
               message="the rig offline alert by mail and webhook")
    webhook_latency, mail_latency = hook.posts[0][0] - stopped, smtp.messages[0][0] - stopped
    alert = Alert.objects.get()
    assert alert.rule.kind == "rig_offline" and alert.cause == "rig:alpha" and alert.state == "open"
    assert smtp.subjects() == [f"Morpheus: [OPEN] Rig offline: {alert.message}"]
    assert hook.posts[0][2]["alert"]["state"] == "open" and hook.posts[0][2]["text"].startswith("[OPEN] Rig offline")
    _alert_runs(panel, 3)
    assert len(hook.posts) == 1 and len(smtp.messages) == 1 and Alert.objects.count() == 1  # no flood

    restarted = time.time()
    rigs.start("alpha", token, interval=1.0)
    wait_until(lambda: len(hook.posts) == 2 and len(smtp.messages) == 2, timeout=60, message="the resolution told")
    resolve_latency = hook.posts[1][0] - restarted
    assert hook.states()[1] == ("rig:alpha", "resolved") and smtp.subjects()[1].startswith("Morpheus: [RESOLVED]")
    _alert_runs(panel, 3)
    assert len(hook.posts) == 2 and len(smtp.messages) == 2
    alert = Alert.objects.get()
    assert alert.state == "resolved" and alert.notified_open_at and alert.notified_resolved_at
    assert [e.kind for e in alert.events.all()].count("notified") == 4
    assert "s3cr3t-path" not in panel.worker.log()  # the webhook URL is a secret: never in the worker's log
    print(f"\nalert latency (agent stopped → notification, interval 1 s, offline after 5 s): "
          f"webhook {webhook_latency:.1f} s, mail {mail_latency:.1f} s; agent started → resolved webhook "
          f"{resolve_latency:.1f} s", file=sys.stderr)


FAKE_SERVER = """#!{python}
import sys
if "--version" in sys.argv:
    print("version: 4589 (1d1e6a90)")
    sys.exit(0)
print("error: this stand-in always crashes")
sys.exit(1)
"""


def test_a_server_crash_looping_on_a_real_agent_opens_exactly_one_alert(panel, rigs, sinks, operator_client,
                                                                        tmp_path):
    _smtp, hook = sinks
    node, token = make_node("alpha")
    rigs.start("alpha", token, interval=1.0)
    binary = tmp_path / "llama-server"
    binary.write_text(FAKE_SERVER.format(python=sys.executable))
    binary.chmod(0o755)
    operator_client.post("/rigs/alpha/builds/adopt/", {"adopt-path": str(binary)})
    build = Build.objects.get(node=node, adopted=True)
    wait_until(lambda: Build.objects.get(pk=build.pk).status == Build.READY, timeout=60, message="adopted")
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    rig_file = RigFile.objects.create(node=node, path=str(model), size=4)
    try:
        response = operator_client.post("/rigs/alpha/deployments/new/", {
            "name": "crashy", "model_file": rig_file.pk, "build": build.pk, "host": "127.0.0.1",
            "port": free_port(), "ctx_size": 512, "n_gpu_layers": 0, "parallel": 1, "flash_attn": "off",
            "cache_type_k": "f16", "cache_type_v": "f16"})
        assert response.status_code == 302, response.content.decode()[-2000:]
        deployment = Deployment.objects.get(node=node, name="crashy")
        wait_until(lambda: Deployment.objects.get(pk=deployment.pk).actual_state == "failed", timeout=90,
                   message="the agent to give up on the crashing server")
        cause = f"deployment:{deployment.pk}"
        wait_until(lambda: (cause, "open") in hook.states(), timeout=30, message="the crash loop alert")
        _alert_runs(panel, 3)
        loops = Alert.objects.filter(rule__kind="crash_loop")
        assert loops.count() == 1 and loops.get().cause == cause and loops.get().value >= 3
        assert [post for post in hook.states() if post == (cause, "open")] == [(cause, "open")] * 2  # loop + failed
        assert Alert.objects.filter(rule__kind="deployment_failed", cause=cause).count() == 1
    finally:
        rigs.stop_all()
        stop_llama_servers_under(tmp_path)
