"""Rig lifecycle as the panel sees it: enrol, rotate the token, remove. Each keeps the rig's broker account in step.

The broker is told at once; if it cannot be reached, the next account sync (panel worker start, then every
minute) creates or corrects the account from the database, which stays the truth.
"""

import logging

from django.db import transaction

from nodes import broker

log = logging.getLogger("morpheus.rigs")


def _broker(action, *args):
    """Run a broker account change; returns None, or why it could not be done now."""
    try:
        action(*args)
        return None
    except Exception as exc:  # redis errors, timeouts, refusals: the sync retries from the database
        log.warning("broker account change for %s not applied now: %s", args[0], exc)
        return str(exc) or type(exc).__name__


def enrol(node):
    """Save a new rig with a fresh token and create its broker account; returns (token, broker problem or None)."""
    token = node.set_new_token()
    node.save()
    return token, _broker(broker.ensure_account, node.name, token)


def rotate_token(node):
    """A new token: the old broker password stops working and connected clients using it are cut at once."""
    token = node.set_new_token()
    node.save(update_fields=["token"])
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
    try:
        return broker.sync_accounts(pairs)
    except Exception as exc:  # the broker is down: the next run (a minute later) tries again
        log.warning("broker accounts not synced: %s", exc)
        return {"error": str(exc) or type(exc).__name__}
