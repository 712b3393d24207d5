"""How a rig agent talks to the broker: its own Redis ACL account and the Celery settings that account allows.

The panel gives every rig a Redis user `rig-<name>` (nodes/broker.py) that may read and write only its own
queue keys, may only *write* the `panel` queue and only *read* the bindings it needs. Celery and kombu
do more than that by default (remote control, events, a shared `unacked` hash, a `SADD` of the panel
queue's binding on every publish), so the agent must run with exactly these settings:

    app.conf.update(agent_celery_config(broker_url, node, token))
    app.send_task(REPORT_TASK, kwargs=..., queue=report_queue())       # never queue="panel"
    app.worker_main(["worker", "--queues", node_queue(node), *WORKER_ARGS, ...])

`broker_url` is the address the panel printed at enrolment (no credentials in it); the agent adds its
own user name and the password derived from its token. No Django here: this runs on the GPU host.

TLS (`rediss://`): certificates are verified by default. Options may ride on the URL's query
(`ssl_cert_reqs=required|optional|none`, `ssl_ca_certs=/path/ca.pem`, `ssl_certfile=`, `ssl_keyfile=`,
`ssl_check_hostname=true|false`) or come from the environment (`MORPHEUS_BROKER_CA_FILE` = CA bundle, when
the URL names none). They are moved from the URL into Celery's `broker_use_ssl`.
"""

import os
import ssl
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from kombu import Exchange, Queue

from . import protocol
from .envelope import derive_keys

# Celery's own default (1 hour); kept explicit so the transport options are complete in one place.
VISIBILITY_TIMEOUT = 3600

# Arguments the agent's `worker_main` must pass besides --queues/--hostname/--pool/--concurrency/--loglevel:
# gossip, mingle and heartbeats are broadcast over pub/sub, which a rig account may not use.
WORKER_ARGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")

CA_FILE_ENV = "MORPHEUS_BROKER_CA_FILE"
_SSL_KEYS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "cert_required": ssl.CERT_REQUIRED,
              "optional": ssl.CERT_OPTIONAL, "cert_optional": ssl.CERT_OPTIONAL,
              "none": ssl.CERT_NONE, "cert_none": ssl.CERT_NONE}


class BrokerURLError(ValueError):
    """The broker URL given to the agent cannot be used as is (the text says why, and holds no secret)."""


def without_credentials(url):
    """`url` with any user name and password removed (what may be printed, logged or given to a rig)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _split_ssl_options(parts):
    """(query without the ssl_* keys, the ssl options found there)."""
    kept, found = [], {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _SSL_KEYS:
            found[key] = value
        else:
            kept.append((key, value))
    return urlencode(kept), found


def broker_use_ssl(found, environ=None):
    """redis-py SSL options (what Celery's `broker_use_ssl` takes for Redis) from ssl_* URL parameters."""
    env = os.environ if environ is None else environ
    reqs = found.get("ssl_cert_reqs", "required").strip().lower()
    if reqs not in _CERT_REQS:
        raise BrokerURLError(f"ssl_cert_reqs={reqs!r} in the broker URL: use required, optional or none")
    options = {"ssl_cert_reqs": _CERT_REQS[reqs]}
    ca_file = found.get("ssl_ca_certs") or env.get(CA_FILE_ENV) or None
    if ca_file:
        options["ssl_ca_certs"] = ca_file
    for key in ("ssl_certfile", "ssl_keyfile"):
        if found.get(key):
            options[key] = found[key]
    if "ssl_check_hostname" in found:
        options["ssl_check_hostname"] = found["ssl_check_hostname"].strip().lower() in ("1", "true", "yes", "on")
    return options


def rig_broker_url(broker_url, node, token):
    """The broker URL with the rig's own user name and derived password in it (URL-quoted)."""
    parts = urlsplit(broker_url)
    if parts.scheme not in ("redis", "rediss", "valkey", "valkeys", "unix"):
        raise BrokerURLError("the broker URL must be a redis://, rediss:// or unix:// URL")
    if "@" in parts.netloc:
        raise BrokerURLError(
            "the broker URL must not hold a user name or password: give the address printed at enrolment "
            "(the agent logs in with its own account, derived from its token)"
        )
    user = quote(protocol.broker_username(node), safe="")
    password = quote(derive_keys(token).broker_password, safe="")
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc}"))


def report_queue():
    """Where the agent publishes its reports. An explicit exchange and `no_declare=True`: a publish then only
    reads `_kombu.binding.panel` and pushes onto `panel`; it never runs SADD on the binding (a rig may not)
    and never falls back to the rig's own queue."""
    return Queue(protocol.PANEL_QUEUE, Exchange(protocol.PANEL_QUEUE, type="direct"),
                 routing_key=protocol.PANEL_QUEUE, no_declare=True)


def rig_queue(node):
    """The rig's own queue. The panel declares its binding (the rig may only read it), hence no_declare."""
    name = protocol.node_queue(node)
    return Queue(name, Exchange(name, type="direct"), routing_key=name, no_declare=True)


def tls_settings(broker_url, environ=None):
    """(the URL without its ssl_* parameters, Celery's `broker_use_ssl` for it or None). Certificates are verified
    unless the URL says otherwise: for a bare rediss:// URL kombu alone would skip the check, with only a warning.
    The panel uses this for its own connections too (settings.py)."""
    parts = urlsplit(broker_url)
    query, found = _split_ssl_options(parts)
    use_ssl = None
    if parts.scheme in ("rediss", "valkeys"):
        use_ssl = broker_use_ssl(found, environ)
    elif found:
        raise BrokerURLError("ssl_* options in the broker URL need a rediss:// URL")
    return urlunsplit(parts._replace(query=query)), use_ssl


def agent_celery_config(broker_url, node, token, environ=None):
    """Settings for `app.conf.update(...)` that a rig's ACL account allows (see the module docstring)."""
    plain_url, use_ssl = tls_settings(broker_url, environ)
    url = rig_broker_url(plain_url, node, token)
    queue = rig_queue(node)
    config = {
        "broker_url": url,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT, **protocol.unacked_keys(node)},
        # The report queue is listed too, so even `queue="panel"` resolves to it (explicit exchange, no_declare);
        # a worker consumes only what its --queues names, so listing it never makes the agent read it.
        "task_queues": [queue, report_queue()],
        "task_default_queue": queue.name,
        "task_create_missing_queues": False,
        # Remote control (pidbox), events, gossip, mingle and heartbeats all use pub/sub: a rig may not.
        "worker_enable_remote_control": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }
    if use_ssl is not None:
        config["broker_use_ssl"] = use_ssl
    return config
