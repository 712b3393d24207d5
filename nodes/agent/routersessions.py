"""The provider's sessions on the marketplace and what each one can still be claimed for. Plain Python, no Django.

Read through the router's admin API on loopback (routeradmin.AdminClient) for the `router` report's `sessions`,
`claimable_wei` and `started_at` fields. Open sessions come first (a provider wants every one of them), then the
newest closed ones, MAX_SESSIONS in all. Each claimable balance is one more call to the router, so a report asks for
at most MAX_CLAIMS of them: the open sessions first, then closed ones in turn (a cursor kept between reports walks
through them), so every listed session's balance is read again within a few reports. Amounts stay int wei on the rig
and travel as integer strings.
"""

from .routeradmin import RouterError
from .validation import InvalidValue

MAX_SESSIONS = 64
MAX_CLAIMS = 16
HEALTHY_STATES = ("healthy", "degraded")


def session_entry(record):
    """One session as the panel is sent it."""
    return {"id": record["id"], "user": record["user"], "model_id": record["model_id"], "bid_id": record["bid_id"],
            "opened_at": record["opened_at"], "ends_at": record["ends_at"],
            "closed_at": record["closed_at"] or None, "price_per_second": str(record["price_per_second"]),
            "stake": str(record["stake"]), "provider_withdrawn": str(record["provider_withdrawn_amount"]),
            "claimable_wei": None}


def pick_sessions(records, max_sessions=MAX_SESSIONS):
    """Open sessions first (newest first), then the newest closed ones."""
    newest = sorted(records, key=lambda r: (r["opened_at"], r["id"]), reverse=True)
    open_ones = [r for r in newest if r["open"]]
    closed = [r for r in newest if not r["open"]]
    return (open_ones + closed)[:max_sessions]


def read_claims(client, sessions, cursor, max_claims=MAX_CLAIMS):
    """Fill `claimable_wei` for the open sessions and the next closed ones after `cursor` (a session id, or None);
    returns the cursor for the next report. A balance the router cannot give stays None."""
    open_ones = [s for s in sessions if s["closed_at"] is None][:max_claims]
    closed = [s for s in sessions if s["closed_at"] is not None]
    start = next((n + 1 for n, s in enumerate(closed) if s["id"] == cursor), 0)
    turn = (closed[start:] + closed[:start])[:max(0, max_claims - len(open_ones))]
    for session in open_ones + turn:
        try:
            session["claimable_wei"] = str(client.claimable_balance(session["id"]))
        except (RouterError, InvalidValue):
            session["claimable_wei"] = None
    return turn[-1]["id"] if turn else cursor


def sessions_fields(client_factory, base, state):
    """The report's `sessions`, `claimable_wei` and `started_at` (and `open_sessions` when the sessions were read)
    for the router whose RouterProcess.report() is `base`. `client_factory()` gives the admin client; `state` is a
    dict kept between reports (it keeps the claims cursor).
    Sessions are read only while the router answers; a failure leaves them empty, and the rest of the report (with
    its own `error`) goes on as it is."""
    out = {"sessions": [], "claimable_wei": None, "started_at": base.get("started_at")}
    if base.get("state") not in HEALTHY_STATES:
        return out
    try:
        client = client_factory()
        wallet = client.wallet()
        records = client.provider_sessions(wallet, order="desc")
    except (RouterError, InvalidValue):
        return out
    sessions = [session_entry(r) for r in pick_sessions(records)]
    state["claims_cursor"] = read_claims(client, sessions, state.get("claims_cursor"))
    known = [int(s["claimable_wei"]) for s in sessions if s["claimable_wei"] is not None]
    out["sessions"] = sessions
    out["claimable_wei"] = str(sum(known)) if known else None
    out["open_sessions"] = sum(1 for r in records if r["open"])  # all the router listed, not only the 64 sent
    return out
