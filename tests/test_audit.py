"""The audit log: each action that is not an operation writes one event (who, from where, how it ended); the page
merges those events with the operations, filters them, pages them in a constant number of queries, and exports
exactly the filtered rows as CSV that a spreadsheet cannot run."""

import csv
import importlib.machinery
import importlib.util
import io
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.log import record
from audit.models import AuditEvent
from audit.views import safe_cell
from hosting.models import EconomicsSettings
from nodes import reauth
from nodes.models import Node, Operation
from nodes.permissions import OPERATORS_GROUP, VIEWERS_GROUP
from tests.helpers import make_node, page
from tests.test_envconf import settings_import

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent

ADDRESS = "203.0.113.9"
AT = {"REMOTE_ADDR": ADDRESS}


def events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


def only(action):
    found = events(action)
    assert len(found) == 1, [str(e) for e in found]
    return found[0]


def no_secret_in_log(*secrets):
    text = " ".join(f"{e.username} {e.action} {e.target} {e.detail}" for e in AuditEvent.objects.all())
    for secret in secrets:
        assert secret not in text


def code_for(device):
    return str(totp(device.bin_key, device.step, device.t0, device.digits)).zfill(device.digits)


def csv_rows(response):
    assert response["Content-Type"].startswith("text/csv")
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


# --- logins --------------------------------------------------------------------------------------------------------
def test_it_records_a_login_with_the_user_and_address(client, operator):
    client.post("/login/", {"username": "olga", "password": "operator-pass-1"}, **AT)
    event = only("login")
    assert (event.user, event.username, event.address, event.outcome, event.via) == (
        operator, "olga", ADDRESS, AuditEvent.OK, AuditEvent.WEB)


def test_it_records_a_failed_login_with_the_name_tried_and_never_the_password(client, operator):
    client.post("/login/", {"username": "olga", "password": "Wrong-Secret-77"}, **AT)
    event = only("login")
    assert (event.user, event.username, event.address, event.outcome) == (None, "olga", ADDRESS, AuditEvent.FAILED)
    no_secret_in_log("Wrong-Secret-77")


def test_it_records_a_login_refused_by_the_lockout(client, operator, settings):
    settings.AXES_FAILURE_LIMIT = 2
    for _ in range(3):
        client.post("/login/", {"username": "olga", "password": "guess"}, **AT)
    assert [(e.outcome, e.detail) for e in events("login")] == [
        (AuditEvent.FAILED, {}), (AuditEvent.REFUSED, {"locked_out": True}), (AuditEvent.REFUSED, {"locked_out": True})]


def test_it_records_a_logout(client, operator):
    client.force_login(operator)
    client.post("/logout/", **AT)
    event = only("logout")
    assert (event.user, event.address) == (operator, ADDRESS)


def test_it_records_second_factor_codes_right_and_wrong(client, operator):
    device = TOTPDevice.objects.create(user=operator, name="phone", confirmed=True)
    client.post("/login/", {"username": "olga", "password": "operator-pass-1"}, **AT)
    client.post("/login/verify/", {"code": "000000" if code_for(device) != "000000" else "111111"}, **AT)
    device.throttle_reset()  # django-otp makes the next try wait after a wrong code
    client.post("/login/verify/", {"code": code_for(device)}, **AT)
    assert [(e.username, e.outcome, e.address) for e in events("login.code")] == [
        ("olga", AuditEvent.FAILED, ADDRESS), ("olga", AuditEvent.OK, ADDRESS)]
    assert only("login").detail == {"code": "asked next"}


def test_it_records_no_address_when_the_server_gives_none_that_reads_as_one(client, operator):
    client.post("/login/", {"username": "olga", "password": "guess"}, REMOTE_ADDR="unix:/run/panel.sock")
    assert only("login").address is None


def test_it_takes_the_address_from_a_trusted_proxy_only(client, operator, settings):
    forwarded = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": f"198.51.100.66, {ADDRESS}"}
    client.post("/login/", {"username": "olga", "password": "guess"}, **forwarded)
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    client.post("/login/", {"username": "olga", "password": "guess"}, **forwarded)
    # Two proxies in a row: the client is the last hop that is not one of them.
    client.post("/login/", {"username": "olga", "password": "guess"}, REMOTE_ADDR="10.0.0.2",
                HTTP_X_FORWARDED_FOR=f"198.51.100.66, {ADDRESS}, 10.0.0.3")
    client.post("/login/", {"username": "olga", "password": "guess"}, REMOTE_ADDR="10.0.0.2",
                HTTP_X_FORWARDED_FOR="not-an-address")
    # The first hop is whatever the client wrote; the proxy vouches only for the address it saw.
    assert [e.address for e in events("login")] == ["10.0.0.2", ADDRESS, ADDRESS, "10.0.0.2"]
    # The lockout counts failures by the same address.
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"10.0.0.2", ADDRESS}


def test_it_refuses_to_start_with_a_trusted_proxy_it_cannot_read():
    done = settings_import(MORPHEUS_TRUSTED_PROXIES="10.0.0.1,proxy.local")
    assert done.returncode != 0
    assert "MORPHEUS_TRUSTED_PROXIES: 'proxy.local' is not an address or a network" in done.stderr
    assert settings_import(MORPHEUS_TRUSTED_PROXIES="10.0.0.1, 172.18.0.0/16,::1").returncode == 0


# --- second factor, password again, lockouts ---------------------------------------------------------------------
def test_it_records_a_second_factor_added_and_removed(client, operator):
    client.force_login(operator)
    client.get("/security/")
    pending = TOTPDevice.objects.get(user=operator)
    client.post("/security/", {"code": code_for(pending)}, **AT)
    assert (only("2fa.add").user, only("2fa.add").address) == (operator, ADDRESS)
    client.post("/security/remove/", {"password": "Not-It-42"}, **AT)
    client.post("/security/remove/", {"password": "operator-pass-1"}, **AT)
    assert [(e.user, e.outcome) for e in events("2fa.remove")] == [
        (operator, AuditEvent.FAILED), (operator, AuditEvent.OK)]
    # A wrong password here is this action's failure, not a failed login.
    assert not AuditEvent.objects.filter(action="login").exclude(outcome=AuditEvent.OK).exists()
    no_secret_in_log("Not-It-42", "operator-pass-1", pending.key)


def test_it_records_the_password_confirmed_again(client, operator):
    client.force_login(operator)
    client.post("/login/confirm/", {"password": "Nope-Nope-1", "next": "/"}, **AT)
    client.post("/login/confirm/", {"password": "operator-pass-1", "next": "/"}, **AT)
    assert [(e.user, e.outcome, e.address) for e in events("password.confirm")] == [
        (operator, AuditEvent.FAILED, ADDRESS), (operator, AuditEvent.OK, ADDRESS)]
    assert not AuditEvent.objects.filter(action="login").exclude(outcome=AuditEvent.OK).exists()
    no_secret_in_log("Nope-Nope-1", "operator-pass-1")


def test_it_records_a_lockout_lifted(operator_client, settings):
    settings.AXES_FAILURE_LIMIT = 1
    Client().post("/login/", {"username": "victim", "password": "guess"}, REMOTE_ADDR="192.0.2.1")
    operator_client.post("/security/lockouts/unlock/", {"username": "victim", "ip_address": "192.0.2.1"}, **AT)
    operator_client.post("/security/lockouts/unlock/", {"username": "victim", "ip_address": "192.0.2.1"}, **AT)
    assert [(e.username, e.target, e.outcome, e.address) for e in events("lockout.unlock")] == [
        ("olga", "victim from 192.0.2.1", AuditEvent.OK, ADDRESS),
        ("olga", "victim from 192.0.2.1", AuditEvent.FAILED, ADDRESS)]


# --- users and roles -----------------------------------------------------------------------------------------------
def test_it_records_roles_given_and_taken_by_a_command(db):
    operators = Group.objects.get_or_create(name=OPERATORS_GROUP)[0]
    viewers = Group.objects.get_or_create(name=VIEWERS_GROUP)[0]
    user = User.objects.create_user("paula", password="paula-pass-1")
    user.groups.add(viewers)
    user.groups.set([operators])
    user.groups.clear()
    operators.user_set.add(user)
    assert [(e.target, e.detail, e.via, e.user) for e in events("role.change")] == [
        ("paula", {"added": ["viewers"]}, "system", None),
        ("paula", {"removed": ["viewers"]}, "system", None),
        ("paula", {"added": ["operators"]}, "system", None),
        ("paula", {"removed": ["operators"]}, "system", None),
        ("paula", {"added": ["operators"]}, "system", None)]
    assert only("user.create").target == "paula"


def test_it_records_users_changed_in_the_admin_by_whom_and_from_where(client, db):
    admin = User.objects.create_superuser("root", password="root-pass-1")
    viewers = Group.objects.get_or_create(name=VIEWERS_GROUP)[0]
    client.force_login(admin)
    session = client.session
    session[reauth.SESSION_KEY] = time.time()
    session.save()
    client.post("/admin/auth/user/add/", {"username": "paula", "password1": "Long-Pass-9x", "password2": "Long-Pass-9x",
                                          "usable_password": "true"}, **AT)
    paula = User.objects.get(username="paula")
    form = {"username": "paula", "is_active": "on", "is_superuser": "on", "groups": [viewers.pk],
            "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00", "initial-date_joined_0": "2026-01-01",
            "initial-date_joined_1": "00:00:00"}
    response = client.post(f"/admin/auth/user/{paula.pk}/change/", form, **AT)
    assert response.status_code == 302, page(response)
    client.post(f"/admin/auth/user/{paula.pk}/delete/", {"post": "yes"}, **AT)
    by_action = {e.action: e for e in AuditEvent.objects.filter(target="paula")}
    assert set(by_action) >= {"user.create", "role.change", "user.delete"}
    for event in by_action.values():
        assert (event.user, event.address, event.via) == (admin, ADDRESS, AuditEvent.WEB)
    changes = sorted(str(e.detail) for e in AuditEvent.objects.filter(action="role.change", target="paula"))
    assert changes == [str({"added": ["viewers"]}), str({"superuser": True})]
    no_secret_in_log("Long-Pass-9x")


def test_it_records_a_user_deactivated(db):
    user = User.objects.create_user("paula")
    user.is_active = False
    user.save()
    user.last_login = timezone.now()
    user.save(update_fields=["last_login"])
    assert only("user.deactivate").target == "paula"


# --- rigs and settings ---------------------------------------------------------------------------------------------
def test_it_records_a_rig_enrolled_its_token_replaced_and_removed(operator_client):
    response = operator_client.post("/rigs/add/", {"name": "rig-07", "notes": ""}, **AT)
    assert response.status_code == 200
    token = Node.objects.get(name="rig-07").token
    operator_client.post("/rigs/rig-07/rotate-token/", **AT)
    operator_client.post("/rigs/rig-07/delete/", **AT)
    for action in ("rig.enrol", "rig.token", "rig.remove"):
        event = only(action)
        assert (event.username, event.target, event.address, event.outcome) == ("olga", "rig-07", ADDRESS, "ok")
    no_secret_in_log(token)


def test_it_records_where_an_operation_was_asked_from(operator_client, operator, django_capture_on_commit_callbacks):
    from nodes.operations import start_operation

    node, _ = make_node("rig-02")
    with django_capture_on_commit_callbacks(execute=True):
        assert operator_client.post("/rigs/rig-02/operations/ping/", **AT).status_code == 302
        by_the_panel = start_operation(node, Operation.PING)  # no request: the panel's own work
    asked = Operation.objects.exclude(pk=by_the_panel.pk).get()
    assert (asked.requested_by, asked.requested_from, asked.requested_via) == (operator, ADDRESS, "web")
    assert (by_the_panel.requested_from, by_the_panel.requested_via) == (None, "system")
    rows = {row["id"]: row for row in csv_rows(operator_client.get("/audit/?format=csv&action=ping"))}
    assert (rows[str(asked.pk)]["address"], rows[str(asked.pk)]["channel"]) == (ADDRESS, "web")
    assert (rows[str(by_the_panel.pk)]["address"], rows[str(by_the_panel.pk)]["channel"]) == ("", "system")


# Transactional (ensure_local_rig closes the connections) with a serialized rollback, like the browser tests: a plain
# flush breaks their restore.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_it_records_this_machines_rig_enrolled_by_scripts_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    loader = importlib.machinery.SourceFileLoader("scripts_run_under_test", str(ROOT / "scripts" / "run"))
    run = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(run)
    name, token, _ = run.ensure_local_rig(tmp_path)
    run.ensure_local_rig(tmp_path)  # the token file matches: nothing happens
    (tmp_path / "local-rig.json").unlink()
    _, new_token, _ = run.ensure_local_rig(tmp_path)
    assert [(e.action, e.target, e.via, e.user) for e in events("rig.enrol") + events("rig.token")] == [
        ("rig.enrol", name, AuditEvent.SYSTEM, None), ("rig.token", name, AuditEvent.SYSTEM, None)]
    no_secret_in_log(token, new_token)


def test_it_records_the_economics_settings_changed(operator_client):
    row = EconomicsSettings.current()
    operator_client.post("/economics/", {"electricity_usd_per_kwh": "0.2500", "mor_usd": str(row.mor_usd),
                                         "amortisation_months": row.amortisation_months,
                                         "cpu_rig_watts": row.cpu_rig_watts}, **AT)
    event = only("economics.change")
    assert event.detail == {"electricity_usd_per_kwh": [str(row.electricity_usd_per_kwh), "0.2500"]}
    assert (event.username, event.address) == ("olga", ADDRESS)


# --- the page ------------------------------------------------------------------------------------------------------
def _ago(minutes):
    """Minutes before noon today (UTC), so that "today" holds the recent rows at any time of day."""
    return timezone.now().replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(minutes=minutes)


def _event(action, minutes_ago, **fields):
    event = record(action, **fields)
    AuditEvent.objects.filter(pk=event.pk).update(at=_ago(minutes_ago))
    return event


def _operation(node, kind, minutes_ago, user=None, status=Operation.SUCCEEDED, target="", **asked):
    return Operation.objects.create(node=node, kind=kind, requested_by=user, status=status, target=target,
                                    created=_ago(minutes_ago), **asked)


@pytest.fixture
def log(operator, viewer):
    """Events and operations interleaved in time: newest first they read e1 o1 e2 o2 e3 o3."""
    AuditEvent.objects.all().delete()  # the fixtures' own users and roles
    node, _ = make_node("rig-01")
    return {
        "e1": _event("token.create", 1, user=operator, target="laptop script", via=AuditEvent.API),
        "o1": _operation(node, Operation.LAUNCH, 2, user=operator, status=Operation.FAILED, target="qwen",
                         requested_from=ADDRESS, requested_via=AuditEvent.API),
        "e2": _event("login", 3, username="mallory", outcome=AuditEvent.FAILED, via=AuditEvent.WEB),
        "o2": _operation(node, Operation.PING, 4, status=Operation.RUNNING),
        "e3": _event("rig.enrol", 60 * 24 * 3, user=operator, target="rig-01", via=AuditEvent.WEB),
        "o3": _operation(node, Operation.DOWNLOAD_MODEL, 60 * 24 * 3 + 1, user=viewer, target="=HYPERLINK(1)"),
    }


def shown(response):
    """(source, action) of the rows on the page, top to bottom."""
    return re.findall(r'<tr data-source="(\w+)" data-action="([\w.]+)"', response.content.decode())


@pytest.mark.parametrize("who, status", [("anonymous", 302), ("viewer", 200), ("operator", 200)])
def test_it_shows_the_log_to_viewers_and_operators_only(client, operator, viewer, log, who, status):
    if who != "anonymous":
        client.force_login(viewer if who == "viewer" else operator)
    for url in ("/audit/", "/audit/?format=csv"):
        response = client.get(url)
        assert response.status_code == status
        if status == 302:
            assert response["Location"].startswith("/login/")


def test_it_lists_events_and_operations_newest_first(viewer_client, log):
    response = viewer_client.get("/audit/")
    assert shown(response)[:6] == [("event", "token.create"), ("operation", "launch"), ("event", "login"),
                                   ("operation", "ping"), ("event", "rig.enrol"), ("operation", "download_model")]
    text = page(response)
    assert "API token created" in text and "launch server" in text and "mallory" in text
    assert 'href="/audit/"' in text  # in the navigation


@pytest.mark.parametrize("query, expected", [
    ("user=olga", ["e1", "o1", "e3"]),
    ("user=mallory", ["e2"]),
    ("action=launch", ["o1"]),
    ("action=login", ["e2"]),
    ("outcome=failed", ["o1", "e2"]),
    ("outcome=pending", ["o2"]),
    ("outcome=ok", ["e1", "e3", "o3"]),
    ("q=rig-01", ["o1", "o2", "e3", "o3"]),
    ("q=laptop", ["e1"]),
    ("via=api", ["e1", "o1"]),
    ("via=system", ["o2"]),
    ("since={today}", ["e1", "o1", "e2", "o2"]),
    ("until={three_days_ago}", ["e3", "o3"]),
    ("user=olga&outcome=ok&since={three_days_ago}&until={today}", ["e1", "e3"]),
])
def test_it_filters_the_page_and_the_csv_alike(viewer_client, log, query, expected):
    today = timezone.now().date()
    query = query.format(today=today.isoformat(), three_days_ago=(timezone.now() - timedelta(days=3)).date())
    expected_rows = [("operation" if name[0] == "o" else "event", log[name].pk) for name in expected]
    response = viewer_client.get(f"/audit/?{query}")
    assert response.status_code == 200
    actions = [(("operation" if name[0] == "o" else "event"),
                log[name].kind if name[0] == "o" else log[name].action) for name in expected]
    assert [row for row in shown(response) if row[1] != "audit.export"] == actions
    rows = [row for row in csv_rows(viewer_client.get(f"/audit/?{query}&format=csv")) if row["action"] != "audit.export"]
    assert [(row["source"], int(row["id"])) for row in rows] == expected_rows


def test_it_exports_every_column_with_iso_times_and_records_the_export(viewer_client, viewer, log):
    rows = csv_rows(viewer_client.get("/audit/?format=csv"))
    export = only("audit.export")  # recorded before the rows are read, so it is among them
    assert (export.user, export.outcome) == (viewer, AuditEvent.OK)
    assert [(row["user"], row["id"]) for row in rows if row["action"] == "audit.export"] == [("victor", str(export.pk))]
    rows = [row for row in rows if row["action"] != "audit.export"]
    assert list(rows[0]) == ["time", "user", "action", "target", "rig", "outcome", "address", "channel", "source",
                             "id", "detail"]
    first = rows[0]
    e1 = AuditEvent.objects.get(pk=log["e1"].pk)
    assert first == {"time": e1.at.isoformat(), "user": "olga", "action": "token.create", "target": "laptop script",
                     "rig": "", "outcome": "ok", "address": "", "channel": "api", "source": "event",
                     "id": str(e1.pk), "detail": ""}
    launch = rows[1]
    assert (launch["user"], launch["rig"], launch["outcome"], launch["target"], launch["channel"],
            launch["address"]) == ("olga", "rig-01", "failed", "qwen", "api", ADDRESS)
    assert timezone.datetime.fromisoformat(launch["time"]) == log["o1"].created


def test_it_neutralises_formulas_in_the_csv(viewer_client, log):
    _event("login", 0, username="=cmd|' /C calc'!A0", outcome=AuditEvent.FAILED)
    _event("rig.enrol", 0, username="olga", target="@SUM(1+1)")
    _event("rig.enrol", 0, username="olga", target="+1-2", detail={"note": "-3"})
    rows = csv_rows(viewer_client.get("/audit/?format=csv"))
    cells = [cell for row in rows for cell in row.values()]
    assert "'=cmd|' /C calc'!A0" in cells and "'@SUM(1+1)" in cells and "'+1-2" in cells
    assert "'=HYPERLINK(1)" in cells and "'note: -3" not in cells and "note: -3" in cells
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@")]
    assert [safe_cell(v) for v in ("=1", "+1", "-1", "@a", "\tx", "ok", "", None, 5)] == [
        "'=1", "'+1", "'-1", "'@a", "'\tx", "ok", "", "", "5"]


def test_it_refuses_bad_filters_with_a_clear_error(viewer_client, log):
    for query, message in [("since=yesterday", "since: Enter a valid date."),
                           ("since=2026-02-02&until=2026-02-01", "The “From” day is after the “To” day."),
                           ("outcome=maybe", "Select a valid choice"), ("via=fax", "Select a valid choice")]:
        response = viewer_client.get(f"/audit/?{query}")
        assert response.status_code == 400 and message in page(response)
        assert viewer_client.get(f"/audit/?{query}&format=csv").status_code == 400


def _fill(count, node, user, now=None):
    """`count` events and `count` operations, interleaved in time; every third pair at the very same instant."""
    now = now or timezone.now()
    created = AuditEvent.objects.bulk_create([AuditEvent(action="login", username=user.username, user=user,
                                                         address="192.0.2.5") for _ in range(count)])
    for i, event in enumerate(created):
        event.at = now - timedelta(seconds=i + (0 if i % 3 == 0 else 0.5))
    AuditEvent.objects.bulk_update(created, ["at"])
    Operation.objects.bulk_create([Operation(node=node, kind=Operation.PING, requested_by=user,
                                             created=now - timedelta(seconds=i)) for i in range(count)])


def test_it_pages_in_a_constant_number_of_queries(viewer_client, viewer, settings):
    settings.AUDIT_PAGE_SIZE = 20
    node, _ = make_node("rig-01")
    _fill(3, node, viewer)
    with CaptureQueriesContext(connection) as few:
        assert viewer_client.get("/audit/").status_code == 200
    _fill(40, node, viewer)
    with CaptureQueriesContext(connection) as many:
        response = viewer_client.get("/audit/?page=2")
    assert response.status_code == 200 and len(shown(response)) == 20
    assert len(many) == len(few), [q["sql"] for q in many]


def test_it_pages_through_the_merged_log_without_gaps_or_repeats(viewer_client, viewer, settings):
    settings.AUDIT_PAGE_SIZE = 7
    node, _ = make_node("rig-01")
    AuditEvent.objects.all().delete()
    _fill(12, node, viewer)
    seen = []
    for number in range(1, 5):
        response = viewer_client.get(f"/audit/?page={number}")
        seen += shown(response)
    assert len(seen) == 24 and seen.count(("event", "login")) == 12 and seen.count(("operation", "ping")) == 12
    assert "page 4 of 4" in page(viewer_client.get("/audit/?page=4"))
    with_ids = [(row["source"], row["id"]) for row in csv_rows(viewer_client.get("/audit/?format=csv"))
                if row["action"] != "audit.export"]
    assert len(set(with_ids)) == 24


def test_every_page_is_the_same_window_of_the_whole_merged_log(db, viewer):
    from audit import trail

    node, _ = make_node("rig-01")
    AuditEvent.objects.all().delete()
    _fill(13, node, viewer)
    log = trail.rows()
    whole = [(row["a_source"], row["a_id"]) for row in log.iterator()]
    assert len(whole) == log.count() == 26
    assert [source for source, _ in whole[:6]] == ["operation", "event", "operation", "event", "operation", "event"]
    times = [row["a_at"] for row in log.iterator()]
    assert times == sorted(times, reverse=True)
    for size in (1, 4, 7, 26):
        for start in range(0, 26, size):
            assert [(row["a_source"], row["a_id"]) for row in log[start:start + size]] == whole[start:start + size]
