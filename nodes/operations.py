"""Creating operations: one row per piece of rig work, sent to the rig's queue after commit."""

from functools import partial

from django.conf import settings
from django.db import transaction

from morpheus_admin.celery import app
from nodes.agent import protocol
from nodes.models import Operation

AGENT_TASKS = {
    Operation.REFRESH_HARDWARE: protocol.AGENT_REFRESH_HARDWARE,
    Operation.PING: protocol.AGENT_PING,
    Operation.DOWNLOAD_MODEL: protocol.AGENT_DOWNLOAD_MODEL,
    Operation.SCAN_MODELS: protocol.AGENT_SCAN_MODELS,
    Operation.DELETE_MODEL_FILE: protocol.AGENT_DELETE_MODEL_FILE,
    Operation.BUILD_LLAMA: protocol.AGENT_BUILD_LLAMA,
    Operation.ADOPT_BUILD: protocol.AGENT_ADOPT_BUILD,
    Operation.DELETE_BUILD: protocol.AGENT_DELETE_BUILD,
    Operation.LAUNCH: protocol.AGENT_APPLY_DEPLOYMENT,
    Operation.STOP: protocol.AGENT_APPLY_DEPLOYMENT,
    Operation.RESTART: protocol.AGENT_APPLY_DEPLOYMENT,
}


def _send(operation_id, task_name, queue, payload=None):
    # A message nobody consumes waits forever; let it expire and expire_operations fail the row.
    app.send_task(task_name, args=[operation_id], kwargs=payload or {}, queue=queue,
                  expires=settings.OPERATION_PICKUP_TIMEOUT)


def start_operation(node, kind, user=None, target="", payload=None):
    """`payload` travels to the agent only (it may hold a Hub token): it is not stored on the row."""
    operation = Operation.objects.create(node=node, kind=kind, requested_by=user, target=target)
    transaction.on_commit(partial(_send, operation.pk, AGENT_TASKS[kind], node.queue, payload))
    return operation


def cancel_operation(operation, now=None):
    """A queued operation is cancelled at once; a running one is asked to stop and reports when it has."""
    if operation.is_terminal:
        return False
    if operation.status == Operation.QUEUED:
        operation.apply_report(Operation.CANCELLED, "cancelled before the rig started it", now=now)
    queue = operation.node.queue
    # No expiry: a cancel must reach the agent even if it is busy for a while.
    transaction.on_commit(lambda: app.send_task(protocol.AGENT_CANCEL, args=[operation.pk], queue=queue))
    return True
