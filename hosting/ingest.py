"""Agent reports about builds (through their operations) and servers (the `deployment` report)."""

import logging
from datetime import datetime, timezone as dt_timezone

from django.db import IntegrityError, transaction
from django.db.models import Q

from hosting.models import Build, Deployment, ServerExit
from nodes.ingest import reading_time
from nodes.models import Operation

log = logging.getLogger("morpheus.ingest")

BUILD_STATUS = {
    Operation.RUNNING: Build.BUILDING,
    Operation.SUCCEEDED: Build.READY,
    Operation.FAILED: Build.FAILED,
    Operation.CANCELLED: Build.CANCELLED,
}


def operation_changed(operation):
    """Keep a build's own status in step with its operation's; drop its row once the rig deleted its files."""
    if operation.kind == Operation.DELETE_BUILD and operation.is_terminal:
        build_id = (operation.result or {}).get("build_id")
        builds = Build.objects.filter(pk=build_id, node=operation.node_id) if isinstance(build_id, int) else None
        if builds is not None and operation.status == Operation.SUCCEEDED:
            builds.delete()
        elif builds is not None:
            builds.update(message=f"not deleted: {operation.message}"[:2000])
        return
    if operation.kind not in (Operation.BUILD_LLAMA, Operation.ADOPT_BUILD):
        return
    build = Build.objects.filter(operation=operation).first()
    if build is None:
        return
    fields = {"status": BUILD_STATUS.get(operation.status, build.status), "message": operation.message}
    if operation.status == Operation.SUCCEEDED:
        result = operation.result or {}
        fields.update(
            binary_path=result.get("binary", "")[:1000], version=result.get("version", "")[:100],
            commit=result.get("commit", "")[:40], backend=result.get("backend", build.backend)[:10],
            cuda_architectures=result.get("cuda_architectures", "")[:100], duration=result.get("seconds"),
            finished=operation.finished,
        )
        if not Build.objects.filter(node=build.node, is_default=True, status=Build.READY).exclude(pk=build.pk).exists():
            fields["is_default"] = True  # the first ready build of a rig is its default
    elif operation.is_terminal:
        fields["finished"] = operation.finished
    Build.objects.filter(pk=build.pk).update(**fields)


def apply_deployment(rig, report, now, seq):
    """A server's state as the rig saw it, unless a newer report (a higher sequence number) is already stored."""
    started = report["started_at"]
    rows = Deployment.objects.filter(pk=report["deployment"], node=rig, report_seq__lt=seq)
    old = rows.values_list("actual_state", flat=True).first()
    rows.update(
        actual_state=report["state"],
        pid=report["pid"],
        started_at=datetime.fromtimestamp(started, tz=dt_timezone.utc) if started else None,
        restarts=report["restarts"],
        message=report["message"],
        log_tail=report["log"],
        reported_at=now,
        report_seq=seq,
    )
    if old is not None and old != report["state"]:
        log.info("deployment %s on %s: %s → %s", report["deployment"], rig.name, old, report["state"])


def apply_server_exit(rig, report, now, seq):
    """One unplanned exit of a rig's own server, kept as history (a report about another rig's is ignored); the
    same report sent again (same sequence number) is the same row."""
    deployment = Deployment.objects.filter(pk=report["deployment"], node=rig).first()
    if deployment is None:
        return
    at = datetime.fromtimestamp(report["at"], tz=dt_timezone.utc)
    if ServerExit.objects.filter(deployment=deployment, report_seq=seq).exists():
        return
    try:
        with transaction.atomic():
            exit_event = ServerExit.objects.create(
                deployment=deployment, at=min(at, now), exit_code=report["exit_code"], signal=report["signal"],
                uptime=report["uptime"], restart_in=report["restart_in"], log_tail=report["log"], report_seq=seq)
    except IntegrityError:  # another panel worker stored this same report a moment ago
        return
    log.info("deployment %s on %s: server exited (%s)", deployment.pk, rig.name, exit_event.summary)


def apply_serving(rig, reading, now, seq):
    """The live metrics of a rig's own servers (a telemetry report's `servers`), unless a newer reading is stored."""
    for item in reading.get("servers", ()):
        at = reading_time(item["at"], now)
        metrics = {key: value for key, value in item.items() if key not in ("deployment", "at")}
        (Deployment.objects.filter(pk=item["deployment"], node=rig)
         .filter(Q(serving_at__isnull=True) | Q(serving_at__lte=at))
         .update(serving=metrics, serving_at=at))
