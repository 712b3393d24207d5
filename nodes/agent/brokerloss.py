"""Keep a worker alive when its broker connection drops while a task runs (kombu's Redis transport).

On connection loss Celery collects the consumer connection: kombu closes its channels, then detaches the transport
(`transport.client = None`). A channel whose close failed before it requeued its unacked messages (a BRPOP still in
flight when another channel saw the loss first, so the close loop stopped early) is closed again by
`connection.close()`; its `QoS.restore_unacked` needs a new pool, and `Channel._connparams` then reads `.hostname` of
None (kombu/transport/redis.py:1959): an AttributeError, not a connection error, so the worker dies.

`install()` makes `_connparams` use the parameters the channel had before the detach, so that late restore (or a
late ack) goes on as kombu meant: it requeues the message if the broker is back, else fails as a ConnectionError.
"""

import logging
from types import SimpleNamespace

log = logging.getLogger("morpheus.agent")

# Where the bug is known: kombu 5.7.0 (look again before widening the range to a newer kombu).
AFFECTED = ((5, 0), (5, 8))
_KEPT = "_morpheus_conninfo"
_MARK = "_morpheus_brokerloss"


def _version(text):
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


class _Detached:
    """The channel as `_connparams` reads it, with the connection it had before the transport was detached."""

    def __init__(self, channel, conninfo, default_port):
        self._channel = channel
        self.connection = SimpleNamespace(client=conninfo, default_port=default_port)

    def __getattr__(self, name):
        return getattr(self._channel, name)


def install():
    """Patch kombu's Redis channel, once. Returns whether the patch is in place (a warning says why not)."""
    try:
        import kombu
        from kombu.transport import redis as kombu_redis
        from redis.exceptions import ConnectionError as RedisConnectionError
    except ImportError as exc:
        log.warning("broker-loss fix not applied: %s", exc)
        return False
    version = _version(kombu.__version__)
    if not AFFECTED[0] <= version < AFFECTED[1]:
        log.warning("broker-loss fix not applied: it is for kombu >= %s, < %s and this is %s; check whether a lost "
                    "broker connection still kills the worker", *(".".join(map(str, v)) for v in AFFECTED),
                    kombu.__version__)
        return False
    channel_class = getattr(kombu_redis, "Channel", None)
    original = getattr(channel_class, "_connparams", None)
    if original is None:
        log.warning("broker-loss fix not applied: kombu %s has no redis Channel._connparams", kombu.__version__)
        return False
    if getattr(original, _MARK, False):
        return True

    def _connparams(self, asynchronous=False):
        transport = self.connection
        if transport is not None and transport.client is not None:
            self.__dict__[_KEPT] = (transport.client, transport.default_port)
            return original(self, asynchronous)
        kept = self.__dict__.get(_KEPT)
        if kept is None:
            raise RedisConnectionError("this broker channel is closed")
        return original(_Detached(self, *kept), asynchronous)

    setattr(_connparams, _MARK, True)
    _connparams.__wrapped__ = original
    channel_class._connparams = _connparams
    return True
