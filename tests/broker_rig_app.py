"""A tiny standalone Celery app configured exactly like a rig agent's transport (nodes/agent/transport.py).

tests/test_broker_acl.py starts it as a worker under a rig's ACL account: `probe.echo` publishes a report to
the panel queue the way the agent does. Environment: RIG_NODE, RIG_TOKEN, RIG_BROKER (no credentials).
"""

import os

from celery import Celery

from nodes.agent import transport
from nodes.agent.worker import BASE_SETTINGS

NODE = os.environ["RIG_NODE"]

app = Celery("rig_acl_probe", fixups=[])
app.conf.update(BASE_SETTINGS, worker_hijack_root_logger=False)  # the agent's own Celery settings
app.conf.update(transport.agent_celery_config(os.environ["RIG_BROKER"], NODE, os.environ["RIG_TOKEN"]))


@app.task(name="probe.echo")
def echo(value, how="queue"):
    # The agent uses report_queue(); the queue's name and the explicit exchange must land on `panel` just the same.
    if how == "exchange":
        route = {"exchange": "panel", "routing_key": "panel"}
    else:
        route = {"queue": "panel" if how == "name" else transport.report_queue()}
    app.send_task("panel.report", kwargs={"rig": NODE, "value": value}, **route)
    return value
