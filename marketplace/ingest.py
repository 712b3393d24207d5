"""Writing the rig's `router` report: only the reporting rig's rows, never an older report over a newer one.

Besides the Router row, a report moves the rig's sessions (RouterSession, upserted by id, matched to the deployment
published under their model) and records the router's starts, restarts and exits (RouterEvent) by comparing it with
the report before it. The work per report is bounded: at most 64 sessions (nodes/reports.py) and three events, in a
fixed number of queries.
"""

from datetime import datetime, timedelta, timezone as dt_timezone

from django.db import transaction
from django.utils import timezone

from marketplace.models import Listing, Router, RouterEvent, RouterSession
from nodes.models import Operation

RUNNING_STATES = ("starting", "healthy", "degraded", "unresponsive")
EXIT_STATES = ("backoff", "failed")
# A session first seen open (or closed) later than this after it opened (closed) is not counted in tokens: the
# deployment's counter by then holds other traffic too.
TOKENS_LATE = timedelta(minutes=5)
MAX_SESSIONS_PER_RIG = 5000  # history kept per rig; a rig inventing sessions cannot fill the database
MAX_EVENTS_PER_RIG = 2000
# What a report can change on a known session (besides last_seen, set on every listed session in one UPDATE).
SESSION_FIELDS = ["model_id", "bid_id", "user", "price_per_second", "stake", "ends_at", "closed_at", "claimable_wei",
                  "claimable_at", "deployment", "tokens_at_open", "tokens_at_close", "server_started_at",
                  "tokens_note"]


def _session_values(row):
    return tuple(getattr(row, "deployment_id" if name == "deployment" else name) for name in SESSION_FIELDS)


@transaction.atomic
def apply_router(rig, report, now, seq):
    now = now or timezone.now()
    # Locked: the events are the difference between this report and the one before it.
    previous = Router.objects.select_for_update().filter(node=rig).values_list("snapshot", "report_seq").first()
    if previous is not None and previous[1] >= seq:
        return  # an older report (or the same one again): what is stored is newer
    rows = Router.objects.filter(node=rig, report_seq__lt=seq)
    updated = rows.update(state=report["state"], snapshot=report, reported_at=now, report_seq=seq)
    if not updated:
        if Router.objects.filter(node=rig).exists():
            return  # a newer report landed in between
        # A router configured on the rig by hand (or before this panel knew of it): shown all the same.
        Router.objects.create(node=rig, binary_path=report.get("binary") or "", network=report.get("network")
                              or "mainnet", state=report["state"], snapshot=report, reported_at=now, report_seq=seq)
    record_events(rig, previous[0] if previous else {}, report, now, seq)
    apply_sessions(rig, report.get("sessions") or [], now)


# --- times --------------------------------------------------------------------------------------------------------
def chain_time(seconds):
    """A time the chain stamped (a session's opened/closed): epoch seconds, true time."""
    return datetime.fromtimestamp(seconds, tz=dt_timezone.utc) if seconds else None


def rig_time(seconds, rig, now):
    """A time the rig's clock stamped, moved onto the panel's clock by the rig's measured offset; never later than
    now."""
    moment = datetime.fromtimestamp(seconds - (rig.clock_offset or 0.0), tz=dt_timezone.utc)
    return min(moment, now)


# --- router starts, restarts and exits ----------------------------------------------------------------------------
def record_events(rig, previous, report, now, seq):
    """RouterEvent rows for what changed since the previous report: a new process start (a restart when there was
    one before it), a restarts counter that moved without one, a fall into backoff or failed, or a stop."""
    events = []
    message = (report.get("message") or "")[:300]
    started, before = report.get("started_at"), previous.get("started_at")
    restarts, restarts_before = report.get("restarts") or 0, previous.get("restarts") or 0
    if started and (before is None or abs(started - before) > 0.001):
        kind = RouterEvent.RESTARTED if before is not None or restarts > restarts_before else RouterEvent.STARTED
        at = rig_time(started, rig, now)
        events.append((at, kind, _why_started(rig, at, previous.get("state")) or message))
    elif restarts > restarts_before and previous:
        count = restarts - restarts_before
        events.append((rig_time(report["at"], rig, now), RouterEvent.RESTARTED,
                       f"{count} restart{'s' if count > 1 else ''} since the last report"))
    state, state_before = report["state"], previous.get("state")
    if state != state_before and (state in EXIT_STATES or (state == "stopped" and state_before in RUNNING_STATES)):
        events.append((rig_time(report["at"], rig, now), RouterEvent.EXITED, message or state))
    if not events:
        return
    RouterEvent.objects.bulk_create([RouterEvent(node=rig, at=at, kind=kind, detail=detail, report_seq=seq)
                                     for at, kind, detail in events])
    _prune(RouterEvent.objects.filter(node=rig), MAX_EVENTS_PER_RIG, "-at")


def _why_started(rig, at, state_before):
    """Why the router started: after a crash, or asked from the panel (the apply operation sent shortly before)."""
    if state_before == "backoff":
        return "started again after a crash"
    asked = (Operation.objects.filter(node=rig, kind=Operation.ROUTER_APPLY, created__lte=at + timedelta(seconds=5),
                                      created__gte=at - timedelta(minutes=10))
             .select_related("requested_by").order_by("-created").first())
    if asked is not None:
        who = asked.requested_by.get_username() if asked.requested_by else "the panel"
        return f"asked from the panel by {who} (operation {asked.pk})"
    return ""


def _prune(rows, keep, order):
    """Drop the oldest rows past `keep` (checked only when rows were added)."""
    if rows.count() > keep:
        cutoff = list(rows.order_by(order, "-id").values_list("pk", flat=True)[keep:keep + 1000])
        rows.filter(pk__in=cutoff).delete()


# --- sessions ------------------------------------------------------------------------------------------------------
def apply_sessions(rig, sessions, now):
    """Upsert the reported sessions of this rig. A session never reopens once seen closed; a claimable balance the
    rig did not read this time keeps its last value."""
    if not sessions:
        return
    existing = {row.session_id: row for row in RouterSession.objects.filter(
        node=rig, session_id__in=[s["id"] for s in sessions]).select_related("deployment")}
    published = {}
    for listing in (Listing.objects.filter(deployment__node=rig, model_id__in={s["model_id"] for s in sessions})
                    .select_related("deployment").order_by("pk")):
        published.setdefault(listing.model_id.lower(), listing.deployment)
    fresh_for = timedelta(seconds=max(60.0, 3 * (rig.telemetry_interval or 0)))
    new, changed = [], []
    for item in sessions:
        row = existing.get(item["id"])
        closed = chain_time(item["closed_at"])
        if row is None:
            row = RouterSession(node=rig, session_id=item["id"], opened_at=chain_time(item["opened_at"]),
                                first_seen=now)
            new.append(row)
            was_open = None
        else:
            changed.append((row, _session_values(row)))
            was_open = row.closed_at is None
        row.model_id, row.bid_id, row.user = item["model_id"], item["bid_id"], item["user"] or ""
        row.price_per_second, row.stake = item["price_per_second"], item["stake"] or ""
        row.ends_at = chain_time(item["ends_at"])
        if row.deployment_id is None and item["model_id"] in published:
            row.deployment = published[item["model_id"]]
        if item["claimable_wei"] is not None:
            row.claimable_wei, row.claimable_at = item["claimable_wei"], now
        row.last_seen = now
        if row.closed_at is None:
            row.closed_at = closed
        if was_open is None:
            _tokens_at_open(row, now, fresh_for)
        elif was_open and row.closed_at is not None:
            _tokens_at_close(row, now, fresh_for)
    if new:
        RouterSession.objects.bulk_create(new)
        _prune(RouterSession.objects.filter(node=rig), MAX_SESSIONS_PER_RIG, "-opened_at")
    # Most of a busy rig's sessions are the same as in its last report: only the ones that moved are written (a
    # bulk update of all 64 cost ~100 ms a report in bench/marketplace.py); every listed one is marked seen.
    moved = [row for row, before in changed if _session_values(row) != before]
    if moved:
        RouterSession.objects.bulk_update(moved, SESSION_FIELDS)
    if changed:
        RouterSession.objects.filter(pk__in=[row.pk for row, _before in changed]).update(last_seen=now)


def _counter(deployment, now, fresh_for):
    """The deployment's cumulative generated tokens from a recent serving reading, else None."""
    if deployment is None or deployment.serving_at is None or now - deployment.serving_at > fresh_for:
        return None
    value = (deployment.serving or {}).get("tokens_generated")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _tokens_at_open(row, now, fresh_for):
    if row.closed_at is not None:
        row.tokens_note = "closed before the panel saw it open"
    elif row.deployment is None:
        row.tokens_note = "no deployment of the rig is published under this model"
    elif now - row.opened_at > TOKENS_LATE:
        row.tokens_note = "seen open too late to count its tokens"
    elif (tokens := _counter(row.deployment, now, fresh_for)) is None:
        row.tokens_note = "no recent serving metrics from the deployment when it opened"
    else:
        row.tokens_at_open, row.server_started_at, row.tokens_note = tokens, row.deployment.started_at, ""


def _tokens_at_close(row, now, fresh_for):
    if row.tokens_at_open is None:
        return
    tokens = _counter(row.deployment, now, fresh_for)
    if now - row.closed_at > TOKENS_LATE:
        row.tokens_note = "seen closed too late to count its tokens"
    elif row.deployment.started_at != row.server_started_at:
        row.tokens_note = "the server restarted during the session"
    elif tokens is None:
        row.tokens_note = "no recent serving metrics from the deployment when it closed"
    elif tokens < row.tokens_at_open:
        row.tokens_note = "the server's token counter went back"
    else:
        row.tokens_at_close, row.tokens_note = tokens, ""
