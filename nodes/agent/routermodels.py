"""Published deployments on the rig's proxy-router: what the report says of them, the proxy port check, and applying a
new models list without a restart where the router can reload it. Plain Python, no Django.

A restart cuts every open session (MORPHEUS.md), so a change to the models list alone goes through the router's
reload endpoint (`POST /config/models/reload`, proposed upstream as PR #887) when it has one; a 404 there means this
router cannot, and the caller falls back to a restart the provider agreed to, or changes nothing.
"""

import socket

from .router import managed_values
from .routeradmin import RouterError

# What the report shows instead of an entry's apiKey: that there is one, never what it is.
KEY_MARK = "set"


def reported_models(models):
    """The models-config entries for the panel, each apiKey replaced by KEY_MARK."""
    return [{**entry, "apiKey": KEY_MARK} if isinstance(entry, dict) and "apiKey" in entry else entry
            for entry in models or []]


def proxy_listening(folder, timeout=0.5):
    """Whether the router's consumer port (PROXY_ADDRESS) accepts TCP on this rig; None when none is configured."""
    address = managed_values(folder / ".env").get("PROXY_ADDRESS")
    host, sep, port = (address or "").rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host.strip("[]")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def models_only(old, new):
    """True when `new` differs from `old` in its models list alone (everything else the router reads is the same)."""
    if old is None:
        return False
    rest = [{k: v for k, v in config.items() if k != "models"} for config in (old, new)]
    return rest[0] == rest[1] and old.get("models") != new.get("models")


def reload_models(client):
    """Ask the running router to re-read models-config.json: ("reloaded", answer), ("unsupported", reason) when it
    has no reload endpoint, or ("failed", reason)."""
    try:
        return "reloaded", client.reload_models()
    except RouterError as exc:
        return ("unsupported" if exc.kind == "not_found" else "failed"), exc.reason


def reload_supported(known, version):
    """What the report says of the reload endpoint: True or False once tried on this router version, else None."""
    if not known or version is None or known.get("version") != version:
        return None
    return known["supported"]


def report_fields(folder, known, version):
    """This part's fields of the `router` report (protocol.ROUTER_FIELDS)."""
    return {"proxy_listening": proxy_listening(folder), "reload_supported": reload_supported(known, version)}
