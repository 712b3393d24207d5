"""The audit log as one list: AuditEvent rows and Operation rows (their own audit trail), newest first.

Both tables are filtered in the database, then joined with UNION ALL over the same annotated columns, ordered by
time and cut with LIMIT/OFFSET: a page costs the same few queries however long the log is. An operation's
address is not stored; its channel is "system" when no one asked for it, else not known (the API's own
AuditEvent rows, via "api", carry the address of the request that started it).
"""

import datetime

from django.db.models import CharField, F, GenericIPAddressField, JSONField, Q, Value
from django.db.models.functions import Coalesce
from django.db.models import Case, When
from django.utils import timezone

from audit.models import AuditEvent
from nodes.models import Operation

EVENT, OPERATION = "event", "operation"
# The outcomes a row can have: an event's, or an operation's status put in the same words.
PENDING, CANCELLED = "pending", "cancelled"
OUTCOMES = [AuditEvent.OK, AuditEvent.REFUSED, AuditEvent.FAILED, CANCELLED, PENDING]
_OPERATION_STATUS = {AuditEvent.OK: [Operation.SUCCEEDED], AuditEvent.FAILED: [Operation.FAILED],
                     CANCELLED: [Operation.CANCELLED], PENDING: [Operation.QUEUED, Operation.RUNNING],
                     AuditEvent.REFUSED: []}
CHANNELS = [AuditEvent.WEB, AuditEvent.API, AuditEvent.SYSTEM]

# What the page says for the actions recorded as events; operations use their kind's label.
EVENT_LABELS = {
    "login": "log in", "logout": "log out", "login.code": "second-factor code",
    "password.confirm": "password confirmed again", "2fa.add": "second factor added",
    "2fa.remove": "second factor removed", "lockout.unlock": "login lockout lifted",
    "user.create": "user created", "user.delete": "user deleted", "user.activate": "user activated",
    "user.deactivate": "user deactivated", "user.password": "password changed", "role.change": "role changed",
    "rig.enrol": "rig enrolled", "rig.token": "rig token replaced", "rig.remove": "rig removed",
    "token.create": "API token created", "token.revoke": "API token revoked",
    "economics.change": "economics settings changed", "audit.export": "audit log exported",
}
OPERATION_LABELS = dict(Operation.KIND_CHOICES)

# One name per column, the same in both halves of the UNION (none may be a field name of either model).
_COLUMNS = ["a_at", "a_source", "a_id", "a_user", "a_action", "a_target", "a_rig", "a_outcome", "a_address",
            "a_via", "a_detail"]


def _text(value):
    return Value(value, output_field=CharField())


def _events():
    return AuditEvent.objects.annotate(
        a_at=F("at"), a_source=_text(EVENT), a_id=F("pk"), a_user=F("username"), a_action=F("action"),
        a_target=F("target"),
        a_rig=Case(When(action__startswith="rig.", then=F("target")), default=_text(""), output_field=CharField()),
        a_outcome=F("outcome"), a_address=F("address"), a_via=F("via"), a_detail=F("detail"),
    )


def _operations():
    return Operation.objects.annotate(
        a_at=F("created"), a_source=_text(OPERATION), a_id=F("pk"),
        a_user=Coalesce(F("requested_by__username"), _text(""), output_field=CharField()), a_action=F("kind"),
        a_target=F("target"), a_rig=F("node__name"),
        a_outcome=Case(*[When(status__in=statuses, then=_text(outcome))
                         for outcome, statuses in _OPERATION_STATUS.items() if statuses],
                       default=F("status"), output_field=CharField()),
        a_address=Value(None, output_field=GenericIPAddressField()),
        a_via=Case(When(requested_by__isnull=True, then=_text(AuditEvent.SYSTEM)), default=_text(""),
                   output_field=CharField()),
        a_detail=Value(None, output_field=JSONField()),
    )


def _day_start(day):
    return timezone.make_aware(datetime.datetime.combine(day, datetime.time.min), datetime.timezone.utc)


def rows(*, user="", action="", outcome="", text="", since=None, until=None, via=""):
    """The filtered log as one queryset of dicts (keys: _COLUMNS), newest first; slice it for a page.
    `since`/`until` are dates, both days included (UTC)."""
    events, operations = _events(), _operations()
    if user:
        events = events.filter(username=user)
        operations = operations.filter(requested_by__username=user)
    if action:
        events = events.filter(action=action)
        operations = operations.filter(kind=action)
    if outcome:
        events = events.filter(outcome=outcome)
        operations = operations.filter(status__in=_OPERATION_STATUS.get(outcome, []))
    if text:
        events = events.filter(target__icontains=text)
        operations = operations.filter(Q(node__name__icontains=text) | Q(target__icontains=text))
    if since:
        events = events.filter(at__gte=_day_start(since))
        operations = operations.filter(created__gte=_day_start(since))
    if until:
        end = _day_start(until + datetime.timedelta(days=1))
        events = events.filter(at__lt=end)
        operations = operations.filter(created__lt=end)
    if via:
        events = events.filter(via=via)
        # Only a requester-less operation is known to be the panel's own; the others' channel is not stored.
        operations = operations.filter(requested_by__isnull=True) if via == AuditEvent.SYSTEM else operations.none()
    # Each half without its model's default ordering: a compound statement is ordered once, as a whole.
    merged = events.order_by().values(*_COLUMNS).union(operations.order_by().values(*_COLUMNS), all=True)
    return merged.order_by("-a_at", "-a_source", "-a_id")


def entry(row):
    """One row as the page and the CSV read it."""
    source, action = row["a_source"], row["a_action"]
    labels = OPERATION_LABELS if source == OPERATION else EVENT_LABELS
    return {
        "at": row["a_at"], "source": source, "id": row["a_id"], "user": row["a_user"], "action": action,
        "label": labels.get(action, action), "target": row["a_target"], "rig": row["a_rig"],
        "outcome": row["a_outcome"], "address": row["a_address"] or "", "via": row["a_via"],
        "detail": detail_text(row["a_detail"]),
    }


def detail_text(detail):
    """An event's detail as one line: "added: operators; superuser: True"."""
    def shown(value):
        return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return "; ".join(f"{key}: {shown(value)}" for key, value in sorted((detail or {}).items()))


def known_actions():
    """(value, label) for the action filter: the event actions in the log, then every operation kind."""
    seen = AuditEvent.objects.order_by().values_list("action", flat=True).distinct()
    events = sorted((action, EVENT_LABELS.get(action, action)) for action in seen)
    return events + [(kind, f"operation: {label}") for kind, label in Operation.KIND_CHOICES]
