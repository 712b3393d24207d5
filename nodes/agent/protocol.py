"""Names both sides of the broker agree on: queues, task names, report kinds."""

import re

PANEL_QUEUE = "panel"
REPORT_TASK = "panel.report"

# Tasks the panel sends to a rig's own queue.
AGENT_REFRESH_HARDWARE = "agent.refresh_hardware"
AGENT_PING = "agent.ping"
AGENT_DOWNLOAD_MODEL = "agent.download_model"
AGENT_SCAN_MODELS = "agent.scan_models"
AGENT_DELETE_MODEL_FILE = "agent.delete_model_file"
AGENT_CANCEL = "agent.cancel"
AGENT_BUILD_LLAMA = "agent.build_llama"
AGENT_ADOPT_BUILD = "agent.adopt_build"
AGENT_DELETE_BUILD = "agent.delete_build"
AGENT_APPLY_DEPLOYMENT = "agent.apply_deployment"
AGENT_FORGET_DEPLOYMENT = "agent.forget_deployment"
AGENT_RECONCILE_DEPLOYMENTS = "agent.reconcile_deployments"

# Report kinds an agent sends back.
HARDWARE = "hardware"
TELEMETRY = "telemetry"
OPERATION = "operation"
MODEL_FILES = "model_files"
DEPLOYMENT = "deployment"

NODE_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
PROTOCOL_VERSION = 1


def node_queue(name):
    if not NODE_NAME_RE.match(name or ""):
        raise ValueError(f"{name!r} is not a valid rig name")
    return f"node.{name}"
