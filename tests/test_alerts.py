"""Alert rules one kind at a time, the run's steps (one alert per cause, pending minutes, resolve, notify once, retry,
claims), email through a real SMTP server and webhooks to a real HTTP receiver, the pages and their roles, and the
query count of a run at 2 and 12 rigs."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from alerts import evaluate, rules
from alerts.models import Alert, AlertEvent, Channel, Rule
from audit.models import AuditEvent
from hosting.models import ServerExit
from marketplace.models import Listing
from nodes.models import GPU
from tests.alertkit import SmtpSink, WebhookReceiver
from tests.helpers import free_port, make_node, page
from tests.test_marketplace_publish import MODEL, make_deployment, make_router

pytestmark = pytest.mark.django_db
GiB = 1024**3
SECRET_PATH = "/hooks/T000/B000/s3cr3t-path"


def rule(kind, **changes):
    found = Rule.objects.get(kind=kind)
    for name, value in changes.items():
        setattr(found, name, value)
    found.save()
    return found


def online(name, **fields):
    return make_node(name, last_seen=timezone.now(), telemetry_interval=5.0, **fields)[0]


def gpu(node, index=0, temp=60.0, vram_used=2 * GiB, vram_total=24 * GiB):
    return GPU.objects.create(node=node, index=index, uuid=f"GPU-{node.name}-{index}", name="RTX 3090",
                              vram_total=vram_total, vram_used=vram_used, temp_c=temp, reading_at=timezone.now())


def firing(kind, now=None):
    return rules.evaluate(Rule.objects.get(kind=kind), rules.Fleet(now or timezone.now()))


@pytest.fixture
def receiver():
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def smtp(settings):
    sink = SmtpSink().start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", sink.port
    yield sink
    sink.stop()


# --- each rule kind ---------------------------------------------------------------------------------
def test_it_seeds_the_default_rules():
    values = {r.kind: (r.enabled, r.limit, r.free_gb, r.window_minutes, r.for_minutes) for r in Rule.objects.all()}
    assert values["gpu_temperature"] == (True, 85, None, None, 5)
    assert values["vram_full"][1] == 95 and values["disk_full"][1:3] == (5, 10)
    assert values["crash_loop"][1:4] == (3, None, 10) and values["clock_skew"][1] == 30
    assert set(values) == set(rules.EVALUATORS)


def test_rig_offline_fires_for_a_rig_unheard_for_five_intervals_only():
    now = timezone.now()
    make_node("gone", last_seen=now - timedelta(seconds=30), telemetry_interval=5.0)
    make_node("stale", last_seen=now - timedelta(seconds=15), telemetry_interval=5.0)
    make_node("never")  # enrolled, never started: not an outage
    online("fine")
    result = firing("rig_offline", now)
    assert list(result.firing) == ["rig:gone"]
    assert "gone is offline" in result.firing["rig:gone"].message and result.firing["rig:gone"].value == 30


def test_gpu_temperature_over_the_limit_only_on_rigs_heard_from():
    alpha, beta = online("alpha"), make_node("beta", last_seen=timezone.now() - timedelta(minutes=5))[0]
    gpu(alpha, 0, temp=91), gpu(alpha, 1, temp=85), gpu(beta, 0, temp=99)
    result = firing("gpu_temperature")
    assert list(result.firing) == ["gpu:alpha:0"]
    assert result.firing["gpu:alpha:0"].message == "alpha GPU 0 (RTX 3090) is at 91 °C (limit 85 °C)."
    assert "beta" in result.unheard  # its alerts are held, not resolved


def test_vram_full_over_the_percentage():
    alpha = online("alpha")
    gpu(alpha, 0, vram_used=int(23.5 * GiB)), gpu(alpha, 1, vram_used=20 * GiB)
    result = firing("vram_full")
    assert list(result.firing) == ["gpu:alpha:0"] and result.firing["gpu:alpha:0"].value == 97.9


@pytest.mark.parametrize("free, total, fires", [(4 * 10**9, 10**12, True),  # under 10 GB
                                                 (100 * 10**9, 10**12, False),  # 10 %
                                                 (40 * 10**9, 10**13, True),  # 0.4 %: under 5 %
                                                 (None, 10**12, False)])
def test_disk_full_below_the_percentage_or_the_gigabytes(free, total, fires):
    online("alpha", hardware={"disk_total": total}, host_reading={} if free is None else {"disk_free": free})
    assert bool(firing("disk_full").firing) is fires


def test_deployment_failed_when_it_should_run():
    alpha = online("alpha")
    bad = make_deployment(alpha, "bad", 8081, actual_state="failed", message="exit 1: out of memory\nmore")
    make_deployment(alpha, "stopped", 8082, actual_state="failed", desired_state="stopped")
    make_deployment(alpha, "good", 8083)
    result = firing("deployment_failed")
    assert list(result.firing) == [f"deployment:{bad.pk}"]
    assert result.firing[f"deployment:{bad.pk}"].message == "alpha/bad failed: exit 1: out of memory."


def test_crash_loop_counts_exits_within_the_window():
    alpha = online("alpha")
    looping, once = make_deployment(alpha, "loop", 8081), make_deployment(alpha, "once", 8082)
    now = timezone.now()
    for minutes in (1, 4, 9, 30):
        ServerExit.objects.create(deployment=looping, at=now - timedelta(minutes=minutes), exit_code=1)
    ServerExit.objects.create(deployment=once, at=now, exit_code=1)
    result = firing("crash_loop", now)
    assert list(result.firing) == [f"deployment:{looping.pk}"] and result.firing[f"deployment:{looping.pk}"].value == 3
    rule("crash_loop", window_minutes=5)
    assert not firing("crash_loop", now).firing


def test_clock_skew_either_way():
    online("ahead", clock_offset=45.0), online("behind", clock_offset=-31.0), online("fine", clock_offset=2.0)
    result = firing("clock_skew")
    assert sorted(result.firing) == ["rig:ahead", "rig:behind"]
    assert "45 s ahead of" in result.firing["rig:ahead"].message


def test_router_unhealthy_and_stopped_while_published():
    alpha, beta, gamma = online("alpha"), online("beta"), online("gamma")
    make_router(alpha, state="degraded"), make_router(beta, state="stopped"), make_router(gamma, state="stopped")
    Listing.objects.create(deployment=make_deployment(beta), model_id=MODEL, model_name="tiny")
    assert sorted(firing("router_unhealthy").firing) == ["router:alpha", "router:beta"]


def test_a_bid_whose_model_is_down():
    alpha, beta = online("alpha"), online("beta")
    bid = {"id": "0x" + "01" * 32, "model_id": MODEL, "price_per_second": "1", "created_at": 1}
    make_router(alpha, bids=[bid]), make_router(beta, bids=[bid])
    Listing.objects.create(deployment=make_deployment(alpha, actual_state="backoff"), model_id=MODEL, model_name="t")
    Listing.objects.create(deployment=make_deployment(beta), model_id=MODEL, model_name="t")
    result = firing("bid_model_down")
    assert list(result.firing) == [f"bid:alpha:{MODEL}"]
    assert "its deployment tiny is backoff" in result.firing[f"bid:alpha:{MODEL}"].message


# --- a run: open, pending minutes, resolve, notify once ------------------------------------------------
def test_one_alert_per_cause_however_often_it_runs(receiver):
    Channel.objects.create(name="hook", kind="webhook", target=receiver.url())
    alpha = online("alpha")
    gpu(alpha, 0, temp=95)
    rule("gpu_temperature", for_minutes=0)
    for _ in range(3):
        evaluate.run()
    assert Alert.objects.count() == 1 and receiver.states() == [("gpu:alpha:0", "open")]
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(rule=Rule.objects.get(kind="gpu_temperature"), cause="gpu:alpha:0", message="again")


def test_it_waits_for_the_rules_minutes_before_opening(receiver):
    Channel.objects.create(name="hook", kind="webhook", target=receiver.url())
    alpha = online("alpha")
    gpu(alpha, 0, temp=95)
    start = timezone.now()

    def run_at(later):
        type(alpha).objects.filter(pk=alpha.pk).update(last_seen=start + later)  # the rig keeps reporting
        evaluate.run(start + later)
        return Alert.objects.get()

    assert run_at(timedelta(0)).state == "pending" and receiver.posts == []
    assert run_at(timedelta(minutes=4, seconds=59)).state == "pending"
    assert run_at(timedelta(minutes=5)).state == "open"
    assert receiver.states() == [("gpu:alpha:0", "open")]


def test_a_pending_alert_whose_cause_went_away_is_forgotten():
    alpha = online("alpha")
    hot = gpu(alpha, 0, temp=95)
    evaluate.run()
    hot.temp_c = 60
    hot.save()
    evaluate.run()
    assert not Alert.objects.exists()


def test_resolving_notifies_once(receiver, smtp):
    Channel.objects.create(name="hook", kind="webhook", target=receiver.url())
    Channel.objects.create(name="ops mail", kind="email", target="ops@example.com")
    node = make_node("alpha", last_seen=timezone.now() - timedelta(minutes=2), telemetry_interval=5.0)[0]
    evaluate.run()
    node.last_seen = timezone.now()
    node.save()
    for _ in range(3):
        evaluate.run()
    assert receiver.states() == [("rig:alpha", "open"), ("rig:alpha", "resolved")]
    assert len(smtp.messages) == 2 and smtp.messages[0][1] == ["ops@example.com"]
    assert smtp.subjects()[0].startswith("Morpheus: [OPEN] Rig offline: alpha is offline")
    assert smtp.subjects()[1].startswith("Morpheus: [RESOLVED]")
    body = receiver.posts[1][2]
    assert body["text"] == body["content"] and body["alert"]["state"] == "resolved"
    assert set(body["alert"]) >= {"rule", "cause", "state", "message", "url", "at"}
    kinds = list(Alert.objects.get().events.values_list("kind", "channel"))
    assert kinds == [("opened", ""), ("notified", "hook"), ("notified", "ops mail"), ("resolved", ""),
                     ("notified", "hook"), ("notified", "ops mail")]


def test_the_same_cause_later_is_a_new_alert():
    node = make_node("alpha", last_seen=timezone.now() - timedelta(minutes=2), telemetry_interval=5.0)[0]
    evaluate.run()
    Node = type(node)
    Node.objects.filter(pk=node.pk).update(last_seen=timezone.now())
    evaluate.run()
    Node.objects.filter(pk=node.pk).update(last_seen=timezone.now() - timedelta(minutes=2))
    evaluate.run()
    assert [a.state for a in Alert.objects.order_by("id")] == ["resolved", "open"]


def test_a_crash_loop_opens_exactly_one_alert(receiver):
    Channel.objects.create(name="hook", kind="webhook", target=receiver.url())
    looping = make_deployment(online("alpha"), "loop", 8081, actual_state="backoff")
    for n in range(6):
        ServerExit.objects.create(deployment=looping, at=timezone.now(), exit_code=1, report_seq=n)
        evaluate.run()
    alert = Alert.objects.get()
    assert alert.cause == f"deployment:{looping.pk}" and alert.value == 6
    assert receiver.states() == [(f"deployment:{looping.pk}", "open")]


def test_a_disabled_rule_resolves_its_alerts():
    make_node("alpha", last_seen=timezone.now() - timedelta(minutes=2), telemetry_interval=5.0)
    evaluate.run()
    rule("rig_offline", enabled=False)
    evaluate.run()
    alert = Alert.objects.get()
    assert alert.state == "resolved" and alert.events.get(kind="resolved").detail == "the rule was disabled"


def test_held_while_the_rig_is_unheard():
    alpha = online("alpha")
    gpu(alpha, 0, temp=95)
    rule("gpu_temperature", for_minutes=0)
    evaluate.run()
    type(alpha).objects.filter(pk=alpha.pk).update(last_seen=timezone.now() - timedelta(minutes=2))
    evaluate.run()
    assert Alert.objects.get(rule__kind="gpu_temperature").state == "open"


# --- failures, retries and claims ----------------------------------------------------------------------
def test_a_failed_notification_is_recorded_retried_and_holds_up_nobody(settings):
    settings.ALERT_NOTIFY_ATTEMPTS = 3
    flaky, good = WebhookReceiver(statuses=[500, 503]).start(), WebhookReceiver().start()
    try:
        Channel.objects.create(name="flaky", kind="webhook", target=flaky.url())
        Channel.objects.create(name="good", kind="webhook", target=good.url())
        make_node("alpha", last_seen=timezone.now() - timedelta(minutes=2), telemetry_interval=5.0)
        evaluate.run()
        alert = Alert.objects.get()
        assert good.states() == [("rig:alpha", "open")] and alert.notified_open_at is None
        failed = alert.events.get(kind=AlertEvent.FAILED)
        assert failed.channel == "flaky" and "answered HTTP 500" in failed.detail and SECRET_PATH not in failed.detail
        evaluate.run()
        evaluate.run()  # third try: the receiver answers 200
        assert len(good.posts) == 1 and len(flaky.posts) == 3
        assert Alert.objects.get().notified_open_at is not None
    finally:
        flaky.stop(), good.stop()


def test_it_gives_up_after_the_bounded_tries(settings):
    settings.ALERT_NOTIFY_ATTEMPTS = 2
    port = free_port()
    Channel.objects.create(name="nobody", kind="webhook", target=f"http://127.0.0.1:{port}/x-secret")
    make_node("alpha", last_seen=timezone.now() - timedelta(minutes=2), telemetry_interval=5.0)
    for _ in range(4):
        evaluate.run()
    alert = Alert.objects.get()
    details = list(alert.events.values_list("kind", "detail"))
    assert details.count(("notify_failed", f"open: could not connect to http://127.0.0.1:{port}")) == 2
    assert details[-1] == ("not_notified", "open: gave up after 2 tries") and alert.notified_open_at


def test_two_workers_never_send_the_same_transition_twice(receiver):
    Channel.objects.create(name="hook", kind="webhook", target=receiver.url())
    make_node("alpha", last_seen=timezone.now() - timedelta(minutes=2), telemetry_interval=5.0)
    now = timezone.now()
    found = evaluate.findings(now)
    evaluate.open_causes(found, [], now)
    first, second = Alert.objects.get(), Alert.objects.get()  # two workers read the same row
    channels = {c.pk: c for c in Channel.objects.all()}
    assert evaluate.notify_one(first, channels, now) is True
    assert evaluate.notify_one(second, channels, now) is False
    assert len(receiver.posts) == 1


def test_a_webhook_redirect_is_not_followed():
    elsewhere = WebhookReceiver().start()
    redirecting = WebhookReceiver(redirect_to=elsewhere.url("/steal")).start()
    try:
        channel = Channel.objects.create(name="hook", kind="webhook", target=redirecting.url())
        ok, result = evaluate.send_test(channel)
        assert not ok and "redirects are not followed" in result and elsewhere.posts == []
        assert SECRET_PATH not in result
    finally:
        elsewhere.stop(), redirecting.stop()


def test_an_unreachable_mail_server_is_a_clear_failure(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()
    ok, result = evaluate.send_test(Channel.objects.create(name="mail", kind="email", target="ops@example.com"))
    assert not ok and f"the mail server at 127.0.0.1:{settings.EMAIL_PORT} refused or was unreachable" in result


def test_the_webhook_url_is_sealed_at_rest(receiver):
    Channel.objects.create(name="hook", kind="webhook", target=receiver.url())
    with connection.cursor() as cursor:
        cursor.execute("SELECT target FROM alerts_channel")
        (stored,) = cursor.fetchone()
    assert stored.startswith("sealed:v1:") and "s3cr3t" not in stored


# --- query count ----------------------------------------------------------------------------------------
def _fleet(count, start):
    for n in range(start, start + count):
        node = make_node(f"rig-{n:02d}", last_seen=timezone.now(), telemetry_interval=5.0, clock_offset=40.0,
                         hardware={"disk_total": 10**12}, host_reading={"disk_free": 10**9})[0]
        for index in range(2):
            gpu(node, index, temp=90, vram_used=int(23.9 * GiB))
        deployment = make_deployment(node, "d", 8080, actual_state="failed")
        for seq in range(3):
            ServerExit.objects.create(deployment=deployment, at=timezone.now(), report_seq=seq)
        make_router(node, state="degraded", bids=[{"id": "0x" + "01" * 32, "model_id": MODEL,
                                                   "price_per_second": "1", "created_at": 1}])


def _steady_queries():
    evaluate.run()  # the first run opens (a write per transition); the next only looks
    with CaptureQueriesContext(connection) as queries:
        evaluate.run()
    return len(queries)


def test_a_steady_run_costs_the_same_queries_at_2_and_12_rigs():
    Rule.objects.update(for_minutes=0)
    _fleet(2, 0)
    small = _steady_queries()
    assert Alert.objects.filter(opened_at__isnull=False).count() >= 2 * 8
    _fleet(10, 2)
    assert _steady_queries() == small <= 15


# --- pages ------------------------------------------------------------------------------------------------
def test_anonymous_is_sent_to_log_in(client):
    for url in ("/alerts/", "/alerts/channels/new/", f"/alerts/rules/{Rule.objects.first().pk}/"):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]


def test_a_viewer_reads_but_cannot_change(viewer_client, receiver):
    channel = Channel.objects.create(name="hook", kind="webhook", target=receiver.url())
    make_node("alpha", last_seen=timezone.now() - timedelta(minutes=2), telemetry_interval=5.0)
    evaluate.run()
    text = page(viewer_client.get("/alerts/"))
    assert "alpha is offline" in text and "notified via hook" in text and "Send test" not in text
    assert SECRET_PATH not in text and f"http://127.0.0.1:{receiver.port}/…" in text
    rule_pk = Rule.objects.first().pk
    for url in (f"/alerts/rules/{rule_pk}/", "/alerts/channels/new/", f"/alerts/channels/{channel.pk}/",
                f"/alerts/channels/{channel.pk}/delete/", f"/alerts/channels/{channel.pk}/test/"):
        assert viewer_client.post(url, {"name": "x", "kind": "email", "target": "a@b.c", "enabled": "on"}
                                  ).status_code == 403
    assert Channel.objects.get().name == "hook" and len(receiver.posts) == 1


def test_an_operator_adds_a_webhook_tests_it_and_never_sees_the_url_again(operator_client, receiver):
    response = operator_client.post("/alerts/channels/new/", {"name": "slack", "kind": "webhook",
                                                              "target": receiver.url(), "enabled": "on"})
    assert response.status_code == 302
    channel = Channel.objects.get()
    edit = page(operator_client.get(f"/alerts/channels/{channel.pk}/"))
    assert SECRET_PATH not in edit and "leave blank to keep" in edit
    operator_client.post(f"/alerts/channels/{channel.pk}/", {"name": "slack-ops", "target": "", "enabled": "on"})
    assert Channel.objects.get().target == receiver.url() and Channel.objects.get().name == "slack-ops"
    text = page(operator_client.post(f"/alerts/channels/{channel.pk}/test/", follow=True))
    assert "Test message to slack-ops: sent at" in text and SECRET_PATH not in text
    assert receiver.posts[0][1] == SECRET_PATH and receiver.posts[0][2]["alert"]["state"] == "test"
    logged = list(AuditEvent.objects.filter(action__startswith="alert.").order_by("id")
                  .values_list("action", "target", "outcome"))
    assert logged == [("alert.channel.add", "slack", "ok"), ("alert.channel.change", "slack-ops", "ok"),
                      ("alert.channel.test", "slack-ops", "ok")]
    assert all(SECRET_PATH not in str(detail) for detail in AuditEvent.objects.values_list("detail", flat=True))


@pytest.mark.parametrize("kind, target, error", [
    ("webhook", "ftp://example.com/hook", "Use an http:// or https:// URL with a host."),
    ("webhook", "https://user:pw@example.com/hook", "Put no user:password in the URL"),
    ("email", "not-an-address", "Enter a valid email address."),
    ("email", "", "Required."),
])
def test_a_bad_channel_is_refused_with_the_reason(operator_client, kind, target, error):
    text = page(operator_client.post("/alerts/channels/new/", {"name": "x", "kind": kind, "target": target}))
    assert error in text and not Channel.objects.exists()
    assert "pw@" not in text


def test_an_operator_edits_a_rule_and_bad_values_are_refused(operator_client):
    temp = Rule.objects.get(kind="gpu_temperature")
    text = page(operator_client.post(f"/alerts/rules/{temp.pk}/", {"enabled": "on", "limit": "", "for_minutes": "2"}))
    assert "This field is required." in text
    vram = Rule.objects.get(kind="vram_full")
    assert "A percentage is at most 100." in page(operator_client.post(
        f"/alerts/rules/{vram.pk}/", {"enabled": "on", "limit": "120", "for_minutes": "2"}))
    operator_client.post(f"/alerts/rules/{temp.pk}/", {"enabled": "on", "limit": "80", "for_minutes": "2"})
    temp.refresh_from_db()
    assert (temp.limit, temp.for_minutes) == (80, 2)


def test_deleting_a_channel_asks_first(operator_client):
    channel = Channel.objects.create(name="mail", kind="email", target="ops@example.com")
    text = page(operator_client.get(f"/alerts/channels/{channel.pk}/delete/"))
    assert "Delete channel mail?" in text and Channel.objects.exists()
    operator_client.post(f"/alerts/channels/{channel.pk}/delete/")
    assert not Channel.objects.exists()


def test_a_subject_stays_one_line_and_the_budget_leaves_the_rest_for_the_next_run(smtp, receiver, monkeypatch):
    Channel.objects.create(name="mail", kind="email", target="ops@example.com")
    for name in ("alpha", "beta"):
        make_node(name, last_seen=timezone.now() - timedelta(minutes=2), telemetry_interval=5.0)
    for pk in (1, 2):
        Alert.objects.create(rule=Rule.objects.get(kind="deployment_failed"), cause=f"deployment:{pk}", rig="gone",
                             opened_at=timezone.now(), message="two\nlines")
    monkeypatch.setattr(evaluate, "NOTIFY_BUDGET", 0.0)
    evaluate.notify_due(timezone.now())
    assert len(smtp.messages) == 1  # the second waits for the next run
    monkeypatch.setattr(evaluate, "NOTIFY_BUDGET", 30.0)
    evaluate.run()  # both resolve (nothing fails): the told one is told again, the other never was; two rigs open
    assert "\n" not in smtp.subjects()[0] and len(smtp.messages) == 1 + 1 + 2
    assert Alert.objects.get(cause="deployment:2").events.get(kind="not_notified").detail == "resolved before its opening was told"
