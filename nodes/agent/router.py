"""The Morpheus proxy-router on a rig: its `.env`, its models-config.json, and its process. Plain Python, no Django.

The router reads `.env` from its working folder and models-config.json once at start (MORPHEUS.md): a change to
either needs a restart, and a restart cuts open sessions, so nothing here restarts it unless asked.

- write_env keeps every line the panel does not manage (WALLET_PRIVATE_KEY, an ETH_NODE_ADDRESS with a paid
  RPC key, comments) byte for byte; unmanaged_keys names them and never reads their values back.
- write_models_config validates against the router's own schema (written in below) and writes model ids in the
  form the router looks them up by (lowercase, 0x): the router keys its config by the id string as written,
  then looks it up with common.Hash.Hex(), so an id written in capitals or without 0x never matches.
- RouterProcess supervises the router as supervisor.Server does llama-server: its own session, an allow-listed
  environment, an O_APPEND log, pid + command line in a state file to re-adopt it after the agent restarts,
  /healthcheck followed until healthy, backoff restarts, giving up after repeated crashes with the last log lines.

The admin API client is in routeradmin.py (re-exported here).
"""

import json
import logging
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

from .childenv import child_environment
from .routeradmin import AdminClient, RouterError, loopback_url, price_summary  # noqa: F401  (one import)
from .supervisor import (describe_exit, duration_text, owned_process_running, port_free, read_cmdline, rotate_log,
                         stop_process_group, tail, write_private)
from .validation import InvalidValue

log = logging.getLogger("morpheus.agent.router")

# --- .env ----------------------------------------------------------------------------------------------------------
# BASE mainnet and BASE Sepolia, from the router's docs (docs/get-started/networks-and-tokens.mdx): the MOR token
# has a different address on each chain.
NETWORKS = {
    "mainnet": {
        "ETH_NODE_CHAIN_ID": "8453",
        "DIAMOND_CONTRACT_ADDRESS": "0x6aBE1d282f72B474E54527D93b979A4f64d3030a",
        "MOR_TOKEN_ADDRESS": "0x7431aDa8a591C955a994a21710752EF9b882b8e3",
        "BLOCKSCOUT_API_URL": "https://base.blockscout.com/api/v2",
    },
    "testnet": {
        "ETH_NODE_CHAIN_ID": "84532",
        "DIAMOND_CONTRACT_ADDRESS": "0x6e4d0B775E3C3b02683A6F277Ac80240C4aFF930",
        "MOR_TOKEN_ADDRESS": "0x5C80Ddd187054E1E4aBBfFCD750498e81d34FfA3",
        "BLOCKSCOUT_API_URL": "https://base-sepolia.blockscout.com/api/v2",
    },
}

ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
HOST_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$")
URL_RE = re.compile(r"^https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?(/[A-Za-z0-9._~/-]*)?$")
PATH_RE = re.compile(r"^[A-Za-z0-9._/+-]{1,4096}$")
KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _host_port(value):
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not HOST_RE.match(host):
        raise InvalidValue(f"{value!r} is not host:port")
    return value


def _kind(pattern, what):
    def check(value):
        if not re.fullmatch(pattern, value):
            raise InvalidValue(f"{value!r} is not {what}")
        return value
    return check


def _matching(regex, what):
    def check(value):
        if not regex.match(value):
            raise InvalidValue(f"{value!r} is not {what}")
        return value
    return check


_LOG_LEVEL = _kind(r"debug|info|warn|error|dpanic|panic|fatal", "a log level (debug, info, warn, error, ...)")
_BOOL = _kind(r"true|false", "true or false")
_DURATION = _kind(r"\d{1,6}(ms|s|m|h)", "a duration such as 240s or 4m")
_COUNT = _kind(r"\d{1,9}", "a whole number")
_PATH = _matching(PATH_RE, "a plain path (letters, digits, . _ / + -)")

# Each key the panel manages, and the check its value passes before it is written.
MANAGED_KEYS = {
    "ETH_NODE_CHAIN_ID": _kind(r"8453|84532", "a BASE chain id (8453 mainnet, 84532 testnet)"),
    "DIAMOND_CONTRACT_ADDRESS": _matching(ADDRESS_RE, "an address (0x and 40 hex digits)"),
    "MOR_TOKEN_ADDRESS": _matching(ADDRESS_RE, "an address (0x and 40 hex digits)"),
    "BLOCKSCOUT_API_URL": _matching(URL_RE, "an http(s) URL without a query"),
    "ETH_NODE_USE_SUBSCRIPTIONS": _BOOL,
    "PROXY_ADDRESS": _host_port,
    "WEB_ADDRESS": _host_port,
    "WEB_PUBLIC_URL": _matching(URL_RE, "an http(s) URL without a query"),
    "MODELS_CONFIG_PATH": _PATH,
    "COOKIE_FILE_PATH": _PATH,
    "PROXY_STORAGE_PATH": _PATH,
    "AUTH_CONFIG_FILE_PATH": _PATH,
    "ENVIRONMENT": _kind(r"development|production", "development or production"),
    "LOG_LEVEL_APP": _LOG_LEVEL,
    "LOG_LEVEL_TCP": _LOG_LEVEL,
    "LOG_LEVEL_ETH_RPC": _LOG_LEVEL,
    "LOG_LEVEL_STORAGE": _LOG_LEVEL,
    "LOG_COLOR": _BOOL,
    "LLM_TIMEOUT": _DURATION,
    "PROXY_STORE_CHAT_CONTEXT": _BOOL,
    "MODEL_HEALTH_CHECK_INTERVAL": _DURATION,
    "MODEL_HEALTH_MAX_CONSECUTIVE_ERRORS": _COUNT,
}
MANAGED_MARK = "# Managed by Morpheus Admin below; lines above this one are the provider's and are kept as they are."


def default_env(network="mainnet", proxy_port=3333, web_port=8082, public_url=None):
    """The managed keys for a fresh rig. The admin API listens on loopback only: the agent is its one client."""
    if network not in NETWORKS:
        raise InvalidValue(f"network must be one of {', '.join(NETWORKS)}, not {network!r}")
    values = dict(NETWORKS[network])
    values.update({
        "ETH_NODE_USE_SUBSCRIPTIONS": "false",
        "PROXY_ADDRESS": f"0.0.0.0:{int(proxy_port)}",
        "WEB_ADDRESS": f"127.0.0.1:{int(web_port)}",
        "MODELS_CONFIG_PATH": "models-config.json",
        "COOKIE_FILE_PATH": "./.cookie",
        "PROXY_STORAGE_PATH": "./data/badger/",
        "ENVIRONMENT": "production",
        "LOG_LEVEL_APP": "info",
        "LLM_TIMEOUT": "240s",
    })
    if public_url:
        values["WEB_PUBLIC_URL"] = public_url
    return values


def check_env_value(key, value):
    """A managed value as it will be written, or InvalidValue: only known keys, one plain line each."""
    if key not in MANAGED_KEYS:
        raise InvalidValue(f"{key!r} is not a setting the panel manages")
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise InvalidValue(f"{key} must be text, not {type(value).__name__}")
    value = str(value)
    # godotenv expands $VAR and reads quotes, # and escapes; none of them belongs in a value we manage.
    if any(ch in value for ch in "\n\r\0 \t=\"'`$#\\"):
        raise InvalidValue(f"{key} must be one plain value without spaces, quotes, '=', '$' or '#'")
    return MANAGED_KEYS[key](value)


def _line_key(line):
    """The key a .env line sets (godotenv's reading: optional `export`, spaces around the name), else None."""
    text = line.strip()
    if not text or text.startswith("#") or "=" not in text:
        return None
    key = text.split("=", 1)[0].strip()
    if key.startswith("export "):
        key = key[len("export "):].strip()
    return key if KEY_RE.match(key) else None


def _read_lines(path):
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def write_env(path, managed):
    """Set the managed keys in `path`, keeping every other line as it is; atomic, mode 0600.

    A managed key already in the file is replaced where it stands (a second copy of it is dropped: godotenv would
    read the last one); new keys go at the end under MANAGED_MARK. Nothing is written if one value is refused.
    Returns the keys written."""
    values = {key: check_env_value(key, value) for key, value in managed.items()}
    out, done = [], set()
    for line in _read_lines(path):
        key = _line_key(line)
        if key in values:
            if key not in done:
                out.append(f"{key}={values[key]}")
                done.add(key)
            continue
        out.append(line)
    missing = [key for key in values if key not in done]
    if missing:
        if MANAGED_MARK not in out:
            if out and out[-1].strip():
                out.append("")
            out.append(MANAGED_MARK)
        out.extend(f"{key}={values[key]}" for key in missing)
    write_private(path, "\n".join(out) + "\n")
    return sorted(values)


def unmanaged_keys(path):
    """The names of the keys in `path` that the panel does not manage (their values are never read out)."""
    return sorted({key for key in map(_line_key, _read_lines(path)) if key and key not in MANAGED_KEYS})


def managed_values(path):
    """The managed keys as the file has them now (unmanaged keys are left out, values and all)."""
    found = {}
    for line in _read_lines(path):
        key = _line_key(line)
        if key in MANAGED_KEYS:
            found[key] = line.split("=", 1)[1].strip().strip("\"'")
    return found


SECRET_NAME_MARKERS = ("KEY", "SECRET", "PASSWORD", "PASSWD", "TOKEN", "MNEMONIC", "COOKIE", "ETH_NODE_ADDRESS")


def secret_values(folder):
    """Every value on this router's folder that must never reach the panel: the cookie password, secret-looking
    .env values (the wallet key, an RPC URL with its API key, COOKIE_CONTENT) and models' apiKeys. Used to mask
    them in log lines and messages before they are reported."""
    folder = Path(folder)
    found = set()
    for line in _read_lines(folder / ".env"):
        key = _line_key(line)
        if key and key not in MANAGED_KEYS and any(marker in key.upper() for marker in SECRET_NAME_MARKERS):
            value = line.split("=", 1)[1].strip().strip("\"'")
            found.add(value)
            found.add(value.partition(":")[2])  # COOKIE_CONTENT=admin:<password>
    settings = managed_values(folder / ".env")
    try:
        found.add(Path(folder / settings.get("COOKIE_FILE_PATH", ".cookie")).read_text().strip().partition(":")[2])
    except OSError:
        pass
    try:
        config = json.loads((folder / settings.get("MODELS_CONFIG_PATH", "models-config.json")).read_text())
        found.update(m.get("apiKey", "") for m in config.get("models", []) if isinstance(m, dict))
    except (OSError, ValueError, AttributeError):
        pass
    return sorted((v for v in found if isinstance(v, str) and len(v) >= 4), key=len, reverse=True)


def mask(text, secrets):
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


# --- models-config.json --------------------------------------------------------------------------------------------
# proxy-router/internal/config/models-config-schema.json, as the router ships it.
MODELS_CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "modelId": {"type": "string", "pattern": r"^(0x)?[0-9a-fA-F]{64}$"},
                    "modelName": {"type": "string", "minLength": 1},
                    "apiType": {"type": "string", "enum": ["openai", "prodia-v2", "hyperbolic-sd", "claudeai"]},
                    "apiUrl": {"type": "string", "format": "uri"},
                    "apiKey": {"type": "string", "minLength": 1},
                    "parameters": {"type": "object", "additionalProperties": {"type": "string"}},
                    "concurrentSlots": {"type": "integer", "minimum": 1},
                    "capacityPolicy": {"type": "string", "enum": ["simple", "idle_timeout"]},
                },
                "required": ["modelId", "modelName", "apiType", "apiUrl"],
            },
        },
    },
}
SCHEMA_REF = "./internal/config/models-config-schema.json"
MODEL_ID_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$")


class ModelsConfigError(ValueError):
    pass


def _check(schema, value, where):
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "integer": int}
    if kind and (not isinstance(value, types[kind]) or isinstance(value, bool)):
        raise ModelsConfigError(f"{where} must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}")
    if kind == "object":
        for name in schema.get("required", []):
            if name not in value:
                raise ModelsConfigError(f"{where}.{name} is required")
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for name, item in value.items():
            if name in props:
                _check(props[name], item, f"{where}.{name}")
            elif isinstance(extra, dict):
                _check(extra, item, f"{where}.{name}")
    elif kind == "array":
        for n, item in enumerate(value):
            _check(schema.get("items", {}), item, f"{where}[{n}]")
    elif kind == "string":
        if len(value) < schema.get("minLength", 0):
            raise ModelsConfigError(f"{where} must not be empty")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise ModelsConfigError(f"{where} {value!r} does not match {schema['pattern']}")
        if schema.get("format") == "uri" and not URI_RE.match(value):
            raise ModelsConfigError(f"{where} {value!r} is not a URI")
    elif kind == "integer" and value < schema.get("minimum", value):
        raise ModelsConfigError(f"{where} must be at least {schema['minimum']}")
    if "enum" in schema and value not in schema["enum"]:
        raise ModelsConfigError(f"{where} must be one of {', '.join(schema['enum'])}, not {value!r}")


def validate_models_config(data):
    """Raise ModelsConfigError naming the first field that breaks the router's schema, or a model listed twice."""
    _check(MODELS_CONFIG_SCHEMA, data, "models-config")
    seen = set()
    for n, entry in enumerate(data.get("models", [])):
        model_id = entry["modelId"].lower().removeprefix("0x")
        if model_id in seen:
            raise ModelsConfigError(f"models-config.models[{n}].modelId is listed twice (the router keeps one)")
        seen.add(model_id)
    return data


def models_config_entry(model_id, model_name, api_url, concurrent_slots=None, capacity_policy="simple"):
    """One entry for a deployment this panel publishes: an OpenAI-style chat endpoint on the rig.

    Stricter than the schema: the router sends requests to apiUrl as it is (older versions appended the path), so
    it must be the full http(s)://host:port/.../chat/completions URL."""
    parts = urlsplit(api_url or "")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None or \
            not parts.path.endswith("/chat/completions") or parts.query or parts.fragment:
        raise InvalidValue(f"{api_url!r} is not a full chat-completions URL (http://host:port/v1/chat/completions)")
    entry = {"modelId": normal_model_id(model_id), "modelName": model_name, "apiType": "openai", "apiUrl": api_url}
    if concurrent_slots is not None:
        entry["concurrentSlots"] = concurrent_slots
    if capacity_policy:
        entry["capacityPolicy"] = capacity_policy
    try:
        _check(MODELS_CONFIG_SCHEMA["properties"]["models"]["items"], entry, "entry")
    except ModelsConfigError as exc:
        raise InvalidValue(str(exc)) from None
    return entry


def normal_model_id(value):
    if not isinstance(value, str) or not MODEL_ID_RE.match(value):
        raise InvalidValue(f"{value!r} is not a model id (0x and 64 hex digits)")
    return value.lower()


def write_models_config(path, entries):
    """Write models-config.json for these entries (ids in the router's lookup form), atomically, mode 0600 (an
    entry may hold an apiKey). Raises ModelsConfigError before writing anything. Returns the document."""
    models = []
    for entry in entries:
        entry = dict(entry)
        if isinstance(entry.get("modelId"), str) and re.match(r"^(0x)?[0-9a-fA-F]{64}$", entry["modelId"]):
            entry["modelId"] = "0x" + entry["modelId"].lower().removeprefix("0x")
        models.append(entry)
    document = validate_models_config({"$schema": SCHEMA_REF, "models": models})
    write_private(path, json.dumps(document, indent=2) + "\n")
    return document


def client_for(folder, **knobs):
    """The admin API client for the router in `folder`: its WEB_ADDRESS on loopback, its own cookie file."""
    folder = Path(folder)
    settings = managed_values(folder / ".env")
    if "WEB_ADDRESS" not in settings:
        raise InvalidValue(f"{folder / '.env'} has no WEB_ADDRESS; write the router's settings first")
    return AdminClient(settings["WEB_ADDRESS"], folder / settings.get("COOKIE_FILE_PATH", ".cookie"), **knobs)


# --- the process ---------------------------------------------------------------------------------------------------
STOPPED, STARTING, HEALTHY, DEGRADED, UNRESPONSIVE, BACKOFF, FAILED = (
    "stopped", "starting", "healthy", "degraded", "unresponsive", "backoff", "failed")
RUNNING_STATES = (STARTING, HEALTHY, DEGRADED, UNRESPONSIVE)


def probe_router(web_address, timeout=1.0):
    """(state, body): HEALTHY or DEGRADED with /healthcheck's JSON, or (None, None) when it does not answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(loopback_url(web_address) + "/healthcheck", timeout=timeout) as response:
            status, raw = response.status, response.read(256 * 1024)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(256 * 1024)
    except (OSError, ValueError):
        return None, None
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") not in ("healthy", "degraded"):
        return None, None  # not the router's answer (another program on the port, or a half-started router)
    if status == 200 and body["status"] == "healthy":
        return HEALTHY, body
    return DEGRADED, body


class RouterProcess:
    """One proxy-router on this rig. `tick()` is one supervision step; `run()` loops it on a thread."""

    def __init__(self, argv, folder, state_dir, on_exit=None, backoff_base=1.0, backoff_max=60.0, max_crashes=5,
                 crash_window=600.0, stop_timeout=10.0, start_timeout=120.0, log_max_bytes=20 * 1024 * 1024,
                 log_backups=2):
        self.argv = [str(part) for part in argv]
        self.folder = Path(folder)
        self.dir = Path(state_dir) / "router"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.on_exit = on_exit
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.max_crashes, self.crash_window, self.stop_timeout = max_crashes, crash_window, stop_timeout
        self.start_timeout = start_timeout  # a router still not answering /healthcheck after this is "unresponsive"
        self.log_max_bytes, self.log_backups = log_max_bytes, log_backups
        self.lock = threading.RLock()
        self.desired = STOPPED
        self.state, self.message = STOPPED, ""
        self.pid, self.cmdline, self.popen, self.last_exit = None, None, None, None
        self.started_at, self.restarts, self.next_start = None, 0, 0.0
        self.crashes = deque(maxlen=max_crashes)
        self.web_address = None
        self.health = None
        self._stop = threading.Event()
        self._thread = None

    @property
    def log_path(self):
        return self.dir / "router.log"

    @property
    def state_path(self):
        return self.dir / "state.json"

    # -- state file
    def save(self):
        data = {"argv": self.argv, "folder": str(self.folder), "desired": self.desired, "state": self.state,
                "message": self.message, "pid": self.pid, "cmdline": self.cmdline, "started_at": self.started_at,
                "restarts": self.restarts, "crashes": list(self.crashes), "web_address": self.web_address}
        write_private(self.state_path, json.dumps(data))

    def adopt(self):
        """After an agent restart: take back a router that kept running (same pid, same command line)."""
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return False
        with self.lock:
            self.desired = data.get("desired", STOPPED)
            self.pid, self.cmdline = data.get("pid"), data.get("cmdline")
            self.started_at, self.restarts = data.get("started_at"), data.get("restarts", 0)
            self.crashes.extend(data.get("crashes", []))
            self.web_address = data.get("web_address")
            self.state, self.message = data.get("state", STOPPED), data.get("message", "")
            if self.is_running():
                adopted = f"re-adopted pid {self.pid} after the agent restarted"
                log.info("proxy-router: %s", adopted)
                self.state = STARTING
                self.tick()
                self.message = f"{adopted}; {self.state}"
                self.save()
                return True
            was = self.state
            self.pid = None
            if was in RUNNING_STATES and self.on_exit is not None:  # it died while the agent was away
                self.on_exit({"at": time.time(), "uptime": None, "restart_in": 0, "exit": describe_exit(None),
                              "log": mask(tail(self.log_path, 15), secret_values(self.folder))})
            if self.desired == "running" and self.state != FAILED:
                self.state, self.message = STOPPED, "was not running when the agent started; starting it"
            self.save()
            return False

    def is_running(self):
        return owned_process_running(self)

    # -- desired state
    def start(self):
        """The provider asked for the router to run (also clears a "failed")."""
        with self.lock:
            self.desired = "running"
            if self.state == FAILED:
                self.state, self.message = STOPPED, ""
                self.crashes.clear()
            self.next_start = 0.0
            self.save()
            return self.tick()

    def stop(self, why="stopped by the provider"):
        with self.lock:
            self.desired = STOPPED
            self._terminate(why)
            return self.report()

    def restart(self, why="restarted by the provider"):
        """A restart the provider asked for (it cuts open sessions; the caller has asked first)."""
        with self.lock:
            self._terminate(why)
            self.desired = "running"
            self.crashes.clear()
            self._launch()
            return self.report()

    # -- one supervision step
    def tick(self):
        with self.lock:
            before = (self.state, self.pid, self.restarts, self.message)
            try:
                if rotate_log(self.log_path, self.log_max_bytes, self.log_backups):
                    log.info("proxy-router: rotated %s", self.log_path)
            except OSError as exc:
                log.warning("proxy-router: could not rotate %s: %s", self.log_path, exc)
            if self.desired != "running":
                if self.is_running():
                    self._terminate("stopped by the provider")
            elif self.state != FAILED:
                self._keep_running()
            if (self.state, self.pid, self.restarts, self.message) != before:
                self.save()
            return self.state

    def _keep_running(self):
        now = time.time()
        if self.is_running():
            health, body = probe_router(self.web_address)
            if health is not None:
                self.health = body
                if self.popen is not None and self.state == STARTING:
                    # What /proc shows once it answers: a wrapper that exec'd the router (a script, an interpreter)
                    # has another command line than the argv launched, and adoption compares this one.
                    self.cmdline = read_cmdline(self.pid) or self.cmdline
                if self.state != health:
                    self.message = (f"{health} ({now - (self.started_at or now):.1f} s after launch)"
                                    if self.state == STARTING else health)
                self.state = health
            elif self.state != STARTING or now - (self.started_at or now) > self.start_timeout:
                if self.state != UNRESPONSIVE:
                    self.state = UNRESPONSIVE
                    self.message = (f"running for {duration_text(now - (self.started_at or now))} but /healthcheck "
                                    f"on {self.web_address} does not answer; its log says why")
            return
        if self.state in RUNNING_STATES and self.pid is not None:
            self._crashed(now)
            return
        if self.state == BACKOFF and now < self.next_start:
            return
        self._launch()

    def _crashed(self, now):
        exit_text = describe_exit(self.last_exit)
        uptime = now - self.started_at if self.started_at else None
        self.crashes.append(now)
        self.pid, self.popen, self.health = None, None, None
        recent = [t for t in self.crashes if now - t <= self.crash_window]
        last_lines = tail(self.log_path, 15)
        after = f" after {duration_text(uptime)}" if uptime is not None else ""
        if len(recent) >= self.max_crashes:
            self.state, delay = FAILED, None
            self.message = (f"proxy-router crashed {len(recent)} times in {duration_text(self.crash_window)} "
                            f"({exit_text}); not restarting until it is started again. Last log lines:\n{last_lines}")
        else:
            delay = min(self.backoff_max, self.backoff_base * 2 ** (len(recent) - 1))
            self.state, self.next_start = BACKOFF, now + delay
            self.message = f"proxy-router crashed ({exit_text}){after}; restart {len(recent)} in {delay:.0f} s"
        log.warning("%s", self.message)
        if self.on_exit is not None:
            self.on_exit({"at": now, "uptime": uptime, "restart_in": delay, "exit": exit_text,
                          "log": mask(last_lines, secret_values(self.folder))})

    def _launch(self):
        env_file = self.folder / ".env"
        settings = managed_values(env_file)
        web, proxy = settings.get("WEB_ADDRESS"), settings.get("PROXY_ADDRESS")
        problem = None
        if not os.access(self.argv[0], os.X_OK):
            problem = f"the proxy-router binary {self.argv[0]} is missing or not executable"
        elif not web or not proxy:
            problem = f"{env_file} has no WEB_ADDRESS or PROXY_ADDRESS; write the router's settings first"
        else:
            for name, address in (("WEB_ADDRESS", web), ("PROXY_ADDRESS", proxy)):
                host, _, port = address.rpartition(":")
                if not port_free(host.strip("[]") or "0.0.0.0", int(port)):
                    problem = f"{name} {address} is already in use by another program"
                    break
        if problem:
            self.state, self.message = FAILED, problem
            return
        with open(self.log_path, "ab") as log_file:  # O_APPEND: see supervisor.rotate_log
            log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} launching: {' '.join(self.argv)}\n".encode())
            log_file.flush()
            self.popen = subprocess.Popen(self.argv, stdout=log_file, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.folder,
                                          env=child_environment())
        if self.started_at is not None:
            self.restarts += 1
        self.pid, self.cmdline, self.web_address = self.popen.pid, self.argv, web
        self.started_at, self.last_exit, self.health = time.time(), None, None
        self.state, self.message = STARTING, f"launched pid {self.pid}"
        self.save()

    def _terminate(self, why):
        if self.pid is not None and self.is_running():
            if stop_process_group(self.pid, self.is_running, self.stop_timeout, poll=0.02):
                why += f" (killed: still running {self.stop_timeout:g} s after SIGTERM)"
        self.pid, self.popen, self.health = None, None, None
        self.state, self.message = STOPPED, why
        self.save()

    # -- following it
    def wait_healthy(self, timeout=30.0, interval=0.05):
        """Tick until the router answers /healthcheck (healthy or degraded) or gives up; returns the state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.tick()
            if state in (HEALTHY, DEGRADED, FAILED, STOPPED) or time.monotonic() >= deadline:
                return state
            time.sleep(interval)

    def run(self, interval=1.0):
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="proxy-router", daemon=True)
        self._thread.start()

    def stop_loop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self, interval):
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("proxy-router supervision step failed")
            self._stop.wait(interval)

    def report(self):
        """What the panel sees: no credential, no .env value outside the managed keys."""
        health = self.health or {}
        hidden = secret_values(self.folder)
        return {"state": self.state, "desired": self.desired, "pid": self.pid if self.is_running() else None,
                "started_at": self.started_at, "restarts": self.restarts, "message": mask(self.message, hidden),
                "web_address": self.web_address, "version": health.get("version"),
                "models": health.get("models", {}), "components": health.get("components", {}),
                "log": mask(tail(self.log_path, 40), hidden)}
