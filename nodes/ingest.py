"""Applying agent reports: authenticate, validate, then write. The panel worker is the only writer."""

import logging
from datetime import datetime, timedelta, timezone as dt_timezone

from django.db import connection, transaction
from django.db.models.functions import Greatest
from django.utils import timezone

from nodes.agent import envelope, protocol
from nodes.agent.protocol import NODE_NAME_RE
from nodes.models import GPU, GpuSample, HostSample, Node, Operation, minute_floor
from nodes.reports import CLEANERS, ReportError

log = logging.getLogger("morpheus.ingest")

# Record a rejected token at most this often per rig, so a misconfigured agent cannot hammer the DB.
REJECTION_WRITE_EVERY = timedelta(seconds=5)
MAX_CLOCK_SKEW = timedelta(minutes=10)
INTERRUPTED = "interrupted: the rig's agent restarted without finishing this operation"
LOST = "lost on the rig: its agent no longer has this operation and sent no outcome for it"
ACK_TTL = 600  # an acknowledgement the rig does not read within this is dropped; the rig sends the report again


class Rejected(Exception):
    pass


def handle_report(rig=None, body=None, mac=None, now=None):
    """Returns None when applied, or the reason it was rejected (already logged).

    A report the rig keeps until acknowledged (`ack`) is acknowledged once this transaction commits — also when it
    changed nothing (a copy, or older than what is stored) or was malformed (sending it again would not help)."""
    now = now or timezone.now()
    node = report = None
    try:
        node, report = authenticate(rig, body, mac, now)
        kind = report["kind"]
        if not isinstance(kind, str) or kind not in APPLY:
            raise Rejected(f"unknown report kind {kind!r}")
        try:
            clean = CLEANERS[kind](report["payload"])
        except ReportError as exc:
            raise Rejected(f"malformed {kind} report: {exc}") from None
        # Times the rig stamped, moved onto the panel's clock by their age on the rig's own clock.
        if kind == "telemetry":
            for reading in (clean, *clean.get("servers", ())):
                reading["at"] = now.timestamp() - max(0.0, report["sent_at"] - reading["at"])
        elif kind == "hardware" and clean["agent_started_at"] is not None:
            clean["agent_started_at"] = now.timestamp() - max(0.0, report["sent_at"] - clean["agent_started_at"])
    except Rejected as exc:
        log.warning("report from rig %r rejected: %s", rig if isinstance(rig, str) else None, exc)
        if report is not None and report["ack"]:
            acknowledge(node, report["seq"])
        return str(exc)
    with transaction.atomic():
        if kind == "telemetry" and connection.vendor == "postgresql":
            # A reading lost in a database crash is replaced seconds later: don't wait for the WAL flush.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        APPLY[kind](node, clean, now, report["seq"])
        if report["ack"]:
            seq = report["seq"]
            transaction.on_commit(lambda: acknowledge(node, seq))
        offset = report["sent_at"] - now.timestamp()
        node.last_seen = now
        # Highest sequence number and the rig's clock offset, for ordering and skew (never moves backwards).
        Node.objects.filter(pk=node.pk).update(last_seen=now, clock_offset=offset,
                                               report_seq=Greatest("report_seq", report["seq"]))
        node.record_status(now)
    return None


def acknowledge(node, seq):
    """Tell the rig its report is applied, so it stops sending it. If this is lost the rig sends the report again and
    it is acknowledged again: nothing is applied twice (each object takes only newer reports)."""
    from nodes.channel import send_command  # the channel imports the Celery app; ingest stays importable without

    if not Node.objects.filter(pk=node.pk).exists():
        return  # removed meanwhile: its queue was purged with its account, and must not be made again
    try:
        send_command(node, protocol.AGENT_ACK, {"seqs": [seq]}, ttl=ACK_TTL)
    except Exception as exc:  # the broker is away: the rig will send it again
        log.warning("could not acknowledge report %s of rig %s: %s", seq, node.name, exc)


def authenticate(name, body, mac, now):
    """The rig and its report, if the report is signed with that rig's key; the token itself never travels."""
    if not isinstance(name, str):
        raise Rejected("rig name missing")
    if not NODE_NAME_RE.match(name):  # never query with it (PostgreSQL refuses a NUL, for one)
        raise Rejected("unknown rig")
    node = Node.objects.filter(name=name).first()
    if node is None:
        raise Rejected("unknown rig")
    keys = node.keys
    try:
        if keys is None:
            raise envelope.EnvelopeRejected("rig has no key yet: rotate its token and restart its agent")
        report = envelope.open_report(keys, rig=name, body=body, mac=mac)
    except envelope.EnvelopeRejected as exc:
        if node.token_rejected_at is None or now - node.token_rejected_at > REJECTION_WRITE_EVERY:
            Node.objects.filter(pk=node.pk).update(token_rejected_at=now)
        raise Rejected(str(exc)) from None
    return node, report


def apply_hardware(rig, hw, now, seq):
    gpus = hw.pop("gpus")
    rig.hardware = {**hw, "gpus": gpus}
    rig.hardware_at = now
    rig.telemetry_interval = hw["telemetry_interval"]
    rig.token_rejected_at = None
    rig.save(update_fields=["hardware", "hardware_at", "telemetry_interval", "token_rejected_at"])
    existing = {gpu.index: gpu for gpu in rig.gpus.all()}
    seen = set()
    for data in gpus:
        seen.add(data["index"])
        fields = {
            "uuid": data["uuid"],
            "name": data["name"],
            "vram_total": data["vram_total"],
            "power_limit_w": data["power_limit_w"],
            "pcie_gen": data["pcie_gen"],
            "pcie_width": data["pcie_width"],
            "compute_capability": data["compute_capability"],
        }
        gpu = existing.get(data["index"])
        if gpu is None:
            GPU.objects.create(node=rig, index=data["index"], **fields)
        elif gpu.uuid != fields["uuid"]:
            # A different card in that slot: its history is not this card's.
            gpu.delete()
            GPU.objects.create(node=rig, index=data["index"], **fields)
        else:
            for key, value in fields.items():
                setattr(gpu, key, value)
            gpu.save(update_fields=list(fields))
    rig.gpus.exclude(index__in=seen).delete()


def reading_time(at, now):
    moment = datetime.fromtimestamp(at, tz=dt_timezone.utc)
    if abs(moment - now) > MAX_CLOCK_SKEW:
        return now
    return min(moment, now)


def apply_telemetry(rig, reading, now, seq):
    at = reading_time(reading["at"], now)
    minute = minute_floor(at)
    host = reading["host"]
    rig.host_reading = {**host, "at": at.isoformat()}
    rig.save(update_fields=["host_reading"])
    HostSample.objects.bulk_create(
        [HostSample(node=rig, minute=minute, cpu_percent=host["cpu_percent"], ram_used=host["ram_used"],
                    disk_free=host["disk_free"])],
        update_conflicts=True,
        unique_fields=["node", "minute"],
        update_fields=["cpu_percent", "ram_used", "disk_free"],
    )
    gpus = {gpu.index: gpu for gpu in rig.gpus.all()}
    changed, samples = [], []
    for data in reading["gpus"]:
        gpu = gpus.get(data["index"])
        if gpu is None:  # telemetry raced ahead of the hardware report; the next one will land
            continue
        changed.append((gpu.pk, data))
        samples.append(GpuSample(gpu=gpu, minute=minute, util=data["util"], vram_used=data["vram_used"],
                                 temp_c=data["temp_c"], power_w=data["power_w"]))
    if changed:
        _update_latest_readings(changed, at)
        GpuSample.objects.bulk_create(
            samples,
            update_conflicts=True,
            unique_fields=["gpu", "minute"],
            update_fields=["util", "vram_used", "temp_c", "power_w"],
        )
    for apply in TELEMETRY_PARTS:
        apply(rig, reading, now, seq)


LATEST_READING_FIELDS = ("util", "vram_used", "temp_c", "power_w", "fan", "sm_clock")


def _update_latest_readings(changed, at):
    """Overwrite each GPU's latest reading unless a newer one is stored (workers may apply reports out of order).

    One executemany instead of bulk_update: building bulk_update's CASE/WHEN took ~10 ms per 8-GPU report,
    five times the rest of the ingest (bench/ingest.py).
    """
    qn = connection.ops.quote_name
    column = {name: qn(GPU._meta.get_field(name).column) for name in ("id", "reading_at", *LATEST_READING_FIELDS)}
    assignments = ", ".join(f"{column[name]} = %s" for name in ("reading_at", *LATEST_READING_FIELDS))
    sql = (f"UPDATE {qn(GPU._meta.db_table)} SET {assignments} WHERE {column['id']} = %s"
           f" AND ({column['reading_at']} IS NULL OR {column['reading_at']} <= %s)")
    stamp = GPU._meta.get_field("reading_at").get_db_prep_value(at, connection)
    rows = [(stamp, *(data[name] for name in LATEST_READING_FIELDS), pk, stamp) for pk, data in changed]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def apply_inventory(rig, inventory, now, seq):
    """What the rig still has. A running operation of this rig that it does not list, and whose last applied report
    came before this inventory, has ended on the rig without an outcome (its agent restarted, or it was lost): end
    it, saying so. Each server's state is applied as a deployment report of this sequence number."""
    mark_lost(rig, inventory["operations"], seq, now, boot=inventory["boot"])
    for report in inventory["deployments"]:
        for apply in INVENTORY_PARTS:
            apply(rig, report, now, seq)


def mark_lost(rig, listed, seq, now, boot=False):
    lost = (Operation.objects.filter(node=rig, status=Operation.RUNNING, report_seq__lt=seq)
            .exclude(pk__in=listed))
    why = INTERRUPTED if boot else LOST
    count = sum(operation.apply_report(Operation.FAILED, why, now=now, seq=seq) for operation in lost)
    if count:
        log.warning("rig %s: %d running operation(s) ended: %s", rig.name, count, why)
    return count


def apply_operation(rig, report, now, seq):
    operation = Operation.objects.filter(pk=report["operation"], node=rig).first()
    if operation is None:
        log.warning("rig %s reported on operation %s, which is not its own", rig.name, report["operation"])
        return
    before = operation.status
    applied = operation.apply_report(report["status"], report["message"], report["result"], now=now,
                                     progress=report["progress"], log_tail=report["log"], seq=seq)
    if applied and operation.status != before:
        log.info("operation %s (%s on %s): %s", operation.pk, operation.kind, rig.name, operation.status)
    elif not applied and report["status"] != Operation.RUNNING:
        log.info("operation %s: ignored a %s report (already %s, or older than the last one applied)",
                 operation.pk, report["status"], operation.status)


def apply_rejected_command(rig, report, now, seq):
    """The rig's agent refused a command: show it on the rig's page (it may be a forgery aimed at this rig)."""
    log.warning("rig %s refused a %s command: %s", rig.name, report["task"], report["reason"])
    rig.command_rejected_at, rig.command_rejected_reason = now, f"{report['task']}: {report['reason']}"[:300]
    rig.save(update_fields=["command_rejected_at", "command_rejected_reason"])


# Report kinds and their writers, each called (rig, cleaned payload, now, the report's sequence number); other apps
# add theirs in AppConfig.ready() (their rows, their code).
APPLY = {
    "hardware": apply_hardware,
    "telemetry": apply_telemetry,
    "operation": apply_operation,
    "rejected_command": apply_rejected_command,
    "inventory": apply_inventory,
}
# Writers of one server's state (apps add theirs): an inventory's deployments go through them.
INVENTORY_PARTS = []
# Writers of the rest of a telemetry report (apps add theirs): its servers' live metrics, for one.
TELEMETRY_PARTS = []


def register(kind, apply):
    if kind not in CLEANERS:
        raise ValueError(f"report kind {kind!r} has no validation in nodes.reports")
    APPLY[kind] = apply
