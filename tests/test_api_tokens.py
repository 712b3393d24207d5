"""The API tokens page (/account/tokens/): anyone logged in makes their own tokens, sees each secret once, revokes
them; the panel keeps only a hash; last use is recorded at most once a minute; creation and revocation are audited."""

import hashlib
import io
import re
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from api.models import ApiToken
from audit.models import AuditEvent
from tests.helpers import page

pytestmark = pytest.mark.django_db
SECRET_RE = re.compile(r"mor_[A-Za-z0-9_-]{43}")


@pytest.fixture(autouse=True)
def _fresh_rate_counts():
    cache.clear()
    yield
    cache.clear()


def _create(client, name="grafana", expires=""):
    response = client.post("/account/tokens/", {"name": name, "expires": expires})
    assert response.status_code == 200
    return response, SECRET_RE.findall(page(response))


def test_it_sends_an_anonymous_visitor_to_the_login_page(client):
    for url in ("/account/tokens/", "/account/tokens/1/revoke/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


@pytest.mark.parametrize("who", ["operator", "viewer"])
def test_it_shows_a_new_token_once_and_keeps_only_its_hash(client, who, request, caplog):
    user = request.getfixturevalue(who)
    client.force_login(user)
    with caplog.at_level("DEBUG"):
        response, [secret] = _create(client)
    assert 'id="token-secret"' in page(response) and response["Cache-Control"] == "no-store"
    token = ApiToken.objects.get()
    assert (token.user, token.name, token.prefix, token.state) == (user, "grafana", secret[:12], "active")
    assert token.hashed == hashlib.sha256(secret.encode()).hexdigest()
    listing = page(client.get("/account/tokens/"))
    assert f"{token.prefix}…" in listing and secret not in listing and 'id="token-secret"' not in listing
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)  # every row of every app: the secret is in none of them
    assert token.hashed in dump.getvalue() and secret not in dump.getvalue()
    event = AuditEvent.objects.get(action__startswith="token.")
    assert (event.action, event.user, event.target, event.detail, event.via) == (
        "token.create", user, "grafana", {"prefix": token.prefix}, "web")
    assert client.get("/api/v1/rigs", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    assert secret not in caplog.text


def test_it_refuses_a_token_without_a_name(client, viewer):
    client.force_login(viewer)
    response = client.post("/account/tokens/", {"name": "  ", "expires": ""})
    assert response.status_code == 200 and "This field is required." in page(response)
    assert not ApiToken.objects.exists() and not SECRET_RE.search(page(response))


def test_a_token_can_expire(client, viewer):
    client.force_login(viewer)
    _response, [secret] = _create(client, expires="30")
    token = ApiToken.objects.get()
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    assert client.get("/api/v1/rigs", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get("/api/v1/rigs", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401
    assert "expired" in page(client.get("/account/tokens/"))


def test_it_revokes_a_token_after_confirmation(client, operator):
    client.force_login(operator)
    _response, [secret] = _create(client)
    token = ApiToken.objects.get()
    confirm = client.get(f"/account/tokens/{token.pk}/revoke/")
    assert confirm.status_code == 200 and 'id="token-revoke-confirm"' in page(confirm)
    assert ApiToken.objects.get().revoked_at is None  # asking is not revoking
    response = client.post(f"/account/tokens/{token.pk}/revoke/", follow=True)
    assert f"Token grafana ({token.prefix}…) revoked" in page(response)
    assert ApiToken.objects.get().state == "revoked"
    assert client.get("/api/v1/rigs", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401
    events = list(AuditEvent.objects.filter(action__startswith="token.").order_by("pk").values_list("action", "target", "detail"))
    assert events == [("token.create", "grafana", {"prefix": token.prefix}),
                      ("token.revoke", "grafana", {"prefix": token.prefix})]
    client.post(f"/account/tokens/{token.pk}/revoke/")  # again: nothing more to record
    assert AuditEvent.objects.filter(action__startswith="token.").count() == 2


def test_nobody_sees_or_revokes_another_users_tokens(client, operator, viewer):
    token, _secret = ApiToken.issue(viewer, "victor's script")
    client.force_login(operator)
    assert "victor's script" not in page(client.get("/account/tokens/"))
    assert client.get(f"/account/tokens/{token.pk}/revoke/").status_code == 404
    assert client.post(f"/account/tokens/{token.pk}/revoke/").status_code == 404
    assert ApiToken.objects.get().revoked_at is None


def test_last_use_is_recorded_at_most_once_a_minute(client, viewer):
    token, secret = ApiToken.issue(viewer, "poller")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    assert token.last_used_at is None
    client.get("/api/v1/rigs", **auth)
    first = ApiToken.objects.get().last_used_at
    assert first is not None and timezone.now() - first < timedelta(seconds=10)
    with CaptureQueriesContext(connection) as queries:
        client.get("/api/v1/rigs", **auth)
    assert ApiToken.objects.get().last_used_at == first
    assert not [q for q in queries if q["sql"].startswith("UPDATE")]  # a busy script costs no write per call
    ApiToken.objects.update(last_used_at=first - timedelta(minutes=2))
    client.get("/api/v1/rigs", **auth)
    last = ApiToken.objects.get().last_used_at
    assert last > first
    client.force_login(viewer)
    row = page(client.get("/account/tokens/")).split(f'id="token-{token.pk}"')[1].split("</tr>")[0]
    assert f'<td class="last-used">{last:%Y-%m-%d %H:%M}</td>' in row


def test_a_token_sent_the_wrong_way_is_refused_and_not_logged(client, viewer, settings, caplog):
    settings.DEBUG = True  # django-ninja's own bearer class logs such a header whole in DEBUG
    _token, secret = ApiToken.issue(viewer, "typo")
    with caplog.at_level("DEBUG"):
        for header in (f"Token {secret}", f"Basic {secret}", secret, f"Bearer {secret}x"):
            assert client.get("/api/v1/rigs", HTTP_AUTHORIZATION=header).status_code == 401
    assert secret not in caplog.text and "typo" not in caplog.text


@pytest.mark.browser
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_in_chromium_a_token_is_shown_once_then_revoked(page, live_server, viewer):
    from playwright.sync_api import expect

    from tests.test_browser import WAIT_MS, log_in

    log_in(page, live_server, "victor", "viewer-pass-1")
    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("Name").fill("grafana")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#token-secret").inner_text(timeout=WAIT_MS).strip()
    assert SECRET_RE.fullmatch(secret)
    expect(page.locator("#token-list")).to_contain_text(f"{secret[:12]}…")
    page.goto(f"{live_server.url}/account/tokens/")
    expect(page.locator("#token-secret")).to_have_count(0)
    assert secret not in page.content()
    page.locator("#token-list tr", has_text=secret[:12]).get_by_role("link", name="Revoke…").click()
    page.get_by_role("button", name="Revoke token").click()
    expect(page.get_by_text(f"Token grafana ({secret[:12]}…) revoked")).to_be_visible()
    assert ApiToken.objects.get(prefix=secret[:12]).state == "revoked"
