"""Panel-side tasks (queue `panel`): agent reports and periodic upkeep. Only these write rig rows."""

import logging
from datetime import timedelta

from celery import shared_task, signals
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from nodes import broker, ingest, rigs
from nodes.agent import protocol
from nodes.models import GpuSample, HostSample, Node, Operation, StatusChange, history_cutoff

log = logging.getLogger("morpheus.tasks")


@shared_task(name=protocol.REPORT_TASK)
def report(rig=None, body=None, mac=None, **unexpected):
    if unexpected:
        return "unsigned report refused (fields outside the signed body)"
    return ingest.handle_report(rig, body, mac)


@shared_task(name="panel.check_node_status")
def check_node_status():
    now = timezone.now()
    changes = 0
    for rig in Node.objects.exclude(last_status=Node.NEW).only("id", "last_seen", "telemetry_interval", "last_status"):
        if rig.record_status(now):
            changes += 1
    return changes


@shared_task(name="panel.expire_operations")
def expire_operations():
    """End operations that would otherwise wait forever, saying which limit they hit: one no rig picked up within
    the pickup timeout (its message expired unread: rig offline), and one picked up that did not end within its
    kind's run limit (Operation.run_limit). One row at a time through the one exit, so mirrors are freed too."""
    now = timezone.now()
    pickup = settings.OPERATION_PICKUP_TIMEOUT
    ended = 0
    for operation in Operation.objects.filter(status=Operation.QUEUED, created__lt=now - timedelta(seconds=pickup)):
        ended += operation.apply_report(Operation.FAILED, PICKUP_EXPIRED.format(seconds=pickup), now=now)
    shortest = min(settings.RUN_TIMEOUTS.values())
    running = Operation.objects.filter(status=Operation.RUNNING, started__lt=now - timedelta(seconds=shortest))
    for operation in running.exclude(kind=Operation.DOWNLOAD_MODEL):
        seconds, setting = operation.run_limit()
        if operation.started < now - timedelta(seconds=seconds):
            ended += operation.apply_report(Operation.FAILED, RUN_EXPIRED.format(
                seconds=seconds, kind=operation.get_kind_display(), setting=setting), now=now)
    return ended


PICKUP_EXPIRED = "the rig's agent did not pick this up within {seconds} s (the pickup timeout; is the rig online?)"
RUN_EXPIRED = ("no outcome from the rig within {seconds} s of it starting (the run limit for a {kind}, "
               "{setting})")


@shared_task(name="panel.prune_history")
def prune_history():
    cutoff = history_cutoff()
    gpu_rows, _ = GpuSample.objects.filter(minute__lt=cutoff).delete()
    host_rows, _ = HostSample.objects.filter(minute__lt=cutoff).delete()
    status_rows, _ = StatusChange.objects.filter(at__lt=timezone.now() - settings.STATUS_CHANGE_RETENTION).delete()
    return {"gpu_samples": gpu_rows, "host_samples": host_rows, "status_changes": status_rows}


@shared_task(name="panel.drop_offline_messages")
def drop_offline_messages():
    """Bounded growth: a rig unheard of for settings.OFFLINE_DROP_AFTER gets nothing waiting for it in Redis, and the
    operations those messages carried end, saying why. It gets what it needs again once it reports (the deployment
    reminder goes to online rigs only)."""
    now = timezone.now()
    cutoff = now - settings.OFFLINE_DROP_AFTER
    hours = settings.OFFLINE_DROP_AFTER.total_seconds() / 3600
    long_gone = Node.objects.filter(Q(last_seen__lt=cutoff) | Q(last_seen__isnull=True, created__lt=cutoff))
    summary = {}
    for node in long_gone.only("id", "name"):
        ended = sum(op.apply_report(Operation.FAILED, OFFLINE_DROPPED.format(hours=f"{hours:g}"), now=now)
                    for op in Operation.objects.filter(node=node, status=Operation.QUEUED))
        try:
            dropped = broker.drop_messages(node.name)
        except Exception as exc:  # the broker is away: the next run tries again
            log.warning("messages for offline rig %s not dropped: %s", node.name, exc)
            continue
        if dropped or ended:
            log.info("rig %s offline over %g h: dropped %d waiting message(s), ended %d queued operation(s)",
                     node.name, hours, dropped, ended)
            summary[node.name] = {"messages": dropped, "operations": ended}
    return summary


OFFLINE_DROPPED = "the rig has been offline for over {hours} h: its waiting commands were dropped"


@shared_task(name="panel.sync_broker_accounts")
def sync_broker_accounts():
    """Every rig's broker account as the database says (a restarted Redis forgets users it did not save)."""
    return rigs.sync_accounts(Node.objects.only("id", "name", "token"))


@signals.worker_ready.connect
def check_broker_and_sync(sender=None, **kwargs):
    """The panel worker refuses a broker that cannot give rigs their own accounts (no ACLs), then makes sure every
    rig has its account. Redis 6.2 is accepted for this machine's rig only (the log says so)."""
    try:
        described = broker.check_broker(settings.CELERY_BROKER_URL)
    except broker.BrokerUnsupported as exc:
        log.critical("refusing to run: %s", exc)
        raise SystemExit(f"refusing to run: {exc}") from None
    if described.endswith(broker.LIMITED_NOTE):
        log.warning("broker: %s", described)
    else:
        log.info("broker: %s", described)
    synced = sync_broker_accounts()
    log.info("rig broker accounts at start: %s", {k: v for k, v in synced.items() if k != "note"})
