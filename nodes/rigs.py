"""Rig lifecycle as the panel sees it: enrol, rotate the token, remove. Each keeps the rig's broker account in step.

The broker is told at once; if it cannot be reached, the next account sync (panel worker start, then every
minute) creates or corrects the account from the database, which stays the truth.

A broker that cannot keep rigs apart (Redis 6.2: nodes/broker.py, limited mode) serves this machine's rig only,
which scripts/run creates itself: `enrol` (the "Add rig" page) then refuses with EnrolmentRefused.
"""

import logging

from django.conf import settings
from django.db import transaction

from nodes import broker

log = logging.getLogger("morpheus.rigs")


class EnrolmentRefused(Exception):
    """No rig may be added on this panel's broker; the text says why and what to do (shown as a form error)."""


def _broker(action, *args):
    """Run a broker account change; returns None, or why it could not be done now."""
    try:
        action(*args)
        return None
    except Exception as exc:  # redis errors, timeouts, refusals: the sync retries from the database
        log.warning("broker account change for %s not applied now: %s", args[0], exc)
        return str(exc) or type(exc).__name__


def enrol(node):
    """Save a new rig with a fresh token and create its broker account; returns (token, broker problem or None).
    Raises EnrolmentRefused, saving nothing, when the broker serves this machine's rig only (Redis 6.2)."""
    try:
        refusal = broker.remote_rigs_refusal()
    except Exception as exc:  # unreachable now: enrol as before; the account sync makes the account later
        log.warning("could not ask the broker whether it keeps rigs apart: %s", exc)
        refusal = None
    if refusal:
        raise EnrolmentRefused(refusal)
    token = node.set_new_token()
    node.save()
    return token, _broker(broker.ensure_account, node.name, token)


def _local_only():
    """True when the broker cannot keep rigs apart (Redis 6.2): then only this machine's rig gets an account."""
    try:
        return not broker.remote_rigs_supported()
    except Exception:  # unreachable: the account change fails on its own and the sync retries
        return False


def rotate_token(node):
    """A new token: the old broker password stops working and connected clients using it are cut at once."""
    token = node.set_new_token()
    node.save(update_fields=["token"])
    if node.name != settings.LOCAL_RIG and _local_only():
        return token, broker.remote_rigs_refusal()
    return token, _broker(broker.rotate_account, node.name, token)


def remove(node):
    """Delete the rig's rows, then its broker account and every queue key it had."""
    name = node.name
    with transaction.atomic():
        node.delete()
    return _broker(broker.delete_account, name)


def sync_accounts(nodes):
    """Recreate every rig's account from the database (a restarted Redis forgets users it did not save) and drop
    accounts of rigs no longer in it; returns what was done, or why it could not be done now."""
    pairs = [(node.name, node.token) for node in nodes if node.token]
    if _local_only():  # a weaker account is acceptable for this machine's own rig, never for another
        pairs = [(name, token) for name, token in pairs if name == settings.LOCAL_RIG]
    try:
        return broker.sync_accounts(pairs)
    except Exception as exc:  # the broker is down: the next run (a minute later) tries again
        log.warning("broker accounts not synced: %s", exc)
        return {"error": str(exc) or type(exc).__name__}
