"""Current login lockouts as an operator sees them: one row per (name, address) over the failure limit."""

from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from axes.utils import reset
from django.conf import settings
from django.db.models import Max, Sum
from django.utils import timezone


def cool_off_minutes():
    return int(get_cool_off().total_seconds() // 60)


def current():
    cool_off = get_cool_off()
    rows = (AccessAttempt.objects.filter(attempt_time__gte=timezone.now() - cool_off)
            .values("username", "ip_address")
            .annotate(failures=Sum("failures_since_start"), last_attempt=Max("attempt_time"))
            .filter(failures__gte=settings.AXES_FAILURE_LIMIT)
            .order_by("-last_attempt"))
    return [{**row, "until": row["last_attempt"] + cool_off} for row in rows]


def unlock(username, ip_address):
    """Forgets the failures of `username` from `ip_address`; returns how many attempt rows went."""
    if not username:
        return 0  # reset() with no name and no address would forget every lockout
    return reset(ip=ip_address or None, username=username)
