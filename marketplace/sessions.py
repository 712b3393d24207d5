"""Sessions and earnings on a rig's proxy-router, with the restart timeline: what the Sessions page shows.

Everything is read in a fixed number of queries whatever the number of sessions; the flags are worked out here:
- "cut by a restart": a router start, restart or exit fell while the session was open (the session closed at it, a
  little after it, or is still open on chain across it) — every proxy-router restart ends the open sessions, and
  consumers dispute them;
- "delivered nothing": the deployment behind the session generated no token while it was open (known only where the
  session could be matched to a published deployment with serving metrics at both ends);
- server exits of the session's deployment while it was open.
"""

from collections import OrderedDict
from datetime import timedelta

from django.db.models import Subquery
from django.utils import timezone

from hosting.models import ServerExit
from nodes.agent.supervisor import duration_text
from marketplace.models import Listing, RouterEvent, RouterSession

PAGE_SESSIONS = 100
MAX_TIMELINE_EVENTS = 300
# Chain times are block times, router events the rig's clock moved onto the panel's: a session the router ended as
# it restarted may show as closed a moment before the restart.
CUT_GRACE = timedelta(seconds=30)
CHAIN_RESOLUTION = timedelta(seconds=1)  # block times are whole seconds: a session opened in the same second is after


def short(value):
    """0x1234…cdef: enough of an id or address to tell two apart on a page (the whole one on hover)."""
    return f"{value[:6]}…{value[-4:]}" if value and len(value) > 12 else value


class SessionRow:
    """A RouterSession with what the page says about it."""

    def __init__(self, row, now):
        self.row = row
        self.cut_by = None
        self.server_exits = []
        end = row.closed_at or now
        self.duration = max(timedelta(0), end - row.opened_at)
        self.tokens = row.tokens_served
        self.tokens_so_far = None
        self.model_name = ""
        deployment = row.deployment
        if row.closed_at is None and row.tokens_at_open is not None and deployment is not None and \
                deployment.started_at == row.server_started_at:
            current = (deployment.serving or {}).get("tokens_generated")
            if isinstance(current, int) and current >= row.tokens_at_open:
                self.tokens_so_far = current - row.tokens_at_open

    @property
    def short_id(self):
        return short(self.row.session_id)

    @property
    def short_model(self):
        return short(self.row.model_id)

    @property
    def short_user(self):
        return short(self.row.user)

    def __getattr__(self, name):
        return getattr(self.row, name)

    @property
    def duration_text(self):
        return duration_text(self.duration.total_seconds())

    @property
    def delivered_nothing(self):
        return self.tokens == 0

    def was_open_at(self, moment, grace=timedelta(0)):
        return self.row.opened_at + CHAIN_RESOLUTION <= moment and (self.row.closed_at is None or self.row.closed_at >= moment - grace)


def _model_names(node, router):
    """Model id → name: what the provider published, else what the chain calls it."""
    names = {m.get("id"): m.get("name") for m in ((router.snapshot if router else {}) or {}).get("models") or []
             if isinstance(m, dict)}
    names.update(Listing.objects.filter(deployment__node=node).values_list("model_id", "model_name"))
    return names


def flag(sessions, events, exits):
    """Set `cut_by` (the first router event that fell while the session was open) and `server_exits` (exits of its
    deployment while it was open). Events and exits oldest first."""
    for session in sessions:
        session.cut_by = next((e for e in events if session.was_open_at(e.at, CUT_GRACE)), None)
        session.server_exits = [x for x in exits if x.deployment_id == session.row.deployment_id
                                and session.row.deployment_id is not None and session.was_open_at(x.at)]


def rig_sessions(node, router, limit=PAGE_SESSIONS):
    """The Sessions page: the newest `limit` sessions flagged, grouped per model and bid, and the timeline."""
    now = timezone.now()
    rows = list(RouterSession.objects.filter(node=node).select_related("deployment").order_by("-opened_at", "-id")
                [:limit])
    sessions = [SessionRow(row, now) for row in rows]
    since = min((s.row.opened_at for s in sessions), default=now - timedelta(days=1)) - CUT_GRACE
    events = list(RouterEvent.objects.filter(node=node, at__gte=since).order_by("-at", "-id")[:MAX_TIMELINE_EVENTS])
    events.reverse()
    exits = list(ServerExit.objects.filter(deployment__node=node, at__gte=since).select_related("deployment")
                 .order_by("-at", "-id")[:MAX_TIMELINE_EVENTS])
    exits.reverse()
    flag(sessions, events, exits)
    names = _model_names(node, router)
    for s in sessions:
        s.model_name = names.get(s.row.model_id) or ""
    return {"sessions": sessions, "groups": _groups(sessions, names), "timeline": _timeline(sessions, events, exits),
            "names": names, "summary": _summary(node, sessions)}


def _groups(sessions, names):
    groups = OrderedDict()
    for s in sessions:
        key = (s.row.model_id, s.row.bid_id)
        group = groups.setdefault(key, {"model_id": key[0], "bid_id": key[1], "name": names.get(key[0]) or "",
                                        "short_model": short(key[0]), "short_bid": short(key[1]),
                                        "price_per_second": s.row.price_per_second, "open": 0, "closed": 0,
                                        "duration": timedelta(0), "tokens": None, "claimable": 0, "cut": 0,
                                        "nothing": 0})
        group["open" if s.row.closed_at is None else "closed"] += 1
        group["duration"] += s.duration
        if s.tokens is not None:
            group["tokens"] = (group["tokens"] or 0) + s.tokens
        group["claimable"] += int(s.row.claimable_wei or 0)
        group["cut"] += s.cut_by is not None
        group["nothing"] += s.delivered_nothing
    for group in groups.values():
        group["duration_text"] = duration_text(group["duration"].total_seconds())
    return list(groups.values())


def _timeline(sessions, events, exits):
    """Newest first: sessions opening and closing, router starts/restarts/exits, server exits."""
    entries = [{"at": e.at, "kind": e.kind, "event": e} for e in events]
    entries += [{"at": x.at, "kind": "server_exit", "exit": x} for x in exits]
    for s in sessions:
        entries.append({"at": s.row.opened_at, "kind": "session_opened", "session": s})
        if s.row.closed_at is not None:
            entries.append({"at": s.row.closed_at, "kind": "session_closed", "session": s})
    # At the same second a restart comes before the sessions it closed.
    order = {"session_closed": 0, "server_exit": 1, "router_exited": 2, "router_started": 3, "router_restarted": 3,
             "session_opened": 4}
    entries.sort(key=lambda e: (e["at"], order.get(e["kind"], 5)), reverse=True)
    return entries


def _summary(node, sessions):
    """Open sessions, and the claimable total over the sessions the router listed in its latest report (each one's
    last balance read): a session it no longer lists may have been claimed since, so it is not counted."""
    open_count = RouterSession.objects.filter(node=node, closed_at__isnull=True).count()
    listed = RouterSession.objects.filter(node=node).order_by("-last_seen").values("last_seen")[:1]
    claimable = sum(int(v) for v in RouterSession.objects.filter(node=node, last_seen=Subquery(listed))
                    .exclude(claimable_wei="").values_list("claimable_wei", flat=True))
    return {"open": open_count, "claimable_wei": str(claimable), "cut": sum(s.cut_by is not None for s in sessions),
            "nothing": sum(s.delivered_nothing for s in sessions), "shown": len(sessions)}


def summary(node, router):
    """What the Marketplace page says of the sessions (open, claimable, cut by restarts among the newest)."""
    return rig_sessions(node, router)["summary"]
