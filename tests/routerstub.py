"""A stand-in for the Morpheus proxy-router, run as a real process: `python tests/routerstub.py [--env FILE]`.

Standard library only (it runs under the agent's allow-listed environment, without PYTHONPATH). It does what
MORPHEUS.md and the router's source say the real one does, as far as a provider's panel can see:

- reads `.env` from its working folder (or --env) once at start, the process environment winning as with
  godotenv; reads MODELS_CONFIG_PATH (default models-config.json, seeded from MODELS_CONFIG_CONTENT when
  missing) and refuses to start, exit code 2 and the reason on stderr, on a file that breaks the schema;
  creates COOKIE_FILE_PATH (default ./.cookie, mode 0600) from COOKIE_CONTENT or admin:<random> when missing;
- the admin API on WEB_ADDRESS: HTTP basic auth from the cookie file (gin's 401 bodies), /healthcheck open;
  capitalised keys, model Fee/Stake as JSON numbers, provider/bid amounts as strings, `{"error": ...}` bodies,
  gin's plain-text "404 page not found" for routes it does not have (GET /blockchain/bids among them);
- a chain in memory, kept in PROXY_STORAGE_PATH/stub-chain.json so it survives a restart as the real chain
  does, first seeded from the JSON file named by ROUTERSTUB_CHAIN (wallet, balances, providers, models, bids,
  sessions, claimable balances);
- per-model health in /healthcheck from a TCP probe of each configured apiUrl's host:port;
- chat: POST /v1/chat/completions on WEB_ADDRESS (auth, header model_id) and on PROXY_ADDRESS (no auth, the
  model picked by header model_id or by the body's "model" = modelName) forwarded to the model's apiUrl with
  "model" set to modelName, as the router sends it.

Test hooks (environment or .env): ROUTERSTUB_RELOAD=1 (the reload route proposed upstream, PR #887),
ROUTERSTUB_DEGRADED=1 (503 degraded), ROUTERSTUB_FAULTS = JSON
{"/path": 429 | 500 | "malformed" | "sleep:SECONDS"}, ROUTERSTUB_HOOKS_FILE = a JSON file re-read on every
request with the same two keys ({"degraded": true, "faults": {...}}), ROUTERSTUB_VERSION, ROUTERSTUB_WALLET
(the wallet address; otherwise one made up from WALLET_PRIVATE_KEY), ROUTERSTUB_TEST_API=1 (test-only routes that
open and close sessions and set their claimable balance: POST /test/sessions {"model_id", "bid_id", "user",
"price_per_second", "claimable"}, POST /test/sessions/<id>/close, POST /test/sessions/<id>/claimable {"balance"}).

Like the real router, a restart ends the open sessions: when it starts on a chain it kept (PROXY_STORAGE_PATH), every
open session of its provider is closed (ClosedAt = now).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MOR = 10**18
BID_FEE = 3 * MOR // 10
PRICE_FLOOR = 10_000_000_000
PROVIDER_MIN_STAKE = 2 * MOR // 10
MODEL_MIN_STAKE = MOR // 10
HEX32 = re.compile(r"^0x[0-9a-fA-F]{64}$")
ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]*):(\d{1,5})$")
API_TYPES = ("openai", "prodia-v2", "hyperbolic-sd", "claudeai")
MODEL_TYPE_TAGS = {"chat": "LLM", "llm": "LLM", "embedding": "EMBEDDING", "tts": "TTS", "stt": "STT"}
DEFAULT_WALLET = "0x" + "ab" * 20


class StartError(Exception):
    pass


# --- configuration -------------------------------------------------------------------------------------------------
def read_dotenv(path):
    """KEY=VALUE lines as godotenv reads them (export prefix, quotes, comments); a missing file is empty."""
    values = {}
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def check_models_config(data):
    """The router's models-config-schema.json, checked by hand; returns the entries or raises StartError."""
    if not isinstance(data, dict):
        raise StartError("models config: the top level must be an object")
    models = data.get("models")
    if not isinstance(models, list):
        raise StartError("models config: \"models\" must be an array")
    for n, entry in enumerate(models):
        where = f"models config: models[{n}]"
        if not isinstance(entry, dict):
            raise StartError(f"{where} must be an object")
        for key in ("modelId", "modelName", "apiType", "apiUrl"):
            if key not in entry:
                raise StartError(f"{where}: {key} is required")
        if not isinstance(entry["modelId"], str) or not re.match(r"^(0x)?[0-9a-fA-F]{64}$", entry["modelId"]):
            raise StartError(f"{where}.modelId is not 64 hex digits")
        if not isinstance(entry["modelName"], str) or not entry["modelName"]:
            raise StartError(f"{where}.modelName must be a non-empty string")
        if entry["apiType"] not in API_TYPES:
            raise StartError(f"{where}.apiType must be one of {', '.join(API_TYPES)}")
        url = entry["apiUrl"]
        if not isinstance(url, str) or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$", url):
            raise StartError(f"{where}.apiUrl is not a URI")
        if "apiKey" in entry and (not isinstance(entry["apiKey"], str) or not entry["apiKey"]):
            raise StartError(f"{where}.apiKey must be a non-empty string")
        params = entry.get("parameters", {})
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            raise StartError(f"{where}.parameters must map names to strings")
        slots = entry.get("concurrentSlots", 1)
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise StartError(f"{where}.concurrentSlots must be an integer of at least 1")
        if entry.get("capacityPolicy", "simple") not in ("simple", "idle_timeout"):
            raise StartError(f"{where}.capacityPolicy must be simple or idle_timeout")
    return models


def hash_id(*parts):
    return "0x" + hashlib.sha256("|".join(parts).encode()).hexdigest()


def hex_key(value):
    """The router's common.HexToHash(x).Hex(): lowercase, 0x-prefixed."""
    value = value.lower()
    return value if value.startswith("0x") else "0x" + value


class Config:
    def __init__(self, env_path):
        file_values = read_dotenv(env_path)
        self.env = {**file_values, **{k: v for k, v in os.environ.items() if k in file_values or k.startswith(
            ("ROUTERSTUB_", "PROXY_", "WEB_", "MODELS_", "COOKIE_", "ETH_", "WALLET_"))}}
        get = self.env.get
        self.proxy_address = self._host_port("PROXY_ADDRESS")
        self.web_address = self._host_port("WEB_ADDRESS")
        chain = get("ETH_NODE_CHAIN_ID", "8453")
        if not chain.isdigit():
            raise StartError(f"ETH_NODE_CHAIN_ID must be a number, not {chain!r}")
        self.chain_id = int(chain)
        key = get("WALLET_PRIVATE_KEY", "")
        # A stand-in address: the real one derives it with secp256k1, which the standard library lacks.
        self.wallet = ("0x" + hashlib.sha256(key.encode()).hexdigest()[:40]) if key else DEFAULT_WALLET
        self.wallet = get("ROUTERSTUB_WALLET") or self.wallet
        self.models_path = get("MODELS_CONFIG_PATH") or "models-config.json"
        self.cookie_path = get("COOKIE_FILE_PATH") or "./.cookie"
        self.storage = get("PROXY_STORAGE_PATH") or "./data/"
        self.version = get("ROUTERSTUB_VERSION", "v7.11.0-stub")
        self.degraded = get("ROUTERSTUB_DEGRADED", "") in ("1", "true")
        self.faults = json.loads(get("ROUTERSTUB_FAULTS") or "{}")
        self.hooks_file = get("ROUTERSTUB_HOOKS_FILE")
        self.seed = get("ROUTERSTUB_CHAIN")
        self.test_api = get("ROUTERSTUB_TEST_API", "") in ("1", "true")

    def _host_port(self, name):
        value = self.env.get(name, "")
        match = HOST_PORT.match(value)
        if not match or not 0 < int(match[2]) < 65536:
            raise StartError(f"{name} must be host:port, not {value!r}")
        return match[1].strip("[]") or "0.0.0.0", int(match[2])

    def load_models(self):
        if not os.path.exists(self.models_path):
            content = self.env.get("MODELS_CONFIG_CONTENT")
            if not content:
                raise StartError(f"models config file not found: {self.models_path}")
            with open(self.models_path, "w") as fh:
                fh.write(content)
        try:
            data = json.load(open(self.models_path))
        except ValueError as exc:
            raise StartError(f"invalid models config format: {exc}") from None
        return {hex_key(e["modelId"]): e for e in check_models_config(data)}

    def load_cookie(self):
        if not os.path.exists(self.cookie_path):
            line = self.env.get("COOKIE_CONTENT") or f"admin:{secrets.token_hex(16)}"
            if ":" not in line:
                raise StartError(f"invalid cookie content: {line}")
            fd = os.open(self.cookie_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(line + "\n")
        user, _, password = open(self.cookie_path).read().strip().partition(":")
        if not user or not password:
            raise StartError("invalid cookie format")
        return user, password

    def hooks(self):
        degraded, faults = self.degraded, dict(self.faults)
        if self.hooks_file:
            try:
                data = json.load(open(self.hooks_file))
                degraded = data.get("degraded", degraded)
                faults.update(data.get("faults", {}))
            except (OSError, ValueError):
                pass
        return degraded, faults


# --- the chain -----------------------------------------------------------------------------------------------------
class Chain:
    """Providers, models, bids and sessions as the contracts keep them; saved after every change."""

    def __init__(self, path, wallet, seed_path=None):
        self.path, self.wallet, self.lock = path, wallet.lower(), threading.Lock()
        self.restored = os.path.exists(path)  # kept from a previous run: this start is a restart
        if os.path.exists(path):
            data = json.load(open(path))
        elif seed_path:
            data = json.load(open(seed_path))
        else:
            data = {}
        self.mor = int(data.get("balance", {}).get("mor", 10 * MOR))
        self.eth = int(data.get("balance", {}).get("eth", MOR // 100))
        self.allowance = {k.lower(): int(v) for k, v in data.get("allowance", {}).items()}
        self.providers = {p["Address"].lower(): p for p in data.get("providers", [])}
        self.models = {hex_key(m["Id"]): m for m in data.get("models", [])}
        self.bids = {hex_key(b["Id"]): b for b in data.get("bids", [])}
        self.sessions = data.get("sessions", [])
        self.claimable = {hex_key(k): int(v) for k, v in data.get("claimable", {}).items()}
        self.nonce = int(data.get("nonce", 0))
        self.save()

    def save(self):
        data = {"balance": {"mor": str(self.mor), "eth": str(self.eth)},
                "allowance": {k: str(v) for k, v in self.allowance.items()},
                "providers": list(self.providers.values()), "models": list(self.models.values()),
                "bids": list(self.bids.values()), "sessions": self.sessions,
                "claimable": {k: str(v) for k, v in self.claimable.items()}, "nonce": self.nonce}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, self.path)

    def tx(self):
        self.nonce += 1
        return hash_id("tx", str(self.nonce))

    def spend(self, amount):
        if amount > self.mor:
            raise Refused(500, f"ERC20: transfer amount exceeds balance ({self.mor} < {amount})")
        self.mor -= amount


class Refused(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def big(value, name, minimum=0):
    """lib.BigInt from a request: a JSON number or a decimal string."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise Refused(400, f"Key: '{name}' Error:invalid big.Int string: {value}")
    number = int(value)
    if number < minimum:
        raise Refused(400, f"Key: '{name}' Error:Field validation for '{name}' failed on the 'gt' tag")
    return number


def active(bid):
    return str(bid.get("DeletedAt", "0")) in ("0", "")


def page(items, query, default_limit):
    try:
        offset = int(query.get("offset", ["0"])[0])
        limit = int(query.get("limit", [str(default_limit)])[0])
    except ValueError:
        raise Refused(400, "offset and limit must be numbers") from None
    if not 0 <= limit <= 255:
        raise Refused(400, f"strconv.ParseUint: parsing \"{limit}\": value out of range")
    if query.get("order", ["asc"])[0] == "desc":
        items = list(reversed(items))
    return items[offset:offset + limit] if limit else items[offset:]


# --- HTTP ----------------------------------------------------------------------------------------------------------
class Router:
    def __init__(self, config):
        self.config = config
        self.models = config.load_models()
        self.user, self.password = config.load_cookie()
        os.makedirs(config.storage, exist_ok=True)
        self.chain = Chain(os.path.join(config.storage, "stub-chain.json"), config.wallet, config.seed)
        self.started = time.time()
        if self.chain.restored:
            self.end_open_sessions()

    # -- health
    def model_health(self):
        mine = {hex_key(b["ModelAgentId"]) for b in self.chain.bids.values()
                if b["Provider"].lower() == self.chain.wallet and active(b)}
        health = {}
        for model_id in sorted(set(self.models) | mine):
            entry = self.models.get(model_id)
            if entry is None:
                health[model_id] = {"status": "no_model_configured", "name": ""}
                continue
            status = "no_bid"
            if model_id in mine:
                error = probe(entry["apiUrl"])
                status = "unhealthy" if error else "healthy"
            health[model_id] = {"status": status, "name": entry["modelName"]}
            if status == "unhealthy":
                health[model_id]["error"] = error
        return health

    def healthcheck(self):
        degraded, _ = self.config.hooks()
        components = {"badgerdb": "unhealthy: stub told to be degraded" if degraded else "healthy, size=0.1MB"}
        uptime = int(time.time() - self.started)
        body = {"status": "degraded" if degraded else "healthy", "version": self.config.version,
                "uptime": f"{uptime}s", "components": components, "models": self.model_health()}
        return (503 if degraded else 200), body

    # -- routes: (method, pattern) → handler(match, query, body) → (status, body)
    def routes(self):
        c = self.chain
        return [
            ("GET", r"/config", lambda m, q, b: (200, {
                "Version": self.config.version, "Commit": "0000000", "Config": self.sanitized_config(),
                "DerivedConfig": {"WalletAddress": self.config.wallet, "ChainID": self.config.chain_id,
                                  "EthNodeURLs": ["https://rpc.invalid"]}})),
            ("GET", r"/wallet", lambda m, q, b: (200, {"address": self.config.wallet})),
            *self.reload_route(),
            ("GET", r"/blockchain/balance", lambda m, q, b: (200, {"mor": str(c.mor), "eth": str(c.eth)})),
            ("GET", r"/blockchain/allowance", self.allowance),
            ("POST", r"/blockchain/approve", self.approve),
            ("GET", r"/v1/models", lambda m, q, b: (200, self.local_models())),
            ("GET", r"/blockchain/providers", lambda m, q, b: (200, {"providers": page(
                list(c.providers.values()), q, 0)})),
            ("POST", r"/blockchain/providers", self.create_provider),
            ("DELETE", r"/blockchain/providers/(?P<id>[^/]+)", self.delete_provider),
            ("GET", r"/blockchain/models", lambda m, q, b: (200, {"models": page(list(c.models.values()), q, 0)})),
            ("POST", r"/blockchain/models", self.create_model),
            ("DELETE", r"/blockchain/models/(?P<id>[^/]+)", self.delete_model),
            ("POST", r"/blockchain/bids", self.create_bid),
            ("GET", r"/blockchain/bids/(?P<id>[^/]+)", self.get_bid),
            ("DELETE", r"/blockchain/bids/(?P<id>[^/]+)", self.delete_bid),
            ("GET", r"/blockchain/models/(?P<id>[^/]+)/bids(?P<active>/active)?", self.model_bids),
            ("GET", r"/blockchain/providers/(?P<id>[^/]+)/bids(?P<active>/active)?", self.provider_bids),
            ("GET", r"/blockchain/sessions/provider", self.provider_sessions),
            ("GET", r"/proxy/sessions/(?P<id>[^/]+)/providerClaimableBalance", self.claimable),
            ("POST", r"/v1/chat/completions", self.chat),
            ("POST", r"/test/sessions", self.test_open_session),
            ("POST", r"/test/sessions/(?P<id>[^/]+)/close", self.test_close_session),
            ("POST", r"/test/sessions/(?P<id>[^/]+)/claimable", self.test_set_claimable),
        ]

    # -- sessions: a restart ends them; tests open and close them (ROUTERSTUB_TEST_API=1)
    def end_open_sessions(self):
        """What a real restart does to the provider's open sessions: they end now."""
        now = int(time.time())
        for session in self.chain.sessions:
            if session["Provider"].lower() == self.chain.wallet and not int(session.get("ClosedAt") or 0):
                session["ClosedAt"] = now
        self.chain.save()

    def _test_api(self):
        if not self.config.test_api:
            raise Refused(404, "404 page not found")

    def _session(self, m):
        self._test_api()
        found = next((s for s in self.chain.sessions if HEX32.match(m["id"]) and hex_key(s["Id"]) == hex_key(
            m["id"])), None)
        if found is None:
            raise Refused(404, f"session not found: {m['id']}")
        return found

    def test_open_session(self, m, q, b):
        """A consumer opens a session on one of this provider's bids (its model and price) for `duration` seconds."""
        self._test_api()
        bid = self.chain.bids.get(hex_key(b.get("bid_id") or "")) if HEX32.match(b.get("bid_id") or "") else None
        model_id = hex_key(b.get("model_id") or (bid or {}).get("ModelAgentId") or "")
        if not HEX32.match(model_id):
            raise Refused(400, "model_id (0x + 64 hex) or the bid_id of an existing bid is required")
        now = int(time.time())
        session_id = hash_id("session", self.chain.wallet, model_id, str(self.chain.nonce), str(time.time_ns()))
        self.chain.nonce += 1
        session = {"Id": session_id, "User": b.get("user") or "0x" + "ee" * 20, "Provider": self.config.wallet,
                   "ModelAgentId": model_id,
                   "BidID": (bid or {}).get("Id") or b.get("bid_id") or hash_id("bid", model_id),
                   "Stake": str(big(b.get("stake", "1000000000000000000"), "Stake")),
                   "PricePerSecond": str(big(b.get("price_per_second") or (bid or {}).get("PricePerSecond")
                                             or PRICE_FLOOR, "PricePerSecond")),
                   "CloseoutReceipt": "", "CloseoutType": 0, "ProviderWithdrawnAmount": 0, "OpenedAt": now,
                   "EndsAt": now + int(big(b.get("duration", 3600), "duration")), "ClosedAt": 0}
        self.chain.sessions.append(session)
        if b.get("claimable") is not None:
            self.chain.claimable[session_id] = big(b["claimable"], "claimable")
        return 200, {"session": session}

    def test_close_session(self, m, q, b):
        session = self._session(m)
        if not int(session.get("ClosedAt") or 0):
            session["ClosedAt"] = int(time.time())
        return 200, {"session": session}

    def test_set_claimable(self, m, q, b):
        session = self._session(m)
        self.chain.claimable[hex_key(session["Id"])] = big(b.get("balance"), "balance")
        return 200, {"balance": str(self.chain.claimable[hex_key(session["Id"])])}

    def sanitized_config(self):
        hidden = ("WALLET_PRIVATE_KEY", "COOKIE_CONTENT", "ETH_NODE_ADDRESS")
        return {k: ("" if k in hidden else v) for k, v in self.config.env.items() if not k.startswith("ROUTERSTUB_")}

    def local_models(self):
        return [{"Id": model_id, "Name": e["modelName"], "Model": e["modelName"], "ApiType": e["apiType"],
                 "ApiUrl": e["apiUrl"], "Slots": e.get("concurrentSlots", 0), "CapacityPolicy": e.get(
                     "capacityPolicy", "")} for model_id, e in self.models.items()]

    def reload_route(self):
        """POST /config/models/reload as proposed upstream (PR #887), only with ROUTERSTUB_RELOAD=1: a router without
        it answers gin's plain 404, as released routers do."""
        if self.config.env.get("ROUTERSTUB_RELOAD") not in ("1", "true"):
            return []
        return [("POST", r"/config/models/reload", self.reload_models)]

    def reload_models(self, m, q, b):
        """Re-read models-config.json; a file that breaks the schema is refused and the models in force are kept."""
        try:
            models = self.config.load_models()
        except (StartError, OSError) as exc:
            raise Refused(400, f"models config reload failed: {exc}") from None
        added, removed = sorted(set(models) - set(self.models)), sorted(set(self.models) - set(models))
        self.models = models
        print(f"proxy-router stub: models reloaded, {len(models)} configured", flush=True)
        return 200, {"added": added, "removed": removed, "healthSweepQueued": True}

    def allowance(self, m, q, b):
        spender = q.get("spender", [""])[0]
        if not ADDRESS.match(spender):
            raise Refused(400, "Key: 'QuerySpender.Spender' Error:Field validation for 'Spender' failed")
        return 200, {"allowance": str(self.chain.allowance.get(spender.lower(), 0))}

    def approve(self, m, q, b):
        spender, amount = q.get("spender", [""])[0], q.get("amount", [""])[0]
        if not ADDRESS.match(spender):
            raise Refused(400, "Key: 'QueryApprove.QuerySpender.Spender' Error:Field validation failed")
        self.chain.allowance[spender.lower()] = big(amount, "Amount", 1)
        return 200, {"tx": self.chain.tx()}

    def create_provider(self, m, q, b):
        c = self.chain
        if not isinstance(b.get("endpoint"), str) or not b["endpoint"]:
            raise Refused(400, "Key: 'CreateProviderRequest.Endpoint' Error:Field validation for 'Endpoint' "
                               "failed on the 'required' tag")
        stake = big(b.get("stake"), "Stake")
        existing = c.providers.get(c.wallet)
        total = stake + (int(existing["Stake"]) if existing and not existing["IsDeleted"] else 0)
        if total < PROVIDER_MIN_STAKE:
            raise Refused(500, f"failed to send transaction: execution reverted: ProviderStakeTooLow({total}, "
                               f"{PROVIDER_MIN_STAKE})")
        c.spend(stake)
        c.providers[c.wallet] = {"Address": self.config.wallet, "Endpoint": b["endpoint"], "Stake": str(total),
                                 "CreatedAt": str(int(time.time())), "IsDeleted": False}
        return 200, {"provider": c.providers[c.wallet]}

    def delete_provider(self, m, q, b):
        c = self.chain
        provider = c.providers.get(c.wallet)
        if provider is None or provider["IsDeleted"]:
            raise Refused(500, "failed to send transaction: execution reverted: ProviderNotFound()")
        c.mor += int(provider["Stake"])
        provider.update(IsDeleted=True, Stake="0")
        return 200, {"tx": c.tx()}

    def create_model(self, m, q, b):
        c = self.chain
        for key in ("ipfsID", "name", "tags"):
            if not b.get(key):
                raise Refused(400, f"Key: 'CreateModelRequest.{key}' Error:Field validation for '{key}' failed on "
                                   "the 'required' tag")
        base = b.get("id") or hash_id("random", secrets.token_hex(8))
        if not HEX32.match(base) or not HEX32.match(b["ipfsID"]):
            raise Refused(400, "Key: 'CreateModelRequest.ID' Error:Field validation for 'ID' failed on the 'hex32' tag")
        types = [MODEL_TYPE_TAGS[t.lower()] for t in b["tags"] if isinstance(t, str) and t.lower() in MODEL_TYPE_TAGS]
        if not types:
            raise Refused(400, "Model tags must include a supported type tag (chat, embedding, tts, stt)")
        fee, stake = big(b.get("fee"), "Fee"), big(b.get("stake"), "Stake")
        if stake < MODEL_MIN_STAKE:
            raise Refused(500, f"failed to send transaction: execution reverted: ModelStakeTooLow({stake}, "
                               f"{MODEL_MIN_STAKE})")
        model_id = hash_id("model", c.wallet, base.lower())  # the registry derives it from owner + base id
        c.spend(stake)
        c.models[model_id] = {"Id": model_id, "IpfsCID": b["ipfsID"].lower(), "Fee": fee, "Stake": stake,
                              "Owner": self.config.wallet, "Name": b["name"], "Tags": b["tags"],
                              "CreatedAt": int(time.time()), "IsDeleted": False, "ModelType": types[0]}
        return 200, {"model": c.models[model_id]}

    def delete_model(self, m, q, b):
        model = self.chain.models.get(hex_key(m["id"])) if HEX32.match(m["id"]) else None
        if model is None or model["IsDeleted"]:
            raise Refused(500, "failed to send transaction: execution reverted: ModelNotFound()")
        model["IsDeleted"] = True
        return 200, {"tx": self.chain.tx()}

    def create_bid(self, m, q, b):
        c = self.chain
        model_id = b.get("modelID")
        if not isinstance(model_id, str) or not HEX32.match(model_id):
            raise Refused(400, "Key: 'CreateBidRequest.ModelID' Error:Field validation for 'ModelID' failed on the "
                               "'hex32' tag")
        price = big(b.get("pricePerSecond"), "PricePerSecond", 1)
        model = c.models.get(hex_key(model_id))
        if model is None or model["IsDeleted"]:
            raise Refused(500, "failed to send transaction: execution reverted: ModelNotFound()")
        provider = c.providers.get(c.wallet)
        if provider is None or provider["IsDeleted"]:
            raise Refused(500, "failed to send transaction: execution reverted: ProviderNotFound()")
        if price < PRICE_FLOOR:
            raise Refused(500, f"failed to send transaction: execution reverted: MarketplaceBidMinPricePerSecondInvalid"
                               f"() (price {price} < {PRICE_FLOOR} wei/s)")
        c.spend(BID_FEE)
        now = str(int(time.time()))
        for old in c.bids.values():  # one active bid per provider and model: the marketplace replaces it
            if old["Provider"].lower() == c.wallet and hex_key(old["ModelAgentId"]) == hex_key(model_id) and active(old):
                old["DeletedAt"] = now
        bid_id = hash_id("bid", c.wallet, hex_key(model_id), str(c.nonce))
        c.nonce += 1
        c.bids[bid_id] = {"Id": bid_id, "Provider": self.config.wallet, "ModelAgentId": hex_key(model_id),
                          "PricePerSecond": str(price), "Nonce": str(c.nonce), "CreatedAt": now, "DeletedAt": "0"}
        return 200, {"bid": c.bids[bid_id]}

    def get_bid(self, m, q, b):
        bid = self.chain.bids.get(hex_key(m["id"])) if HEX32.match(m["id"]) else None
        if bid is None:
            raise Refused(500, "bid not found")
        return 200, {"bid": bid}

    def delete_bid(self, m, q, b):
        if not HEX32.match(m["id"]):
            raise Refused(400, "Key: 'PathHex32ID.ID' Error:Field validation for 'ID' failed on the 'hex32' tag")
        bid = self.chain.bids.get(hex_key(m["id"]))
        if bid is None or not active(bid) or bid["Provider"].lower() != self.chain.wallet:
            raise Refused(500, "failed to send transaction: execution reverted: MarketplaceActiveBidNotFound()")
        bid["DeletedAt"] = str(int(time.time()))
        return 200, {"tx": self.chain.tx()}

    def _bids(self, q, keep, only_active):
        found = [b for b in self.chain.bids.values() if keep(b) and (active(b) or not only_active)]
        return 200, {"bids": page(found, q, 10)}

    def model_bids(self, m, q, b):
        if not HEX32.match(m["id"]):
            raise Refused(400, "Key: 'PathHex32ID.ID' Error:Field validation for 'ID' failed on the 'hex32' tag")
        return self._bids(q, lambda bid: hex_key(bid["ModelAgentId"]) == hex_key(m["id"]), bool(m["active"]))

    def provider_bids(self, m, q, b):
        if not ADDRESS.match(m["id"]):
            raise Refused(400, "Key: 'PathEthAddrID.ID' Error:Field validation for 'ID' failed on the 'eth_addr' tag")
        return self._bids(q, lambda bid: bid["Provider"].lower() == m["id"].lower(), bool(m["active"]))

    def provider_sessions(self, m, q, b):
        provider = q.get("provider", [""])[0]
        if not ADDRESS.match(provider):
            raise Refused(400, "Key: 'QueryProvider.Provider' Error:Field validation for 'Provider' failed on the "
                               "'required' tag")
        found = [s for s in self.chain.sessions if s["Provider"].lower() == provider.lower()]
        return 200, {"sessions": page(found, q, 10)}

    def claimable(self, m, q, b):
        if not HEX32.match(m["id"]):
            raise Refused(400, "Key: 'PathHex32ID.ID' Error:Field validation for 'ID' failed on the 'hex32' tag")
        return 200, {"balance": str(self.chain.claimable.get(hex_key(m["id"]), 0))}

    def chat(self, m, q, b, headers=None):
        model_id = (headers or {}).get("model_id", "")
        entry = self.models.get(hex_key(model_id)) if HEX32.match(model_id or "") else None
        if entry is None:
            raise Refused(400, f"model not found: {model_id}")
        return forward(entry, b)


def probe(api_url, timeout=0.5):
    """None when apiUrl's host:port accepts TCP, else why not."""
    parts = urlsplit(api_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot connect to {parts.hostname}:{port}: {exc.strerror or exc}"


def forward(entry, body):
    body = dict(body, model=entry["modelName"])
    request = urllib.request.Request(entry["apiUrl"], data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    if entry.get("apiKey"):
        request.add_header("Authorization", f"Bearer {entry['apiKey']}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": f"model backend answered {exc.code}"}
    except (OSError, ValueError) as exc:
        return 502, {"error": f"model backend unreachable: {exc}"}


class Handler(BaseHTTPRequestHandler):
    router = None
    consumer = False  # the PROXY_ADDRESS listener: chat only, no auth
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\n" % (self.address_string(), fmt % args))
        sys.stdout.flush()

    def send(self, status, body, raw=None):
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorised(self):
        header = self.headers.get("Authorization", "")
        if not header:
            return "no basic auth provided"
        try:
            scheme, _, encoded = header.partition(" ")
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return "invalid basic auth provided"
        if scheme.lower() != "basic" or not user or not password:
            return "invalid basic auth provided"
        router = self.router
        if not (hmac.compare_digest(user, router.user) and hmac.compare_digest(password, router.password)):
            return "invalid username or password"
        return None

    def handle_any(self, method):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        router = self.router
        if self.consumer:
            if method == "POST" and url.path == "/v1/chat/completions":
                return self._chat_consumer(raw)
            return self.send(404, None, raw=b"404 page not found")
        degraded, faults = router.config.hooks()
        fault = faults.get(url.path)
        if isinstance(fault, str) and fault.startswith("sleep:"):
            time.sleep(float(fault[6:]))
        elif fault == "malformed":
            return self.send(200, None, raw=b'{"status": "healthy", "trunc')
        elif isinstance(fault, int):
            return self.send(fault, {"error": f"stub fault {fault} on {url.path}"})
        if method == "GET" and url.path == "/healthcheck":
            return self.send(*router.healthcheck())
        for route_method, pattern, handler in router.routes():
            match = re.fullmatch(pattern, url.path)
            if not match or route_method != method:
                continue
            why = self.authorised()
            if why:
                return self.send(401, {"error": why})
            try:
                body = json.loads(raw) if raw else {}
                if not isinstance(body, dict):
                    raise ValueError("a JSON object is required")
            except ValueError as exc:
                return self.send(400, {"error": f"invalid request body: {exc}"})
            try:
                if handler == router.chat:  # outside the chain's lock: a chat may take minutes
                    status, answer = handler(match, query, body, headers=self.headers)
                else:
                    with router.chain.lock:
                        status, answer = handler(match, query, body)
                        router.chain.save()
            except Refused as exc:
                return self.send(exc.status, {"error": exc.message})
            return self.send(status, answer)
        self.send(404, None, raw=b"404 page not found")

    def _chat_consumer(self, raw):
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self.send(400, {"error": "invalid request body"})
        router = self.router
        model_id = self.headers.get("model_id", "")
        entry = router.models.get(hex_key(model_id)) if HEX32.match(model_id) else None
        if entry is None:
            entry = next((e for e in router.models.values() if e["modelName"] == body.get("model")), None)
        if entry is None:
            return self.send(404, {"error": "model not configured on this provider"})
        self.send(*forward(entry, body))

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_DELETE(self):
        self.handle_any("DELETE")


def serve(router, address, consumer):
    handler = type("BoundHandler", (Handler,), {"router": router, "consumer": consumer})
    ThreadingHTTPServer.allow_reuse_address = True
    try:
        server = ThreadingHTTPServer(address, handler)
    except OSError as exc:
        raise StartError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    return server


def main(argv=None):
    parser = argparse.ArgumentParser(description="Morpheus proxy-router stand-in for tests")
    parser.add_argument("--env", default=".env", help="the .env file (default: .env in the working folder)")
    args = parser.parse_args(argv)
    try:
        config = Config(args.env)
        router = Router(config)
        servers = [serve(router, config.web_address, False), serve(router, config.proxy_address, True)]
    except (StartError, OSError, ValueError) as exc:
        print(f"proxy-router stub: refusing to start: {exc}", file=sys.stderr, flush=True)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    print(f"proxy-router stub {config.version} pid {os.getpid()}: admin API on {config.web_address[0]}:"
          f"{config.web_address[1]}, proxy on {config.proxy_address[0]}:{config.proxy_address[1]}, "
          f"{len(router.models)} model(s) configured", flush=True)
    while not stop.wait(0.05):
        pass
    for server in servers:
        server.shutdown()
    print("proxy-router stub: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
