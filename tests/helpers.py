"""The test kit: pages as text, free ports, rigs in the DB, messages waiting for rigs (opened as the rig would),
reports signed as a rig signs them. Processes and `wait_until` live in tests/harness.py."""

import html
import itertools
import json
from collections import namedtuple

from morpheus_admin.celery import app as celery_app
from morpheus_admin.localredis import free_port  # noqa: F401  (one free-port helper for every test)
from nodes.agent import envelope
from nodes.models import Node

QueuedMessage = namedtuple("QueuedMessage", "task args kwargs expires envelope")


def page(response):
    """A response's HTML as a reader sees the text (entities decoded)."""
    return html.unescape(response.content.decode())


def make_node(name, **fields):
    node = Node(name=name, **fields)
    token = node.set_new_token()
    node.save()
    return node, token


def raw_messages(queue):
    """Every task message waiting on `queue` in this process's memory:// broker (taken off it):
    (headers, args, kwargs)."""
    messages = []
    with celery_app.connection_for_write() as conn:
        waiting = conn.SimpleQueue(queue)
        try:
            while True:
                message = waiting.get(timeout=0.05)
                args, kwargs, _embed = message.payload
                messages.append((message.headers, args, kwargs))
                message.ack()
        except waiting.Empty:
            pass
        finally:
            waiting.close()
    return messages


def queued_messages(queue):
    """Commands waiting on a rig's queue, as that rig's agent would run them: `args` is [operation id] (if any),
    `kwargs` the envelope's arguments with secrets still sealed (open them with `unsealed`)."""
    found = []
    if not queue.startswith("node."):  # the panel's own queue: plain Celery messages
        for headers, args, kwargs in raw_messages(queue):
            found.append(QueuedMessage(headers["task"], args, kwargs, headers.get("expires"), None))
        return found
    node = Node.objects.get(name=queue.removeprefix("node."))
    for headers, _args, kwargs in raw_messages(queue):
        data = envelope.open_command(node.keys, rig=node.name, task=headers["task"], envelope=kwargs["envelope"],
                                     mac=kwargs["mac"])
        args = [] if data["operation"] is None else [data["operation"]]
        found.append(QueuedMessage(headers["task"], args, data["args"], headers.get("expires"), data))
    return found


def unsealed(node, value):
    return envelope.unseal(node.keys, value)


_SEQ = itertools.count(1)


def next_seq():
    """Increasing report numbers across a test run, as one rig's agent sends them."""
    return next(_SEQ)


def signed_report(node_name, token, kind, payload, seq=None, sent_at=None, ack=False):
    """The kwargs of a `panel.report` as the rig's agent sends it (numbered after the previous one unless `seq`)."""
    return envelope.sign_report(envelope.derive_keys(token), rig=node_name, kind=kind, payload=payload,
                                seq=next_seq() if seq is None else seq, now=sent_at, ack=ack)


def report(node_name, token, kind, payload, now=None, seq=None):
    """Apply one report through the panel's ingest, signed with `token`; returns None or the rejection reason."""
    from nodes import ingest

    return ingest.handle_report(**signed_report(node_name, token, kind, payload, seq=seq), now=now)


def envelope_json(kwargs):
    return json.loads(kwargs["envelope"])
