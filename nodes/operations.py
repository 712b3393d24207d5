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
}


def _send(operation_id, task_name, queue):
    # A message nobody consumes waits forever; let it expire and expire_operations fail the row.
    app.send_task(task_name, args=[operation_id], queue=queue, expires=settings.OPERATION_PICKUP_TIMEOUT)


def start_operation(node, kind, user=None, target=""):
    operation = Operation.objects.create(node=node, kind=kind, requested_by=user, target=target)
    transaction.on_commit(partial(_send, operation.pk, AGENT_TASKS[kind], node.queue))
    return operation
