"""The audit log as one list: AuditEvent rows and Operation rows (their own audit trail), newest first.

Both tables are filtered in the database, then joined with UNION ALL over the same annotated columns, ordered by
time and cut with LIMIT/OFFSET: a page costs the same few queries (two counts, one page) however long the log is. An
operation carries the address and channel of the request that started it ("system" for the panel's own work); rows
from before those were kept have none, and a requester-less one counts as "system".
"""

import datetime

from django.db import connection
from django.db.models import Case, CharField, F, JSONField, Q, Value, When
from django.db.models.functions import Coalesce
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
    "alert.rule.change": "alert rule changed", "alert.channel.add": "alert channel added",
    "alert.channel.change": "alert channel changed", "alert.channel.delete": "alert channel deleted",
    "alert.channel.test": "alert channel tested",
    "model.download": "model download (API)", "build.start": "build started (API)",
    "deployment.launch": "deployment launched (API)", "deployment.stop": "deployment stopped (API)",
    "deployment.restart": "deployment restarted (API)", "deployment.benchmark": "benchmark started (API)",
}
OPERATION_LABELS = dict(Operation.KIND_CHOICES)

# One name per column, the same in both halves of the UNION (none may be a field name of either model).
_COLUMNS = ["a_at", "a_source", "a_id", "a_user", "a_action", "a_target", "a_rig", "a_outcome", "a_address",
            "a_via", "a_detail"]


def _text(value):
    return Value(value, output_field=CharField())


def _annotated_events(events):
    return events.annotate(
        a_at=F("at"), a_source=_text(EVENT), a_id=F("pk"), a_user=F("username"), a_action=F("action"),
        a_target=F("target"),
        a_rig=Case(When(action__startswith="rig.", then=F("target")), default=_text(""), output_field=CharField()),
        a_outcome=F("outcome"), a_address=F("address"), a_via=F("via"), a_detail=F("detail"),
    )


def _annotated_operations(operations):
    return operations.annotate(
        a_at=F("created"), a_source=_text(OPERATION), a_id=F("pk"),
        a_user=Coalesce(F("requested_by__username"), _text(""), output_field=CharField()), a_action=F("kind"),
        a_target=F("target"), a_rig=F("node__name"),
        a_outcome=Case(*[When(status__in=statuses, then=_text(outcome))
                         for outcome, statuses in _OPERATION_STATUS.items() if statuses],
                       default=F("status"), output_field=CharField()),
        a_address=F("requested_from"),
        a_via=Case(When(~Q(requested_via=""), then=F("requested_via")),
                   When(requested_by__isnull=True, then=_text(AuditEvent.SYSTEM)), default=_text(""),
                   output_field=CharField()),
        a_detail=Value(None, output_field=JSONField()),
    )


def _day_start(day):
    return timezone.make_aware(datetime.datetime.combine(day, datetime.time.min), datetime.timezone.utc)


class Log:
    """The filtered log, newest first: `count()`, a slice (a page: one query) or `iterator()` (the CSV) give rows
    as dicts with the keys in _COLUMNS; entry() makes them readable."""

    def __init__(self, events, operations):
        self.events, self.operations = events, operations

    def count(self):
        # Two plain counts: no joins, no annotations, each on its own table's indexes.
        return self.events.count() + self.operations.count()

    def __len__(self):
        return self.count()

    def _merged(self, stop=None):
        events, operations = _annotated_events(self.events), _annotated_operations(self.operations)
        if stop is not None and connection.features.supports_slicing_ordering_in_compound:
            # PostgreSQL: each half read along its time index and cut to what the page can need, so page 1 of a
            # long log does not sort all of it. (SQLite cannot order inside a UNION; it sorts the whole.)
            events, operations = events.order_by("-at", "-pk")[:stop], operations.order_by("-created", "-pk")[:stop]
        else:
            # Without its model's default ordering: a compound statement is ordered once, as a whole.
            events, operations = events.order_by(), operations.order_by()
        merged = events.values(*_COLUMNS).union(operations.values(*_COLUMNS), all=True)
        return merged.order_by("-a_at", "-a_source", "-a_id")

    def __getitem__(self, window):
        if not isinstance(window, slice) or window.step is not None:
            raise TypeError("a Log is read by pages: log[start:stop]")
        return list(self._merged(window.stop)[window])

    def iterator(self, chunk_size=2000):
        return self._merged().iterator(chunk_size=chunk_size)


def rows(*, user="", action="", outcome="", text="", since=None, until=None, via=""):
    """The filtered log (a Log). `since`/`until` are dates, both days included (UTC)."""
    events, operations = AuditEvent.objects.all(), Operation.objects.all()
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
        known = Q(requested_via=via)
        if via == AuditEvent.SYSTEM:  # rows from before the channel was kept: requester-less ones are the panel's
            known |= Q(requested_via="", requested_by__isnull=True)
        operations = operations.filter(known)
    return Log(events, operations)


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
