"""Writing the rig's `router` report: only the reporting rig's row, never an older report over a newer one."""

from django.utils import timezone

from marketplace.models import Router


def apply_router(rig, report, now, seq):
    rows = Router.objects.filter(node=rig, report_seq__lt=seq)
    updated = rows.update(state=report["state"], snapshot=report, reported_at=now or timezone.now(), report_seq=seq)
    if not updated and not Router.objects.filter(node=rig).exists():
        # A router configured on the rig by hand (or before this panel knew of it): shown all the same.
        Router.objects.create(node=rig, binary_path=report.get("binary") or "", network=report.get("network")
                              or "mainnet", state=report["state"], snapshot=report, reported_at=now, report_seq=seq)
