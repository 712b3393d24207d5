"""The proxy-router's admin API, spoken by the agent on loopback. Plain Python, no Django.

The credential is the router's own cookie file (`admin:<password>`), read on every call (the router writes it at
its first start) and never returned, logged or put in an error. Every failure is one RouterError whose `kind` a
page can show plainly: down, timeout, unauthorized, forbidden, not_found, rate_limited, degraded, malformed,
too_large, refused (the router or the chain said no, with its reason), and outcome_unknown (a transaction sent
but not answered: it may be on chain, so read again before retrying). Values are checked here before any call
(InvalidValue): a refused value never costs a transaction, and a bid never burns its 0.3 MOR fee on a price the
chain will reject. Amounts are int wei both ways, never floats.
"""

import base64
import http.client
import ipaddress
import json
import re
import socket
import urllib.error
import urllib.request
from decimal import Decimal
from urllib.parse import quote, urlencode

from .validation import InvalidValue

MOR = 10**18
PRICE_FLOOR = 10_000_000_000  # wei per second
PROVIDER_MIN_STAKE = 2 * MOR // 10
MODEL_MIN_STAKE = MOR // 10
BID_FEE = 3 * MOR // 10  # burnt by every bid posted
MODEL_ID_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                         r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$")
MODEL_TAGS = ("chat", "embedding", "tts", "stt")  # the router refuses a model without one of these


class RouterError(Exception):
    def __init__(self, kind, reason, status=None):
        super().__init__(reason)
        self.kind, self.reason, self.status = kind, reason, status


# --- values checked on the rig -------------------------------------------------------------------------------------
def model_id(value):
    if not isinstance(value, str) or not MODEL_ID_RE.match(value):
        raise InvalidValue(f"{value!r} is not a model id (0x and 64 hex digits)")
    return value.lower()


def address(value):
    if not isinstance(value, str) or not ADDRESS_RE.match(value):
        raise InvalidValue(f"{value!r} is not a wallet address (0x and 40 hex digits)")
    return value


def wei_amount(value, minimum=0, what="amount"):
    """An exact amount in wei: an int (or a string of digits), never a float or a bool."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidValue(f"{what} must be a whole number of wei, not {value!r}")
    if value < minimum:
        raise InvalidValue(f"{what} must be at least {value_text(minimum)}, not {value_text(value)}")
    return value


def value_text(wei):
    """Wei in words for a message: MOR with every digit kept (10**18 wei = 1 MOR) and the exact wei."""
    whole, frac = divmod(wei, MOR)
    mor = f"{whole}.{frac:018d}".rstrip("0").rstrip(".")
    return f"{mor} MOR ({wei} wei)"


def price_per_second(value):
    return wei_amount(value, PRICE_FLOOR, "the price per second")


def endpoint(value):
    """host:port the way the marketplace lists a provider: no scheme, no path, a port."""
    if not isinstance(value, str) or "://" in value or "/" in value or any(c.isspace() for c in value):
        raise InvalidValue(f"{value!r} is not host:port (no scheme, no path), e.g. rig.example.com:3333")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidValue(f"{value!r} has no port: write host:port, e.g. rig.example.com:3333")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        if not HOSTNAME_RE.match(host):
            raise InvalidValue(f"{host!r} is not a host name or IP address") from None
    return value


def loopback_url(web_address):
    """http://127.0.0.1:PORT for the router's WEB_ADDRESS: the agent reaches the admin API on this host only."""
    host, sep, port = (web_address or "").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{web_address!r} is not host:port")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "localhost"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the admin API must be reached on loopback, not {host}")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# --- what the router answers, in the panel's terms ----------------------------------------------------------------
def _wei(value, field):
    """A big number from the router: a JSON integer (model Fee/Stake) or a string of digits (provider, bid)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise RouterError("malformed", f"the router sent {field} as {value!r}, not a whole number of wei")


def _field(data, key, what):
    if not isinstance(data, dict) or key not in data:
        raise RouterError("malformed", f"the router's {what} has no {key}")
    return data[key]


def provider_record(data):
    return {"address": _field(data, "Address", "provider"), "endpoint": _field(data, "Endpoint", "provider"),
            "stake": _wei(_field(data, "Stake", "provider"), "a provider's Stake"),
            "created_at": _wei(data.get("CreatedAt", 0), "a provider's CreatedAt"),
            "is_deleted": bool(data.get("IsDeleted"))}


def model_record(data):
    return {"id": _field(data, "Id", "model"), "name": _field(data, "Name", "model"),
            "fee": _wei(_field(data, "Fee", "model"), "a model's Fee"),
            "stake": _wei(_field(data, "Stake", "model"), "a model's Stake"),
            "owner": data.get("Owner"), "ipfs_cid": data.get("IpfsCID"), "tags": list(data.get("Tags") or []),
            "created_at": _wei(data.get("CreatedAt", 0), "a model's CreatedAt"),
            "is_deleted": bool(data.get("IsDeleted")), "model_type": data.get("ModelType")}


def bid_record(data):
    deleted = _wei(data.get("DeletedAt", 0), "a bid's DeletedAt")
    return {"id": _field(data, "Id", "bid"), "provider": _field(data, "Provider", "bid"),
            "model_id": _field(data, "ModelAgentId", "bid"),
            "price_per_second": _wei(_field(data, "PricePerSecond", "bid"), "a bid's PricePerSecond"),
            "nonce": _wei(data.get("Nonce", 0), "a bid's Nonce"),
            "created_at": _wei(data.get("CreatedAt", 0), "a bid's CreatedAt"), "deleted_at": deleted,
            "active": deleted == 0}


def session_record(data):
    amounts = ("Stake", "PricePerSecond", "ProviderWithdrawnAmount", "OpenedAt", "EndsAt", "ClosedAt")
    record = {"id": _field(data, "Id", "session"), "user": data.get("User"), "provider": data.get("Provider"),
              "model_id": data.get("ModelAgentId"), "bid_id": data.get("BidID")}
    for key in amounts:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
        record[snake] = _wei(data.get(key) or 0, f"a session's {key}")
    record["open"] = record["closed_at"] == 0
    return record


def price_summary(bids, exclude=None):
    """Lowest and median price per second of the active bids (a provider's own left out with `exclude`), in wei;
    the median of an even count is the lower middle one, so it is always a price someone actually asks."""
    prices = sorted(b["price_per_second"] for b in bids
                    if b.get("active", True) and (exclude is None or b["provider"].lower() != exclude.lower()))
    if not prices:
        return {"count": 0, "lowest": None, "median": None}
    return {"count": len(prices), "lowest": prices[0], "median": prices[(len(prices) - 1) // 2]}


def _list(body, key, what):
    items = _field(body, key, what)
    if items is None:
        return []
    if not isinstance(items, list):
        raise RouterError("malformed", f"the router's {what} is not a list")
    return items


# --- the client ----------------------------------------------------------------------------------------------------
class AdminClient:
    def __init__(self, web_address, cookie_path, timeout=5.0, tx_timeout=120.0, max_bytes=2 * 1024 * 1024):
        self.base = loopback_url(web_address)
        # Reads are quick; a transaction is answered only once it is mined, which can take a while on BASE.
        self.cookie_path, self.timeout, self.tx_timeout, self.max_bytes = cookie_path, timeout, tx_timeout, max_bytes
        # Loopback only: never through an http_proxy from the agent's environment.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _credential(self):
        try:
            line = open(self.cookie_path, encoding="utf-8").read().strip()
        except OSError:
            raise RouterError("unauthorized", "the router's cookie file is missing: it writes it when it first "
                                              "starts") from None
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise RouterError("unauthorized", "the router's cookie file is not user:password")
        return user, password

    def call(self, method, path, query=None, body=None, auth=True, ok=(200,)):
        """(status, JSON body) of one admin API call, or RouterError."""
        url = self.base + path + (f"?{urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        secret = None
        if auth:
            user, secret = self._credential()
            token = base64.b64encode(f"{user}:{secret}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        what = f"{method} {path}"
        write = method != "GET"
        timeout = self.tx_timeout if write else self.timeout
        try:
            try:
                with self.opener.open(request, timeout=timeout) as response:
                    status, raw = response.status, response.read(self.max_bytes + 1)
            except urllib.error.HTTPError as exc:
                status, raw = exc.code, exc.read(self.max_bytes + 1)
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):  # nothing was sent
                raise RouterError("down", f"the router is not answering on {self.base} (connection refused)") \
                    from None
            self._lost(what, write, timeout, exc.reason)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            self._lost(what, write, timeout, exc)
        return self._answer(what, status, raw, ok, secret)

    def _lost(self, what, write, timeout, reason):
        """No answer after the request went out. For a transaction that means its outcome is unknown: it may be on
        chain already, so the caller reads the chain again before trying twice (a second bid burns a second fee)."""
        timed_out = isinstance(reason, (socket.timeout, TimeoutError))
        lost = f"no answer within {timeout:g} s" if timed_out else f"the connection broke ({reason})"
        if write:
            raise RouterError("outcome_unknown", f"{what}: {lost}; the transaction may still go through, so read "
                                                 "the chain again before retrying") from None
        if timed_out:
            raise RouterError("timeout", f"the router did not answer {what} within {timeout:g} s") from None
        raise RouterError("down", f"the router broke off {what}: {reason}") from None

    def _answer(self, what, status, raw, ok, secret):
        if len(raw) > self.max_bytes:
            raise RouterError("too_large", f"the router's answer to {what} is over {self.max_bytes} bytes", status)
        try:
            body = json.loads(raw, parse_float=Decimal) if raw else None
        except ValueError:
            body = None
            if status in ok:
                raise RouterError("malformed", f"the router's answer to {what} is not valid JSON", status) from None
        said = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else ""
        said = said[:300]
        if secret:
            said = said.replace(secret, "***")
        if status in ok:
            return status, body
        kinds = {401: ("unauthorized", "the router refused the credentials in its cookie file"),
                 403: ("forbidden", "the router's user may not call this"),
                 404: ("not_found", f"the router has no {what}"),
                 429: ("rate_limited", "the router is rate-limited (429); try again in a moment"),
                 503: ("degraded", "the router reports itself degraded (503)")}
        kind, reason = kinds.get(status, ("refused", f"the router answered {status} to {what}"))
        raise RouterError(kind, f"{reason}: {said}" if said else reason, status)

    # -- reads
    def healthcheck(self):
        """/healthcheck's body (no credential needed): status healthy or degraded (a 503 is an answer here)."""
        _status, body = self.call("GET", "/healthcheck", auth=False, ok=(200, 503))
        if not isinstance(body, dict) or body.get("status") not in ("healthy", "degraded"):
            raise RouterError("malformed", "the router's /healthcheck has no status")
        return {"status": body["status"], "version": body.get("version"), "uptime": body.get("uptime"),
                "components": body.get("components") or {}, "models": body.get("models") or {}}

    def config(self):
        """Version, commit, wallet and chain id. The router's own Config block stays on the rig."""
        _s, body = self.call("GET", "/config")
        derived = _field(body, "DerivedConfig", "config")
        return {"version": _field(body, "Version", "config"), "commit": body.get("Commit"),
                "wallet": _field(derived, "WalletAddress", "config"),
                "chain_id": _wei(_field(derived, "ChainID", "config"), "ChainID")}

    def wallet(self):
        return _field(self.call("GET", "/wallet")[1], "address", "wallet")

    def balance(self):
        body = self.call("GET", "/blockchain/balance")[1]
        return {"mor": _wei(_field(body, "mor", "balance"), "the MOR balance"),
                "eth": _wei(_field(body, "eth", "balance"), "the ETH balance")}

    def allowance(self, spender):
        body = self.call("GET", "/blockchain/allowance", {"spender": address(spender)})[1]
        return _wei(_field(body, "allowance", "allowance"), "the allowance")

    def local_models(self):
        body = self.call("GET", "/v1/models")[1]
        if not isinstance(body, list):
            raise RouterError("malformed", "the router's /v1/models is not a list")
        return [{"id": _field(m, "Id", "local model").lower(), "name": m.get("Name"), "model": m.get("Model"),
                 "api_type": m.get("ApiType"), "api_url": m.get("ApiUrl"), "slots": m.get("Slots"),
                 "capacity_policy": m.get("CapacityPolicy")} for m in body]

    def providers(self):
        return [provider_record(p) for p in _list(self.call("GET", "/blockchain/providers")[1], "providers",
                                                  "provider list")]

    def models(self):
        return [model_record(m) for m in _list(self.call("GET", "/blockchain/models")[1], "models", "model list")]

    def provider_bids(self, provider, active=True, limit=255):
        path = f"/blockchain/providers/{address(provider)}/bids" + ("/active" if active else "")
        return [bid_record(b) for b in _list(self.call("GET", path, {"limit": limit})[1], "bids", "bid list")]

    def model_bids(self, model, active=True, limit=255):
        path = f"/blockchain/models/{model_id(model)}/bids" + ("/active" if active else "")
        return [bid_record(b) for b in _list(self.call("GET", path, {"limit": limit})[1], "bids", "bid list")]

    def provider_sessions(self, provider, limit=255, order="asc"):
        """The provider's sessions; order "desc" gives the newest first (a busy provider has more than `limit`)."""
        query = {"provider": address(provider), "limit": limit, "order": "desc" if order == "desc" else "asc"}
        body = self.call("GET", "/blockchain/sessions/provider", query)[1]
        return [session_record(s) for s in _list(body, "sessions", "session list")]

    def claimable_balance(self, session_id):
        path = f"/proxy/sessions/{quote(model_id(session_id))}/providerClaimableBalance"
        return _wei(_field(self.call("GET", path)[1], "balance", "claimable balance"), "the claimable balance")

    # -- on-chain actions (each one a transaction; checked here first)
    def approve(self, spender, amount):
        query = {"spender": address(spender), "amount": wei_amount(amount, 1, "the allowance")}
        return _field(self.call("POST", "/blockchain/approve", query)[1], "tx", "approval")

    def register_provider(self, provider_endpoint, stake):
        body = {"endpoint": endpoint(provider_endpoint),
                "stake": str(wei_amount(stake, PROVIDER_MIN_STAKE, "the provider stake"))}
        return provider_record(_field(self.call("POST", "/blockchain/providers", body=body)[1], "provider",
                                      "provider"))

    def register_model(self, name, stake, fee=0, ipfs_id="0x" + "0" * 64, base_id=None, tags=("chat",)):
        """Register a model; the id to keep is the returned one (the registry derives it from owner + base id)."""
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise InvalidValue("the model name must be 1 to 64 characters")
        tags = list(tags)
        if not tags or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in tags) or \
                not any(t.lower() in MODEL_TAGS for t in tags):
            raise InvalidValue(f"tags must include one of {', '.join(MODEL_TAGS)}")
        body = {"ipfsID": model_id(ipfs_id), "fee": str(wei_amount(fee, 0, "the model fee")),
                "stake": str(wei_amount(stake, MODEL_MIN_STAKE, "the model stake")), "name": name, "tags": tags}
        if base_id is not None:
            body["id"] = model_id(base_id)
        return model_record(_field(self.call("POST", "/blockchain/models", body=body)[1], "model", "model"))

    def post_bid(self, model, price):
        """Post a bid (burns the 0.3 MOR bid fee; a bid already there for the model is replaced)."""
        body = {"modelID": model_id(model), "pricePerSecond": str(price_per_second(price))}
        return bid_record(_field(self.call("POST", "/blockchain/bids", body=body)[1], "bid", "bid"))

    def delete_bid(self, bid_id):
        return _field(self.call("DELETE", f"/blockchain/bids/{model_id(bid_id)}")[1], "tx", "bid deletion")

    def delete_model(self, model):
        return _field(self.call("DELETE", f"/blockchain/models/{model_id(model)}")[1], "tx", "model deletion")

    def reload_models(self):
        """Have the router re-read models-config.json without a restart (proposed upstream, PR #887): the ids added
        and removed. RouterError not_found when this router has no such endpoint (then only a restart applies it)."""
        body = self.call("POST", "/config/models/reload")[1]
        added, removed = _list(body, "added", "reload answer"), _list(body, "removed", "reload answer")
        if not all(isinstance(i, str) for i in added + removed):
            raise RouterError("malformed", "the router's reload answer lists something that is not a model id")
        return {"added": added, "removed": removed, "health_sweep_queued": bool(body.get("healthSweepQueued"))}

    def delete_provider(self, provider):
        return _field(self.call("DELETE", f"/blockchain/providers/{address(provider)}")[1], "tx", "provider deletion")
