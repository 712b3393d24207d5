"""The panel's side of the signed channel: every command to a rig leaves through `send_command`.

It seals the secret fields (protocol.SECRET_FIELDS) for that rig, signs the envelope with the rig's key, and puts
the message on the rig's queue with nothing readable in Celery's own headers (`argsrepr`, `kwargsrepr`).
"""

from datetime import datetime, timedelta, timezone

from django.conf import settings

from morpheus_admin.celery import app
from nodes.agent import envelope, protocol


class NoRigKey(Exception):
    """A rig enrolled before rigs had keys: it must get a new token before it can be sent anything."""

    def __init__(self, rig):
        self.rig = rig
        super().__init__(f"rig {rig} has no key yet: rotate its token and restart its agent")


def seal_secrets(keys, value):
    if isinstance(value, dict):
        return {k: envelope.seal(keys, v) if k in protocol.SECRET_FIELDS and isinstance(v, str) and v
                else seal_secrets(keys, v) for k, v in value.items()}
    if isinstance(value, list):
        return [seal_secrets(keys, v) for v in value]
    return value


def signed_command(node, task, args=None, operation=None, ttl=None):
    """The kwargs of the message for `task` on `node`: {"envelope", "mac"}."""
    keys = node.keys
    if keys is None:
        raise NoRigKey(node.name)
    ttl = settings.OPERATION_PICKUP_TIMEOUT if ttl is None else ttl
    return envelope.sign_command(keys, task=task, rig=node.name, args=seal_secrets(keys, args or {}),
                                 operation=operation, ttl=ttl, rig_clock_offset=node.clock_offset)


def send_command(node, task, args=None, operation=None, ttl=None):
    """Sign and send; the broker drops the message after `ttl` seconds (default: the pickup timeout)."""
    ttl = settings.OPERATION_PICKUP_TIMEOUT if ttl is None else ttl
    kwargs = signed_command(node, task, args, operation, ttl)
    # Celery checks `expires` on the rig's clock: a rig minutes fast would drop every message, so its lead is added
    # (the envelope's own expiry, judged on the panel's clock, stays exact).
    expires = datetime.now(timezone.utc) + timedelta(seconds=ttl + max(0.0, node.clock_offset or 0.0))
    app.send_task(task, kwargs=kwargs, queue=node.queue, expires=expires, argsrepr="()",
                  kwargsrepr=f"<signed for rig {node.name}>")
