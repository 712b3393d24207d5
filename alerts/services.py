"""What the alerts pages read: open alerts first, then recent ones, each with its history, in three queries."""

from django.db.models import Prefetch, Q

from alerts.models import Alert, AlertEvent

RECENT = 50


def alerts_page():
    events = Prefetch("events", queryset=AlertEvent.objects.order_by("at", "id"))
    base = Alert.objects.select_related("rule").prefetch_related(events)
    open_alerts = list(base.filter(opened_at__isnull=False, resolved_at=None).order_by("-opened_at", "-id"))
    recent = list(base.filter(Q(resolved_at__isnull=False)).order_by("-resolved_at", "-id")[:RECENT])
    pending = list(Alert.objects.select_related("rule").filter(opened_at=None, resolved_at=None)
                   .order_by("first_seen"))
    return {"open_alerts": open_alerts, "recent": recent, "pending": pending}
