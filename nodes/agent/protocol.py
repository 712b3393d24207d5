"""The whole contract between the panel and its rigs: queues, broker accounts, the command envelope, task names
and their arguments, report kinds, operation and server states. Both sides import these names."""

import re

PANEL_QUEUE = "panel"
REPORT_TASK = "panel.report"
PROTOCOL_VERSION = 2

NODE_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")

# Tasks the panel sends to a rig's own queue. Each message's kwargs are exactly {"envelope", "mac"}
# (nodes/agent/envelope.py); the envelope's `args` hold the keyword arguments listed here, and its
# `operation` the Operation id for the tasks marked so.
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
AGENT_ACK = "agent.ack"  # the panel applied these reports: the rig may drop them from its outbox
AGENT_BENCHMARK_DEPLOYMENT = "agent.benchmark_deployment"  # tok/s and time to first token at 1..N streams
AGENT_CHAT_DEPLOYMENT = "agent.chat_deployment"  # "try it": one chat sent to the server, its answer streamed back
# The proxy-router: `config` = {"network": "mainnet" | "testnet", "binary": absolute path on the rig, "env": the
# managed .env values the panel sets (never the wallet key), "models": [models-config entries]}; `restart` asks for
# a restart even when nothing changed (it cuts open sessions: the panel asks first); `reload_only` applies a change of
# the models alone through the router's reload endpoint and changes nothing where only a restart would apply it.
AGENT_ROUTER_APPLY = "agent.router_apply"
AGENT_ROUTER_REFRESH = "agent.router_refresh"  # read the router's state now and report it
# One on-chain action through the router's admin API (`action` one of ROUTER_CHAIN_ACTIONS, `params` its arguments,
# amounts as integer strings in wei); the operation's result carries what the router returned (a model's real id).
AGENT_ROUTER_CHAIN = "agent.router_chain"
# Install a proxy-router release on the rig: `url` (https, or http on loopback) and its `sha256`; the file is kept
# only when its digest matches, and the operation's result names the installed binary's path.
AGENT_ROUTER_INSTALL = "agent.router_install"

# task name → (takes an operation id, its keyword arguments: required, optional)
COMMANDS = {
    AGENT_REFRESH_HARDWARE: (True, (), ()),
    AGENT_PING: (True, (), ()),
    AGENT_DOWNLOAD_MODEL: (True, ("request",), ("model_file",)),
    AGENT_SCAN_MODELS: (True, (), ()),
    AGENT_DELETE_MODEL_FILE: (True, ("path",), ()),
    AGENT_CANCEL: (True, (), ()),
    AGENT_BUILD_LLAMA: (True, ("build_id", "request"), ("hardware",)),
    AGENT_ADOPT_BUILD: (True, ("build_id", "path"), ()),
    AGENT_DELETE_BUILD: (True, ("build_id",), ()),
    AGENT_APPLY_DEPLOYMENT: (True, ("spec", "goal"), ()),
    AGENT_FORGET_DEPLOYMENT: (False, ("deployment_id",), ()),
    AGENT_RECONCILE_DEPLOYMENTS: (False, ("specs",), ()),
    AGENT_ACK: (False, ("seqs",), ()),
    AGENT_BENCHMARK_DEPLOYMENT: (True, ("deployment_id", "request"), ()),
    AGENT_CHAT_DEPLOYMENT: (True, ("deployment_id", "request"), ()),
    AGENT_ROUTER_APPLY: (True, ("config",), ("restart", "reload_only")),
    AGENT_ROUTER_REFRESH: (True, (), ()),
    AGENT_ROUTER_CHAIN: (True, ("action", "params"), ()),
    AGENT_ROUTER_INSTALL: (True, ("url", "sha256"), ()),
}
ROUTER_CONFIG_KEYS = ("network", "binary", "env", "models")
ROUTER_NETWORKS = ("mainnet", "testnet")
ROUTER_CHAIN_ACTIONS = ("approve", "register_provider", "register_model", "post_bid", "delete_bid")

# Argument fields (at any depth) the panel seals for the one rig that needs them: a Hub token, an API key.
SECRET_FIELDS = frozenset({"token", "api_key", "apiKey"})  # apiKey: a models-config entry's

# Report kinds an agent sends back.
HARDWARE = "hardware"
TELEMETRY = "telemetry"
OPERATION = "operation"
MODEL_FILES = "model_files"
DEPLOYMENT = "deployment"
REJECTED_COMMAND = "rejected_command"
SERVER_EXIT = "server_exit"  # a llama-server died by itself: exit code or signal, uptime, last log lines
INVENTORY = "inventory"  # at start and periodically: operations the rig still has, its servers and their states
# The proxy-router's state: periodically while one is configured (best-effort), on every change of state (kept until
# acknowledged). Fields: ROUTER_FIELDS. Amounts are integer strings in wei; no credential, no unmanaged .env value
# (only the NAMES of unmanaged keys).
ROUTER = "router"
ROUTER_FIELDS = ("state", "pid", "message", "log", "restarts", "version", "health", "models_health", "wallet",
                 "mor_wei", "eth_wei", "provider", "models", "bids", "open_sessions", "config_models",
                 "unmanaged_keys", "network", "binary", "at", "error")
# Competing bids per model ({model id: {count, lowest, median}}, wei strings, the provider's own left out).
ROUTER_FIELDS += ("market",)

# The provider's sessions (newest, open ones first, at most 64, each with its claimable balance where read), their
# claimable total, and when the running router process started (epoch seconds, the rig's clock).
ROUTER_FIELDS += ("sessions", "claimable_wei", "started_at")

# Operation states: the panel creates an operation "queued"; an agent reports the others.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
OPERATION_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
REPORTED_OPERATION_STATES = (RUNNING, SUCCEEDED, FAILED, CANCELLED)

# A llama-server as the rig's supervisor sees it.
SERVER_STATES = ("stopped", "starting", "loading", "healthy", "backoff", "failed")
# The proxy-router as RouterProcess (nodes/agent/router.py) sees it.
ROUTER_STATES = ("stopped", "starting", "healthy", "degraded", "unresponsive", "backoff", "failed")
# Why the router's admin API did not answer usefully (routeradmin.RouterError kinds).
ROUTER_ERROR_KINDS = ("down", "timeout", "unauthorized", "forbidden", "rate_limited", "degraded", "malformed",
                      "refused", "not_found", "too_large", "outcome_unknown", "invalid")
# Publishing (nodes/agent/routermodels.py): whether the proxy port accepts TCP on the rig (None: not configured), and
# whether this router version reloads its models without a restart (None: not tried yet).
ROUTER_FIELDS += ("proxy_listening", "reload_supported")


def node_queue(name):
    if not NODE_NAME_RE.match(name or ""):
        raise ValueError(f"{name!r} is not a valid rig name")
    return f"node.{name}"


def broker_username(name):
    """The rig's own Redis ACL user: it reads and writes only its own queue keys."""
    node_queue(name)
    return f"rig-{name}"


# The agent's transport keeps its in-flight bookkeeping under its own keys (the default `unacked` hash is
# shared and would hold every rig's messages).
def unacked_keys(name):
    queue = node_queue(name)
    return {"unacked_key": f"unacked.{queue}", "unacked_index_key": f"unacked_index.{queue}",
            "unacked_mutex_key": f"unacked_mutex.{queue}"}
