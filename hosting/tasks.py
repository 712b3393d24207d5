from celery import shared_task

from hosting.services import desired_specs
from nodes.agent import protocol
from nodes.channel import NoRigKey, send_command
from nodes.models import Node


@shared_task(name="panel.reconcile_deployments")
def reconcile_deployments(interval=60):
    """Remind every online rig of the deployments it should hold, so a lost message heals by itself.

    Sent only to online rigs and with `expires`, so nothing piles up in a dead rig's queue.
    """
    sent = 0
    for node in Node.objects.filter(deployments__isnull=False).distinct():
        if node.status != Node.ONLINE:
            continue
        try:
            send_command(node, protocol.AGENT_RECONCILE_DEPLOYMENTS, {"specs": desired_specs(node)}, ttl=interval)
        except NoRigKey:
            continue
        sent += 1
    return sent
