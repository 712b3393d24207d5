"""Sessions and earnings on a rig's proxy-router: the report's sessions validated, read on the rig, written for the
reporting rig only and in report order, matched to published deployments for the tokens they served, and the
Sessions page with its restart timeline."""

import json
import re
import time
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from hosting.models import Build, Deployment, ServerExit
from marketplace.models import Listing, Router, RouterEvent, RouterSession
from models_catalog.models import RigFile
from nodes.agent.routeradmin import AdminClient
from nodes.agent.routersessions import MAX_CLAIMS, sessions_fields
from nodes.models import Operation
from nodes.reports import ReportError, clean_router
from tests.harness import wait_until
from tests.helpers import free_port, make_node, page, report as handle_report
from tests.routerkit import WALLET, StubProcess, assert_no_secret, mid, request, seen_by_the_panel, write_rig_folder

USER = "0x" + "ee" * 20
NOW = int(time.time())


def session(n, opened_at=None, closed_at=None, model=1, bid=101, claimable=None, **more):
    data = {"id": mid(n), "user": USER, "model_id": mid(model), "bid_id": mid(bid),
            "opened_at": opened_at or NOW - 60, "ends_at": (opened_at or NOW - 60) + 3600, "closed_at": closed_at,
            "price_per_second": "20000000000", "stake": str(10**18), "provider_withdrawn": "0",
            "claimable_wei": claimable}
    data.update(more)
    return data


def router_report(sessions=(), started_at=None, **changes):
    data = {"state": "healthy", "pid": 4242, "message": "healthy", "log": "", "restarts": 0, "version": "v7.11.0",
            "health": "healthy", "models_health": {}, "wallet": WALLET, "mor_wei": "1", "eth_wei": "1",
            "provider": None, "models": [{"id": mid(1), "name": "tiny-llama", "stake": str(10**17)}], "bids": [],
            "open_sessions": 0, "config_models": [], "unmanaged_keys": [], "network": "testnet",
            "binary": "/opt/morpheus/proxy-router", "at": time.time(), "error": None,
            "sessions": list(sessions), "claimable_wei": None, "started_at": started_at or NOW - 3600}
    data.update(changes)
    return data


# --- the report's sessions, validated -------------------------------------------------------------------------------
def test_good_sessions_are_kept_with_exact_wei_and_lowercase_ids():
    clean = clean_router(router_report([session(1, claimable=str(7 * 10**15), user=USER.upper().replace("0X", "0x"))],
                                       claimable_wei=str(7 * 10**15)))
    assert clean["sessions"][0]["claimable_wei"] == "7000000000000000" and clean["sessions"][0]["user"] == USER
    assert clean["claimable_wei"] == "7000000000000000" and clean["started_at"] == NOW - 3600


@pytest.mark.parametrize("changes, why", [
    ({"id": "0x12"}, "session id must be"),
    ({"id": "0x" + "zz" * 32}, "session id must be"),
    ({"user": "0x1234"}, "session user must be"),
    ({"model_id": None}, "session model id must be"),
    ({"bid_id": "bid"}, "session bid id must be"),
    ({"price_per_second": 2.0e10}, "price_per_second must be a whole number of wei"),
    ({"price_per_second": "-1"}, "price_per_second must be a whole number of wei"),
    ({"claimable_wei": "1.5"}, "claimable_wei must be a whole number of wei"),
    ({"stake": "1" * 79}, "stake must be a whole number of wei"),
    ({"opened_at": True}, "opened_at must be a number"),
    ({"opened_at": 10**12}, "opened_at=.* is outside"),
    ({"opened_at": 1.5}, "opened_at must be a whole number"),
    ({"closed_at": NOW - 3600}, "closed before it opened"),
    ({"ends_at": 5}, "ends before it opened"),
    ({"opened_at": NOW + 3 * 86400}, "opened_at=.* is outside"),
    ({"closed_at": NOW + 3 * 86400}, "closed_at=.* is outside"),
])
def test_a_hostile_session_is_refused_with_the_reason(changes, why):
    with pytest.raises(ReportError, match=why):
        clean_router(router_report([session(1, **changes)]))


@pytest.mark.parametrize("changes, why", [
    ({"sessions": [session(n) for n in range(65)]}, "more than 64"),
    ({"sessions": [session(1), session(1)]}, "listed twice"),
    ({"sessions": ["0x" + "ab" * 32]}, "each session must be an object"),
    ({"sessions": {"id": mid(1)}}, "sessions must be a list"),
    ({"claimable_wei": 10**18}, "claimable_wei must be a whole number of wei"),
    ({"started_at": "yesterday"}, "started_at must be a number"),
    ({"started_at": -1}, "outside"),
])
def test_a_hostile_sessions_report_is_refused(changes, why):
    payload = router_report()
    payload.update(changes)
    with pytest.raises(ReportError, match=why):
        clean_router(payload)


# --- the stand-in: sessions opened and closed at runtime, ended by a restart ---------------------------------------
def test_the_stand_in_opens_and_closes_sessions_for_tests_and_a_restart_ends_the_open_ones(tmp_path):
    web, proxy = free_port(), free_port()
    folder = write_rig_folder(tmp_path / "rig", web, proxy, extra_env={"ROUTERSTUB_TEST_API": "1"})
    stub = StubProcess(folder, web, proxy).start()
    try:
        base = stub.base
        status, body = request("POST", base + "/test/sessions", {"model_id": mid(1), "claimable": "42"})
        assert status == 200 and body["session"]["ClosedAt"] == 0
        first = body["session"]["Id"]
        second = request("POST", base + "/test/sessions", {"model_id": mid(1)})[1]["session"]["Id"]
        assert request("POST", f"{base}/test/sessions/{second}/close")[1]["session"]["ClosedAt"] > 0
        assert request("POST", f"{base}/test/sessions/{first}/claimable", {"balance": "43"})[0] == 200
        assert request("POST", f"{base}/test/sessions/{mid(77)}/close")[0] == 404
        assert request("POST", base + "/test/sessions", {"model_id": "0x12"})[0] == 400
        assert request("POST", base + "/test/sessions", {"model_id": mid(1)}, auth=None)[0] == 401
        listed = request("GET", f"{base}/blockchain/sessions/provider?provider={WALLET}&order=desc")[1]["sessions"]
        assert [s["Id"] for s in listed] == [second, first]
        assert request("GET", f"{base}/proxy/sessions/{first}/providerClaimableBalance")[1] == {"balance": "43"}
        closed_at = listed[0]["ClosedAt"]
        stub.stop()
        stub.start()
        after = {s["Id"]: s for s in request("GET", f"{base}/blockchain/sessions/provider?provider={WALLET}")[1][
            "sessions"]}
        assert after[first]["ClosedAt"] >= after[first]["OpenedAt"] > 0  # the restart ended it
        assert after[second]["ClosedAt"] == closed_at  # already closed: untouched
    finally:
        stub.stop()
    plain = write_rig_folder(tmp_path / "plain", web, proxy)
    stub = StubProcess(plain, web, proxy).start()
    try:
        assert request("POST", stub.base + "/test/sessions", {"model_id": mid(1)})[0] == 404  # off unless asked
    finally:
        stub.stop()


# --- read on the rig ------------------------------------------------------------------------------------------------
def test_the_rig_reads_open_sessions_first_and_claims_a_bounded_number_in_turn(tmp_path):
    closed = [{"Id": mid(500 + n), "User": USER, "Provider": WALLET, "ModelAgentId": mid(1), "BidID": mid(101),
               "Stake": "1000", "PricePerSecond": "20000000000", "ProviderWithdrawnAmount": 0,
               "OpenedAt": 1_700_000_000 + n, "EndsAt": 1_700_003_600 + n, "ClosedAt": 1_700_000_100 + n}
              for n in range(70)]
    still_open = [dict(closed[0], Id=mid(900 + n), OpenedAt=1_600_000_000 + n, ClosedAt=0) for n in range(3)]
    seed = {"sessions": closed + still_open, "claimable": {s["Id"]: str(1000 + n) for n, s in enumerate(closed)}}
    seed["claimable"].update({s["Id"]: "5" for s in still_open})
    web, proxy = free_port(), free_port()
    folder = write_rig_folder(tmp_path / "rig", web, proxy, seed=seed)
    stub = StubProcess(folder, web, proxy).start()
    try:
        client = AdminClient(f"127.0.0.1:{web}", folder / ".cookie")
        state = {}
        first = sessions_fields(lambda: client, {"state": "healthy", "started_at": 123.5}, state)
        second = sessions_fields(lambda: client, {"state": "healthy", "started_at": 123.5}, state)
        stopped = sessions_fields(lambda: client, {"state": "backoff", "started_at": 123.5}, {})
    finally:
        stub.stop()
    sessions = first["sessions"]
    # Old open sessions are not pushed out by newer closed ones; 64 in all.
    assert len(sessions) == 64 and [s["id"] for s in sessions[:3]] == [mid(902), mid(901), mid(900)]
    assert all(s["closed_at"] is None for s in sessions[:3]) and sessions[3]["id"] == mid(569)
    read = [s for s in sessions if s["claimable_wei"] is not None]
    assert len(read) == MAX_CLAIMS and all(s["claimable_wei"] == "5" for s in sessions[:3])
    assert first["claimable_wei"] == str(sum(int(s["claimable_wei"]) for s in read))
    # The next report reads the next closed sessions: every balance gets read again in turn.
    read_next = {s["id"] for s in second["sessions"][3:] if s["claimable_wei"] is not None}
    assert len(read_next) == MAX_CLAIMS - 3 and not read_next & {s["id"] for s in read}
    assert first["started_at"] == 123.5 and stopped == {"sessions": [], "claimable_wei": None, "started_at": 123.5}


# --- written for the reporting rig only, in report order -----------------------------------------------------------
@pytest.fixture
def alpha(db):
    return make_node("alpha")


def published(node, model=1, name="tiny", port=8080):
    build = Build.objects.create(node=node, source="/s", ref="b1", status=Build.READY, binary_path="/b/llama-server")
    rig_file = RigFile.objects.create(node=node, path=f"/m/{name}.gguf", size=1)
    deployment = Deployment.objects.create(node=node, name=name, model_file=rig_file, build=build, port=port,
                                           actual_state="healthy", started_at=timezone.now() - timedelta(hours=1))
    Listing.objects.create(deployment=deployment, model_id=mid(model), model_name=f"{name}-llama")
    return deployment


def serving(deployment, tokens):
    Deployment.objects.filter(pk=deployment.pk).update(serving={"tokens_generated": tokens},
                                                       serving_at=timezone.now())


def send(rig, seq, sessions=(), **changes):
    node, token = rig
    assert handle_report(node.name, token, "router", router_report(sessions, **changes), seq=seq) is None


def test_sessions_are_written_for_the_reporting_rig_only_and_never_from_an_older_report(alpha):
    beta = make_node("beta")
    send(beta, 1, [session(1, claimable="9")])
    send(alpha, 10, [session(1, claimable="5"), session(2)])
    send(alpha, 12, [session(1, closed_at=NOW - 10, claimable="7")])
    send(alpha, 11, [session(1, claimable="6"), session(3)])  # older: nothing of it is written
    rows = {r.session_id: r for r in RouterSession.objects.filter(node=alpha[0])}
    assert set(rows) == {mid(1), mid(2)}
    assert rows[mid(1)].closed_at is not None and rows[mid(1)].claimable_wei == "7"
    assert rows[mid(2)].claimable_wei == "" and rows[mid(2)].is_open
    theirs = RouterSession.objects.get(node=beta[0])
    assert (theirs.session_id, theirs.claimable_wei, theirs.closed_at) == (mid(1), "9", None)
    # A session never opens again, and a balance not read this time keeps its last value.
    send(alpha, 13, [session(1, closed_at=None, claimable=None)])
    row = RouterSession.objects.get(node=alpha[0], session_id=mid(1))
    assert row.closed_at is not None and row.claimable_wei == "7"


def test_sessions_are_matched_to_the_published_deployment_and_count_its_tokens(alpha):
    deployment = published(alpha[0])
    other_rig = make_node("beta")
    published(other_rig[0], model=2, name="other")  # another rig's listing of model 2 is not this rig's
    serving(deployment, 1000)
    send(alpha, 1, [session(1), session(2, model=2)])
    serving(deployment, 1250)
    send(alpha, 2, [session(1, closed_at=NOW), session(2, model=2), session(3)])
    serving(deployment, 1250)
    send(alpha, 3, [session(1, closed_at=NOW), session(3, closed_at=NOW)])
    rows = {r.session_id: r for r in RouterSession.objects.filter(node=alpha[0])}
    assert rows[mid(1)].deployment == deployment and rows[mid(1)].tokens_served == 250
    assert rows[mid(3)].tokens_served == 0  # nothing generated while it was open: delivered nothing
    assert rows[mid(2)].deployment is None and rows[mid(2)].tokens_served is None
    assert "no deployment" in rows[mid(2)].tokens_note


def test_tokens_are_not_counted_across_a_server_restart_or_from_stale_metrics(alpha):
    deployment = published(alpha[0])
    serving(deployment, 5000)
    send(alpha, 1, [session(1), session(2)])
    Deployment.objects.filter(pk=deployment.pk).update(started_at=timezone.now(), serving={"tokens_generated": 10},
                                                       serving_at=timezone.now())
    send(alpha, 2, [session(1, closed_at=NOW)])
    Deployment.objects.filter(pk=deployment.pk).update(serving_at=timezone.now() - timedelta(hours=1))
    send(alpha, 3, [session(3)])
    send(alpha, 4, [session(9, opened_at=NOW - 3600)])
    rows = {r.session_id: r for r in RouterSession.objects.filter(node=alpha[0])}
    assert rows[mid(1)].tokens_served is None and rows[mid(1)].tokens_note == "the server restarted during the session"
    assert rows[mid(3)].tokens_at_open is None and "no recent serving metrics" in rows[mid(3)].tokens_note
    assert rows[mid(9)].tokens_at_open is None and "too late" in rows[mid(9)].tokens_note


def test_a_rig_inventing_sessions_cannot_fill_the_database(alpha, monkeypatch):
    from marketplace import ingest

    monkeypatch.setattr(ingest, "MAX_SESSIONS_PER_RIG", 5)
    send(alpha, 1, [session(n, opened_at=NOW - 1000 + n) for n in range(4)])
    send(alpha, 2, [session(n, opened_at=NOW - 1000 + n) for n in range(4, 8)])
    kept = sorted(RouterSession.objects.filter(node=alpha[0]).values_list("session_id", flat=True))
    assert kept == [mid(n) for n in range(3, 8)]  # the newest


def test_an_open_session_shows_the_tokens_served_so_far(viewer_client, alpha):
    deployment = published(alpha[0])
    Router.objects.create(node=alpha[0], binary_path="/opt/r", state="healthy")
    serving(deployment, 100)
    send(alpha, 1, [session(1)])
    serving(deployment, 160)
    text = page(viewer_client.get("/rigs/alpha/marketplace/sessions/"))
    assert "60 so far" in text.split(f'id="session-{mid(1)}"')[1].split("</tr>")[0]


def test_router_starts_restarts_and_exits_are_recorded_once_and_say_why(alpha, operator):
    send(alpha, 1, started_at=NOW - 600, at=NOW - 590)
    send(alpha, 2, started_at=NOW - 600, at=NOW - 500)  # the same process: nothing new
    send(alpha, 3, started_at=NOW - 600, at=NOW - 400, state="backoff", pid=None,
         message="proxy-router crashed (SIGKILL)")
    send(alpha, 4, started_at=NOW - 100, at=NOW - 90, restarts=1, message="launched pid 5")
    send(alpha, 5, started_at=NOW - 100, at=NOW - 80, restarts=1, state="degraded")
    asked = Operation.objects.create(node=alpha[0], kind=Operation.ROUTER_APPLY, requested_by=operator,
                                     created=datetime.fromtimestamp(NOW - 55, tz=dt_timezone.utc))
    send(alpha, 6, started_at=NOW - 50, at=NOW - 40, restarts=2, message="launched pid 6")
    send(alpha, 4, started_at=NOW - 5, at=NOW, restarts=9)  # an older report: ignored
    kinds = list(RouterEvent.objects.filter(node=alpha[0]).order_by("at", "id").values_list("kind", "detail"))
    assert kinds == [("router_started", "healthy"), ("router_exited", "proxy-router crashed (SIGKILL)"),
                     ("router_restarted", "started again after a crash"),
                     ("router_restarted", f"asked from the panel by olga (operation {asked.pk})")]
    assert not RouterEvent.objects.exclude(node=alpha[0]).exists()


# --- the Sessions page ----------------------------------------------------------------------------------------------
def history(node, count, deployment=None):
    """`count` closed sessions an hour apart, then a router restart that cut the session it closed (mid(1)) and the
    one still open on chain across it (mid(2))."""
    now = timezone.now()
    Router.objects.create(node=node, binary_path="/opt/r", state="healthy",
                          snapshot=clean_router(router_report()))
    restart = RouterEvent.objects.create(node=node, at=now - timedelta(minutes=30), kind=RouterEvent.RESTARTED,
                                         detail="restarted by the panel: asked to")
    rows = []
    for n in range(count):
        opened = now - timedelta(hours=count - n, minutes=5)
        rows.append(RouterSession(node=node, session_id=mid(1000 + n), model_id=mid(1), bid_id=mid(101), user=USER,
                                  price_per_second="20000000000", opened_at=opened,
                                  closed_at=opened + timedelta(minutes=10), claimable_wei=str(10**15),
                                  deployment=deployment, tokens_at_open=100, tokens_at_close=100 + n,
                                  server_started_at=None, first_seen=now, last_seen=now))
    rows.append(RouterSession(node=node, session_id=mid(1), model_id=mid(1), bid_id=mid(101), user=USER,
                              price_per_second="20000000000", opened_at=now - timedelta(minutes=40),
                              closed_at=restart.at + timedelta(seconds=1), claimable_wei="1234567890123456789",
                              first_seen=now, last_seen=now))
    rows.append(RouterSession(node=node, session_id=mid(2), model_id=mid(1), bid_id=mid(101), user=USER,
                              price_per_second="20000000000", opened_at=now - timedelta(minutes=35),
                              first_seen=now, last_seen=now))
    RouterSession.objects.bulk_create(rows)
    return restart


def test_anonymous_is_sent_to_log_in(client, alpha):
    history(alpha[0], 2)
    response = client.get("/rigs/alpha/marketplace/sessions/")
    assert response.status_code == 302 and "/login/" in response["Location"]


@pytest.mark.parametrize("who", ["viewer", "operator"])
def test_viewers_and_operators_read_the_sessions_page(request, alpha, who):
    history(alpha[0], 2)
    response = request.getfixturevalue(f"{who}_client").get("/rigs/alpha/marketplace/sessions/")
    assert response.status_code == 200 and f'id="session-{mid(1)}"' in page(response)


def test_the_page_flags_cut_and_empty_sessions_beside_restarts_and_server_exits(viewer_client, alpha):
    deployment = published(alpha[0])
    restart = history(alpha[0], 3, deployment=deployment)
    ServerExit.objects.create(deployment=deployment, at=timezone.now() - timedelta(hours=3), signal=9, uptime=60,
                              restart_in=1)
    text = page(viewer_client.get("/rigs/alpha/marketplace/sessions/"))
    cut = text.split(f'id="session-{mid(1)}"')[1].split("</tr>")[0]
    assert "cut by a restart" in cut and 'title="1234567890123456789 wei">1.2346 MOR' in cut
    first = text.split(f'id="session-{mid(1000)}"')[1].split("</tr>")[0]
    assert "delivered nothing" in first and "cut by a restart" not in first and "server exit" in first
    assert "delivered nothing" not in text.split(f'id="session-{mid(1001)}"')[1].split("</tr>")[0]
    assert "tiny-llama" in text and 'data-kind="router_restarted"' in text and 'data-kind="server_exit"' in text
    timeline = text.split('id="timeline"')[1]
    kinds = re.findall(r'data-kind="(\w+)"', timeline)
    # Newest first: the session the restart closed, the restart, the sessions open across it; the server exit in
    # the oldest session.
    assert kinds[:4] == ["session_closed", "router_restarted", "session_opened", "session_opened"]
    assert kinds[-3:] == ["session_closed", "server_exit", "session_opened"]
    assert "restarted by the panel: asked to" in timeline and restart.at.strftime("%H:%M:%S") in timeline
    summary = text.split('id="sessions-summary"')[1].split("</p>")[0]
    assert "2</strong> open session" not in summary and "1</strong> open session" in summary
    assert f'title="{3 * 10**15 + 1234567890123456789} wei"' in summary
    assert "2 of the last 5 cut by a router restart" in summary


def test_the_marketplace_page_sums_up_the_sessions_and_links_to_them(viewer_client, alpha):
    history(alpha[0], 1)
    text = page(viewer_client.get("/rigs/alpha/marketplace/"))
    assert 'href="/rigs/alpha/marketplace/sessions/"' in text
    assert "1</strong> open session" in text and "cut by a router restart" in text


def test_the_claimable_total_counts_the_sessions_the_router_still_lists(viewer_client, alpha):
    Router.objects.create(node=alpha[0], binary_path="/opt/r", state="healthy")
    send(alpha, 1, [session(1, claimable="5"), session(2, claimable="7")])
    send(alpha, 2, [session(1, claimable=None)])  # session 2 gone from the list (claimed, or too old to list)
    text = page(viewer_client.get("/rigs/alpha/marketplace/sessions/"))
    assert 'title="5 wei"' in text.split('id="sessions-summary"')[1].split("</p>")[0]
    assert 'title="7 wei"' in text.split(f'id="session-{mid(2)}"')[1].split("</tr>")[0]


def test_the_page_takes_the_same_queries_for_many_sessions(viewer_client, alpha):
    deployment = published(alpha[0])
    history(alpha[0], 1, deployment=deployment)
    with CaptureQueriesContext(connection) as few:
        assert viewer_client.get("/rigs/alpha/marketplace/sessions/").status_code == 200
    RouterSession.objects.filter(node=alpha[0]).delete()
    RouterEvent.objects.all().delete()
    Router.objects.all().delete()
    history(alpha[0], 40, deployment=deployment)
    for n in range(5):
        ServerExit.objects.create(deployment=deployment, at=timezone.now() - timedelta(hours=n + 1), exit_code=1)
    with CaptureQueriesContext(connection) as many:
        text = page(viewer_client.get("/rigs/alpha/marketplace/sessions/"))
    assert text.count('id="session-0x') == 42
    assert len(many.captured_queries) == len(few.captured_queries), json.dumps(
        [q["sql"] for q in many.captured_queries], indent=1)


# --- end to end: a real agent supervising the stand-in, through the panel ------------------------------------------
@pytest.mark.integration
def test_sessions_opened_on_the_router_show_with_their_claimable_and_a_panel_restart_shows_it_cut_them(
        rigs, operator_client, redis_url, tmp_path):
    from tests.test_integration_serving import BrokerWatch
    from tests.test_router_channel import (COOKIE_PASSWORD, WALLET_KEY, _finished, _provider_env, _router_binary,
                                           _snapshot, _stop_router)

    node, token = make_node("alpha")
    router_dir, hooks = tmp_path / "router", tmp_path / "hooks.json"
    _provider_env(router_dir, hooks)
    with open(router_dir / ".env", "a") as env:
        env.write("ROUTERSTUB_TEST_API=1\n")
    binary = _router_binary(tmp_path / "bin")
    rigs.start("alpha", token, extra_env={"MORPHEUS_AGENT_ROUTER_DIR": str(router_dir)})
    broker = BrokerWatch(redis_url)
    pages = []
    try:
        web_port = free_port()
        form = {"binary": str(binary), "network": "testnet", "proxy_port": free_port(), "web_port": web_port}
        assert operator_client.post("/rigs/alpha/marketplace/", form).status_code == 302
        assert _finished(Operation.objects.get(kind=Operation.ROUTER_APPLY)).status == Operation.SUCCEEDED

        # A consumer opens a session on the router: after the next report it is on the page with its claimable.
        started = _snapshot(lambda s, r: s.get("started_at"), "the router's start").snapshot["started_at"]
        wait_until(lambda: time.time() >= started + 1, timeout=5, message="a block after the router's start")
        status, body = request("POST", f"http://127.0.0.1:{web_port}/test/sessions",
                               {"model_id": mid(1), "claimable": str(7 * 10**15)})
        assert status == 200, body
        session_id = body["session"]["Id"]
        assert operator_client.post("/rigs/alpha/marketplace/refresh/").status_code == 302
        _snapshot(lambda s, r: [x["id"] for x in s.get("sessions") or []] == [session_id], "the session reported")
        row = RouterSession.objects.get(node=node, session_id=session_id)
        assert row.is_open and row.claimable_wei == str(7 * 10**15)
        text = page(operator_client.get("/rigs/alpha/marketplace/sessions/"))
        pages.append(text)
        mine = text.split(f'id="session-{session_id}"')[1].split("</tr>")[0]
        assert 'data-state="open"' in text and f'title="{7 * 10**15} wei">0.0070 MOR' in mine
        assert "cut by a restart" not in mine and 'data-kind="router_started"' in text
        summary = page(operator_client.get("/rigs/alpha/marketplace/"))
        pages.append(summary)
        assert "1</strong> open session" in summary and f'title="{7 * 10**15} wei"' in summary

        # Restarted through the panel (asked first): the restart ends the open session, and the page says so. (Block
        # times are whole seconds: the restart comes in a later second than the session's opening.)
        wait_until(lambda: time.time() >= body["session"]["OpenedAt"] + 2, timeout=5, message="the next second")
        first_start = Router.objects.get(node=node).snapshot["started_at"]
        assert operator_client.post("/rigs/alpha/marketplace/", {**form, "confirm_restart": "on"}).status_code == 302
        restart = Operation.objects.filter(kind=Operation.ROUTER_APPLY).order_by("-pk").first()
        assert _finished(restart).status == Operation.SUCCEEDED, restart.message
        _snapshot(lambda s, r: s.get("started_at") != first_start and s.get("sessions")
                  and s["sessions"][0]["closed_at"], "the restarted router's report")
        row.refresh_from_db()
        assert row.closed_at is not None
        assert RouterEvent.objects.filter(node=node, kind=RouterEvent.RESTARTED).count() == 1
        text = page(operator_client.get("/rigs/alpha/marketplace/sessions/"))
        pages.append(text)
        mine = text.split(f'id="session-{session_id}"')[1].split("</tr>")[0]
        events = list(RouterEvent.objects.values_list("kind", "at"))
        assert "cut by a restart" in mine and 'title="router restarted at' in mine, (events, row.opened_at,
                                                                                      row.closed_at)
        assert f"asked from the panel by {restart.requested_by.username} (operation {restart.pk})" in mine
        kinds = re.findall(r'data-kind="(\w+)"', text.split('id="timeline"')[1])
        assert kinds.index("router_restarted") < kinds.index("session_opened") < kinds.index("router_started")
        assert "1 of the last 1 cut by a router restart" in page(operator_client.get("/rigs/alpha/marketplace/"))
    finally:
        broker.close()
        _stop_router(tmp_path / "alpha" / "data" / "state" / "router" / "state.json")

    assert_no_secret(seen_by_the_panel(pages, broker, rigs.logs()),
                     WALLET_KEY, COOKIE_PASSWORD)
