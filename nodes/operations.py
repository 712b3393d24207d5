"""Creating operations: one row per piece of rig work, sent to the rig's queue after commit."""

from functools import partial

from django.conf import settings
from django.db import transaction

from audit.log import client_address, current_request
from nodes.agent import protocol
from nodes.channel import NoRigKey, send_command
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
    Operation.BENCHMARK: protocol.AGENT_BENCHMARK_DEPLOYMENT,
    Operation.CHAT: protocol.AGENT_CHAT_DEPLOYMENT,
    Operation.ROUTER_APPLY: protocol.AGENT_ROUTER_APPLY,
    Operation.ROUTER_REFRESH: protocol.AGENT_ROUTER_REFRESH,
    Operation.ROUTER_CHAIN: protocol.AGENT_ROUTER_CHAIN,
    Operation.ROUTER_INSTALL: protocol.AGENT_ROUTER_INSTALL,
}


# A cancel must reach the agent even if it is busy for a while.
CANCEL_TTL = 24 * 3600


def start_operation(node, kind, user=None, target="", payload=None):
    """`payload` travels to the agent only, its secrets sealed for that rig: it is not stored on the row.

    A message nobody consumes expires after the pickup timeout, and expire_operations fails the row.
    """
    if node.keys is None:  # enrolled before rigs had keys: nothing can be signed for it; the caller's transaction
        raise NoRigKey(node.name)  # rolls back (nodes/middleware.py tells the provider)
    request = current_request.get()  # the web or API request asking, if any (audit.middleware)
    via = getattr(request, "audit_via", "web") if request is not None else "system"
    operation = Operation.objects.create(node=node, kind=kind, requested_by=user, target=target,
                                         requested_from=client_address(request), requested_via=via)
    transaction.on_commit(partial(send_command, node, AGENT_TASKS[kind], payload, operation=operation.pk,
                                  ttl=settings.OPERATION_PICKUP_TIMEOUT))
    return operation


def cancel_operation(operation, now=None):
    """A queued operation is cancelled at once; a running one is asked to stop and reports when it has."""
    if operation.is_terminal:
        return False
    if operation.status == Operation.QUEUED:
        operation.apply_report(Operation.CANCELLED, "cancelled before the rig started it", now=now)
    if operation.node.keys is not None:
        transaction.on_commit(partial(send_command, operation.node, protocol.AGENT_CANCEL, operation=operation.pk,
                                      ttl=CANCEL_TTL))
    return True
