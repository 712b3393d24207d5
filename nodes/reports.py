"""Validation of agent reports. A report that fails here writes nothing; the reason is logged.

Plain Python (no Django) so the rules are readable in one place and testable alone.
"""

import json
import math
import re
import time

from nodes.agent import serving
from nodes.agent.probe import MAX_LISTENING_PORTS
from nodes.agent.protocol import (REPORTED_OPERATION_STATES, ROUTER_ERROR_KINDS, ROUTER_NETWORKS, ROUTER_STATES,
                                  SERVER_STATES)

TiB = 1024**4
MAX_RESULT_BYTES = 128 * 1024  # room for a 64-shard model's removed paths


class ReportError(ValueError):
    pass


def _number(data, key, lo, hi, required=True, integer=False):
    value = data.get(key) if isinstance(data, dict) else None
    if value is None:
        if required:
            raise ReportError(f"{key} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportError(f"{key} must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ReportError(f"{key} is not finite")
    if integer and isinstance(value, float) and not value.is_integer():
        raise ReportError(f"{key} must be a whole number")
    if not lo <= value <= hi:
        raise ReportError(f"{key}={value} is outside {lo}..{hi}")
    return int(value) if integer else value


def _text(data, key, max_len=200, required=True):
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise ReportError(f"{key} is missing")
        return ""
    if not isinstance(value, str):
        raise ReportError(f"{key} must be text")
    if "\x00" in value:  # PostgreSQL refuses NUL in text; reject it here with a reason instead
        raise ReportError(f"{key} contains a NUL character")
    return value[:max_len]


def _has_nul(value, depth=0):
    """A NUL character anywhere in a JSON value, keys included (PostgreSQL's JSON types refuse it); a value nested
    deeper than any report needs counts too (walking it could exhaust the stack)."""
    if depth > 32:
        return True  # deeper than any report needs: treat as unusable
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k, depth + 1) or _has_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v, depth + 1) for v in value)
    return False


def _dict(data, key):
    value = data.get(key)
    if not isinstance(value, dict):
        raise ReportError(f"{key} must be an object")
    return value


def _list(data, key, max_len=64):
    value = data.get(key)
    if not isinstance(value, list):
        raise ReportError(f"{key} must be a list")
    if len(value) > max_len:
        raise ReportError(f"{key} has {len(value)} entries, more than {max_len}")
    return value


def _indexes_unique(gpus):
    indexes = [g["index"] for g in gpus]
    if len(indexes) != len(set(indexes)):
        raise ReportError("GPU indexes repeat")


def clean_hardware(payload):
    if not isinstance(payload, dict):
        raise ReportError("payload must be an object")
    clean = {
        "cpu_model": _text(payload, "cpu_model", required=False),
        "cpu_cores_physical": _number(payload, "cpu_cores_physical", 0, 4096, integer=True),
        "cpu_cores_logical": _number(payload, "cpu_cores_logical", 1, 8192, integer=True),
        "ram_total": _number(payload, "ram_total", 1, 64 * TiB, integer=True),
        "disk_total": _number(payload, "disk_total", 0, 10**18, integer=True),
        "disk_free": _number(payload, "disk_free", 0, 10**18, integer=True),
        "data_dir": _text(payload, "data_dir", 500, required=False),
        "os": _text(payload, "os", required=False),
        "kernel": _text(payload, "kernel", required=False),
        "hostname": _text(payload, "hostname", required=False),
        "driver_version": _text(payload, "driver_version", 40, required=False) or None,
        "cuda_version": _text(payload, "cuda_version", 20, required=False) or None,
        "gpu_note": _text(payload, "gpu_note", 300, required=False),
        "telemetry_interval": _number(payload, "telemetry_interval", 0.2, 3600),
        "gpus": [],
        "agent_started_at": _number(payload, "agent_started_at", 0, 10**11, required=False),
    }
    for gpu in _list(payload, "gpus"):
        if not isinstance(gpu, dict):
            raise ReportError("each GPU must be an object")
        clean["gpus"].append(
            {
                "index": _number(gpu, "index", 0, 63, integer=True),
                "name": _text(gpu, "name", 120),
                "uuid": _text(gpu, "uuid", 80),
                "vram_total": _number(gpu, "vram_total", 1, 4 * TiB, integer=True),
                "power_limit_w": _number(gpu, "power_limit_w", 0, 5000, required=False),
                "pcie_gen": _number(gpu, "pcie_gen", 0, 16, required=False, integer=True),
                "pcie_width": _number(gpu, "pcie_width", 0, 64, required=False, integer=True),
                "compute_capability": _text(gpu, "compute_capability", 8, required=False),
                "mem_bandwidth_gbs": _number(gpu, "mem_bandwidth_gbs", 1, 100_000, required=False),
                "mem_bandwidth_source": gpu.get("mem_bandwidth_source") if gpu.get("mem_bandwidth_source")
                in ("nvml", "table") else None,
            }
        )
    _indexes_unique(clean["gpus"])
    return clean


def clean_telemetry(payload):
    if not isinstance(payload, dict):
        raise ReportError("payload must be an object")
    host = _dict(payload, "host")
    clean = {
        "at": _number(payload, "at", 0, 10**11),
        "host": {
            "cpu_percent": _number(host, "cpu_percent", 0, 100),
            "ram_used": _number(host, "ram_used", 0, 64 * TiB, integer=True),
            "ram_total": _number(host, "ram_total", 1, 64 * TiB, integer=True, required=False),
            "disk_free": _number(host, "disk_free", 0, 10**18, integer=True),
        },
        "gpus": [],
    }
    if host.get("listening_ports") is not None:  # absent: the rig could not tell
        ports = _list(host, "listening_ports", max_len=MAX_LISTENING_PORTS)
        if not all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in ports):
            raise ReportError("listening_ports must be a list of TCP ports (1..65535)")
        clean["host"]["listening_ports"] = sorted(set(ports))
    for gpu in _list(payload, "gpus"):
        if not isinstance(gpu, dict):
            raise ReportError("each GPU reading must be an object")
        clean["gpus"].append(
            {
                "index": _number(gpu, "index", 0, 63, integer=True),
                "util": _number(gpu, "util", 0, 100, required=False),
                "vram_used": _number(gpu, "vram_used", 0, 4 * TiB, integer=True),
                "temp_c": _number(gpu, "temp_c", -50, 150, required=False),
                "power_w": _number(gpu, "power_w", 0, 5000, required=False),
                "fan": _number(gpu, "fan", 0, 100, required=False),
                "sm_clock": _number(gpu, "sm_clock", 0, 10000, required=False, integer=True),
            }
        )
    _indexes_unique(clean["gpus"])
    if payload.get("servers") is not None:  # absent: an agent from before serving metrics
        clean["servers"] = [_clean_serving(item) for item in _list(payload, "servers", max_len=serving.MAX_SERVERS)]
        ids = [item["deployment"] for item in clean["servers"]]
        if len(ids) != len(set(ids)):
            raise ReportError("a deployment is listed twice in servers")
    return clean


def _clean_serving(item):
    """One server's live metrics (nodes/agent/serving.py): the known numbers within their bounds, or an error."""
    if not isinstance(item, dict):
        raise ReportError("each server reading must be an object")
    clean = {"deployment": _number(item, "deployment", 1, 2**63 - 1, integer=True),
             "at": _number(item, "at", 0, 10**11)}
    if item.get("error") is not None:
        clean["error"] = _text(item, "error", serving.MAX_ERROR)
        return clean
    for name, (lo, hi, whole) in serving.FIELDS.items():
        clean[name] = _number(item, name, lo, hi, required=False, integer=whole)
    busy, total = clean["slots_busy"], clean["slots_total"]
    if busy is not None and total is not None and busy > total:
        raise ReportError("more busy slots than slots")
    return clean


def clean_operation(payload):
    if not isinstance(payload, dict):
        raise ReportError("payload must be an object")
    status = payload.get("status")
    if status not in REPORTED_OPERATION_STATES:
        raise ReportError(f"operation status {status!r} is not one of {', '.join(REPORTED_OPERATION_STATES)}")
    result = payload.get("result") or {}
    if not isinstance(result, dict):
        raise ReportError("result must be an object")
    encoded = json.dumps(result)
    if len(encoded) > MAX_RESULT_BYTES:  # a result is a few facts (version, seconds, counts), stored on every row
        raise ReportError(f"result is {len(encoded)} bytes, more than {MAX_RESULT_BYTES}")
    if _has_nul(result):  # PostgreSQL's JSON refuses NUL; reject it here with a reason instead
        raise ReportError("result contains a NUL character (or is nested too deep)")
    progress = payload.get("progress")
    if progress is not None:
        if not isinstance(progress, dict):
            raise ReportError("progress must be an object")
        progress = {
            "done": _number(progress, "done", 0, 10**18, integer=True),
            "total": _number(progress, "total", 0, 10**18, integer=True),
            "unit": _text(progress, "unit", 10, required=False),
            "rate": _number(progress, "rate", 0, 10**15, required=False),
            "eta": _number(progress, "eta", 0, 10**9, required=False),
        }
    log_tail = payload.get("log")
    if log_tail is not None:
        if not isinstance(log_tail, str):
            raise ReportError("log must be text")
        log_tail = log_tail[-8000:].replace("\x00", "")
    return {
        "operation": _number(payload, "operation", 1, 2**63 - 1, integer=True),
        "status": status,
        "message": _text(payload, "message", 2000, required=False),
        "result": result,
        "progress": progress,
        "log": log_tail,
    }


MAX_FACTS_BYTES = 16_384


def clean_model_files(payload):
    """Model files on the rig's disk: `replace` (a scan), `upsert` (a download) or `remove` (a delete)."""
    if not isinstance(payload, dict):
        raise ReportError("payload must be an object")
    mode = payload.get("mode")
    if mode not in ("replace", "upsert", "remove"):
        raise ReportError(f"mode {mode!r} is not replace, upsert or remove")
    files = []
    for item in _list(payload, "files", max_len=10000):
        if not isinstance(item, dict):
            raise ReportError("each file must be an object")
        path = _text(item, "path", 1000)
        if not path.startswith("/") or "/../" in path or path.endswith("/.."):
            raise ReportError(f"path {path!r} is not an absolute path")
        facts = item.get("facts") or {}
        if not isinstance(facts, dict):
            raise ReportError("facts must be an object")
        encoded = json.dumps(facts)
        if len(encoded) > MAX_FACTS_BYTES:  # a header's facts are ~4 KB even at 128 layers
            raise ReportError(f"facts of {item.get('path')!r} are more than {MAX_FACTS_BYTES} bytes")
        facts_error = _text(item, "facts_error", 500, required=False)
        if _has_nul(facts):  # a third-party file's odd header: PostgreSQL's JSON refuses NUL; the file still counts
            facts, facts_error = {}, "its header holds a NUL character; facts not kept"
        sha = _text(item, "sha256", 64, required=False)
        if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise ReportError("sha256 must be 64 hex characters")
        shards = item.get("shard_paths") or []
        if not isinstance(shards, list) or not all(isinstance(s, str) for s in shards):
            raise ReportError("shard_paths must be a list of paths")
        files.append({
            "path": path,
            "size": _number(item, "size", 0, 10**15, integer=True, required=mode != "remove") or 0,
            "sha256": sha,
            "verified": item.get("verified") is True,
            "repo_id": _text(item, "repo_id", 200, required=False),
            "filename": _text(item, "filename", 300, required=False),
            "facts": facts,
            "facts_error": facts_error,
            "shard_paths": shards[:64],
        })
    model_file = payload.get("model_file")
    if model_file is not None:
        model_file = _number(payload, "model_file", 1, 2**63 - 1, integer=True)
    return {"mode": mode, "files": files, "model_file": model_file}


def clean_deployment(payload):
    if not isinstance(payload, dict):
        raise ReportError("payload must be an object")
    state = payload.get("state")
    if state not in SERVER_STATES:
        raise ReportError(f"deployment state {state!r} is not one of {', '.join(SERVER_STATES)}")
    log_tail = payload.get("log") or ""
    if not isinstance(log_tail, str):
        raise ReportError("log must be text")
    return {
        "deployment": _number(payload, "deployment", 1, 2**63 - 1, integer=True),
        "state": state,
        "pid": _number(payload, "pid", 1, 2**32, integer=True, required=False),
        "started_at": _number(payload, "started_at", 0, 10**11, required=False),
        "restarts": _number(payload, "restarts", 0, 10**9, integer=True, required=False) or 0,
        "message": _text(payload, "message", 4000, required=False),
        "log": log_tail[-8000:].replace("\x00", ""),
        "generation": _number(payload, "generation", 0, 2**31, integer=True, required=False) or 0,
    }


def clean_server_exit(payload):
    if not isinstance(payload, dict):
        raise ReportError("payload must be an object")
    log_tail = payload.get("log") or ""
    if not isinstance(log_tail, str):
        raise ReportError("log must be text")
    return {
        "deployment": _number(payload, "deployment", 1, 2**63 - 1, integer=True),
        "at": _number(payload, "at", 0, 10**11),
        "uptime": _number(payload, "uptime", 0, 10**9, required=False),
        "restart_in": _number(payload, "restart_in", 0, 10**6, required=False),
        "exit_code": _number(payload, "exit_code", 0, 255, integer=True, required=False),
        "signal": _number(payload, "signal", 1, 64, integer=True, required=False),
        "log": log_tail[-4000:].replace("\x00", ""),
    }


def clean_inventory(payload):
    """What a rig still has: operations in flight (or ended with the outcome not yet acknowledged), its servers."""
    if not isinstance(payload, dict):
        raise ReportError("payload must be an object")
    operations = _list(payload, "operations", max_len=1000)
    if not all(isinstance(o, int) and not isinstance(o, bool) and 1 <= o < 2**63 for o in operations):
        raise ReportError("operations must be a list of operation ids")
    deployments = [clean_deployment(item) for item in _list(payload, "deployments", max_len=256)]
    return {
        "boot": payload.get("boot") is True,
        "agent_started_at": _number(payload, "agent_started_at", 0, 10**11, required=False),
        "operations": operations,
        "deployments": deployments,
        "outbox": _number(payload, "outbox", 0, 10**7, integer=True, required=False) or 0,
    }


def clean_rejected_command(payload):
    if not isinstance(payload, dict):
        raise ReportError("payload must be an object")
    return {"task": _text(payload, "task", 60), "reason": _text(payload, "reason", 240)}


HEX_ID_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
WEI_RE = re.compile(r"^[0-9]{1,78}$")  # uint256 as a decimal string
MODEL_HEALTH = ("healthy", "unhealthy", "degraded", "no_bid", "no_model_configured", "unknown")


def _wei_text(data, key, required=False):
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not WEI_RE.match(value):
        raise ReportError(f"{key} must be a whole number of wei as a string")
    return value


def _router_publish(payload):
    """Published deployments: the models-config entries in force (an apiKey only ever as "set", whatever the rig
    sends), whether the proxy port accepts connections, whether the router reloads its models without a restart."""
    entries = _list(payload, "config_models", 64)
    if len(json.dumps(entries)) > 64 * 1024:
        raise ReportError("config_models is too large")
    config_models = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ReportError("config_models entries must be objects")
        item = {key: _text(entry, key, 500) for key in ("modelId", "modelName", "apiType", "apiUrl")}
        item["modelId"] = item["modelId"].lower()
        optional = {"capacityPolicy": _text(entry, "capacityPolicy", 20, required=False),
                    "concurrentSlots": _number(entry, "concurrentSlots", 1, 10**6, integer=True, required=False),
                    "apiKey": "set" if entry.get("apiKey") else None}
        config_models.append({**item, **{k: v for k, v in optional.items() if v not in (None, "")}})
    flags = {key: payload.get(key) for key in ("proxy_listening", "reload_supported")}
    if any(value is not None and not isinstance(value, bool) for value in flags.values()):
        raise ReportError("proxy_listening and reload_supported must be true, false or null")
    return {"config_models": config_models, **flags}


def _matching(value, regex, what):
    if not isinstance(value, str) or not regex.match(value):
        raise ReportError(f"{what} must be {regex.pattern}")
    return value.lower()


MAX_ROUTER_SESSIONS = 64
CHAIN_TIME_MAX = 10**11  # epoch seconds: year 5138; a rig sending more is lying


def _router_sessions(payload):
    """`sessions`, `claimable_wei` and `started_at` (nodes/agent/routersessions.py): at most 64 sessions with unique
    0x-hex ids, addresses, wei as integer strings and times that make sense (opened before it ends or closed)."""
    sessions = []
    soon = int(time.time()) + 86400  # a block time further ahead than a day is made up
    for item in _list(payload, "sessions", MAX_ROUTER_SESSIONS) if payload.get("sessions") is not None else []:
        if not isinstance(item, dict):
            raise ReportError("each session must be an object")
        user = item.get("user")
        session = {"id": _matching(item.get("id"), HEX_ID_RE, "session id"),
                   "user": _matching(user, ADDRESS_RE, "session user") if user is not None else None,
                   "model_id": _matching(item.get("model_id"), HEX_ID_RE, "session model id"),
                   "bid_id": _matching(item.get("bid_id"), HEX_ID_RE, "session bid id"),
                   "opened_at": _number(item, "opened_at", 1, soon, integer=True),
                   "ends_at": _number(item, "ends_at", 0, CHAIN_TIME_MAX, integer=True, required=False),
                   "closed_at": _number(item, "closed_at", 1, soon, integer=True, required=False),
                   "price_per_second": _wei_text(item, "price_per_second", required=True),
                   "stake": _wei_text(item, "stake"),
                   "provider_withdrawn": _wei_text(item, "provider_withdrawn"),
                   "claimable_wei": _wei_text(item, "claimable_wei")}
        if session["closed_at"] is not None and session["closed_at"] < session["opened_at"]:
            raise ReportError("a session closed before it opened")
        if session["ends_at"] and session["ends_at"] < session["opened_at"]:
            raise ReportError("a session ends before it opened")
        sessions.append(session)
    if len({s["id"] for s in sessions}) != len(sessions):
        raise ReportError("a session is listed twice")
    return {"sessions": sessions, "claimable_wei": _wei_text(payload, "claimable_wei"),
            "started_at": _number(payload, "started_at", 0, CHAIN_TIME_MAX, required=False)}


def _router_health(models):
    """/healthcheck's per-model health: {model id: status or {"status": ...}}, bounded."""
    if not isinstance(models, dict) or len(models) > 64:
        raise ReportError("models_health must be an object of at most 64 models")
    clean = {}
    for key, value in models.items():
        status = value.get("status") if isinstance(value, dict) else value
        if not isinstance(key, str) or len(key) > 100:
            raise ReportError("models_health keys must be model ids")
        clean[key] = status if status in MODEL_HEALTH else "unknown"
    return clean


def _router_market(market):
    """Competing bids per model: {model id: {count, lowest, median}}, at most 16 models, prices as wei strings."""
    if market is None:
        return {}
    if not isinstance(market, dict) or len(market) > 16:
        raise ReportError("market must be an object of at most 16 models")
    clean = {}
    for key, value in market.items():
        key = _matching(key, HEX_ID_RE, "market model id")
        if not isinstance(value, dict):
            raise ReportError("a market entry must be an object")
        count = _number(value, "count", 0, 10**6, integer=True)
        lowest, median = _wei_text(value, "lowest"), _wei_text(value, "median")
        if (count == 0) != (lowest is None) or (lowest is None) != (median is None) or \
                (lowest is not None and int(lowest) > int(median)):
            raise ReportError("a market entry needs lowest <= median when it counts bids, neither when it counts none")
        clean[key] = {"count": count, "lowest": lowest, "median": median}
    return clean


def clean_router(payload):
    """The proxy-router's state on a rig (protocol.ROUTER_FIELDS): states from the protocol, amounts in wei as
    integer strings, addresses and ids 0x-hex, every list and text bounded."""
    if not isinstance(payload, dict):
        raise ReportError("payload must be an object")
    if _has_nul(payload):
        raise ReportError("router report contains a NUL character or is nested too deep")
    state = payload.get("state")
    if state not in ROUTER_STATES:
        raise ReportError(f"router state {state!r} is not one of {', '.join(ROUTER_STATES)}")
    log_tail = payload.get("log") or ""
    if not isinstance(log_tail, str):
        raise ReportError("log must be text")
    wallet = payload.get("wallet")
    network = payload.get("network")
    if network is not None and network not in ROUTER_NETWORKS:
        raise ReportError(f"network {network!r} is not one of {', '.join(ROUTER_NETWORKS)}")
    health = payload.get("health")
    if health not in (None, "healthy", "degraded"):
        raise ReportError("health must be healthy or degraded")
    provider = payload.get("provider")
    if provider is not None:
        if not isinstance(provider, dict):
            raise ReportError("provider must be an object")
        provider = {"address": _matching(provider.get("address"), ADDRESS_RE, "provider address"),
                    "endpoint": _text(provider, "endpoint", 300, required=False),
                    "stake": _wei_text(provider, "stake", required=True)}
    models = [{"id": _matching(m.get("id"), HEX_ID_RE, "model id"), "name": _text(m, "name", 200, required=False),
               "stake": _wei_text(m, "stake")} for m in _list(payload, "models", 64) if isinstance(m, dict)]
    bids = [{"id": _matching(b.get("id"), HEX_ID_RE, "bid id"), "model_id": _matching(b.get("model_id"), HEX_ID_RE,
                                                                                     "bid model id"),
             "price_per_second": _wei_text(b, "price_per_second", required=True)}
            for b in _list(payload, "bids", 64) if isinstance(b, dict)]
    keys = _list(payload, "unmanaged_keys", 100)
    if not all(isinstance(k, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$", k) for k in keys):
        raise ReportError("unmanaged_keys must be .env key names")
    error = payload.get("error")
    if error is not None:
        if not isinstance(error, dict) or error.get("kind") not in ROUTER_ERROR_KINDS:
            raise ReportError(f"error kind must be one of {', '.join(ROUTER_ERROR_KINDS)}")
        error = {"kind": error["kind"], "reason": _text(error, "reason", 500, required=False)}
    return {
        "state": state,
        **_router_sessions(payload),
        "pid": _number(payload, "pid", 1, 2**32, integer=True, required=False),
        "message": _text(payload, "message", 4000, required=False),
        "log": log_tail[-8000:],
        "restarts": _number(payload, "restarts", 0, 10**9, integer=True, required=False) or 0,
        "version": _text(payload, "version", 100, required=False),
        "health": health,
        "models_health": _router_health(payload.get("models_health") or {}),
        "wallet": _matching(wallet, ADDRESS_RE, "wallet") if wallet is not None else None,
        "mor_wei": _wei_text(payload, "mor_wei"),
        "eth_wei": _wei_text(payload, "eth_wei"),
        "provider": provider,
        "models": models,
        "bids": bids,
        "open_sessions": _number(payload, "open_sessions", 0, 10**6, integer=True, required=False),
        **_router_publish(payload),
        "unmanaged_keys": sorted(keys),
        "network": network,
        "binary": _text(payload, "binary", 4096, required=False),
        "at": _number(payload, "at", 0, 10**11),
        "error": error,
        "market": _router_market(payload.get("market")),
    }


CLEANERS = {
    "router": clean_router,
    "rejected_command": clean_rejected_command,
    "server_exit": clean_server_exit,
    "deployment": clean_deployment,
    "hardware": clean_hardware,
    "telemetry": clean_telemetry,
    "operation": clean_operation,
    "model_files": clean_model_files,
    "inventory": clean_inventory,
}
