"""Operator logins: the lockout after failed logins, the locked-out logins page, the TOTP second factor."""

import os
import subprocess
import sys

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import SESSION_KEY
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice
from tests.helpers import page

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def log_in(client, username, password, url="/login/", **extra):
    return client.post(url, {"username": username, "password": password}, **extra)


def logged_in(client):
    return SESSION_KEY in client.session


def code_for(device):
    """The code an authenticator app shows now."""
    return str(totp(device.bin_key, device.step, device.t0, device.digits)).zfill(device.digits)


@pytest.fixture
def device(operator):
    return TOTPDevice.objects.create(user=operator, name="phone", confirmed=True)


# --- the lockout ----------------------------------------------------------------------------------------------
def test_it_logs_in_with_the_right_password(client, operator):
    response = log_in(client, "olga", "operator-pass-1")
    assert response.status_code == 302 and response["Location"] == "/"
    assert logged_in(client)


def test_it_refuses_the_right_password_after_thirty_wrong_ones(client, operator):
    for _ in range(30):
        log_in(client, "olga", "guess")
    response = log_in(client, "olga", "operator-pass-1")
    assert response.status_code == 429
    assert "Locked out" in page(response) and "<strong>olga</strong> from this address" in page(response)
    assert "15 minutes" in page(response) and "An operator can unlock you" in page(response)
    assert not logged_in(client)
    assert client.get("/").status_code == 302


def test_it_locks_out_at_the_failure_limit_not_before(client, operator):
    for _ in range(4):
        assert log_in(client, "olga", "guess").status_code == 200
    assert log_in(client, "olga", "operator-pass-1").status_code == 302  # four wrong ones are forgiven


def test_it_locks_out_on_the_fifth_failure_with_the_panels_page(client, operator):
    responses = [log_in(client, "olga", "guess") for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 4 + [429]
    assert "Wrong username or password" in page(responses[3])
    assert "Locked out" in page(responses[4])


def test_it_locks_out_a_name_only_from_the_address_it_failed_from(client, operator, viewer):
    for _ in range(5):
        log_in(client, "olga", "guess")
    assert log_in(Client(), "victor", "viewer-pass-1").status_code == 302  # another name, same address
    assert log_in(Client(), "olga", "operator-pass-1", REMOTE_ADDR="10.0.0.7").status_code == 302


def test_it_locks_out_the_admin_login_too(client, operator):
    for _ in range(5):
        response = log_in(client, "olga", "guess", url="/admin/login/?next=/admin/")
    assert response.status_code == 429 and "Locked out" in page(response)
    response = log_in(client, "olga", "operator-pass-1", url="/admin/login/?next=/admin/")
    assert response.status_code == 429 and not logged_in(client)


def test_it_takes_the_limits_from_the_environment(settings):
    env = {**os.environ, "MORPHEUS_LOGIN_FAILURE_LIMIT": "3", "MORPHEUS_LOGIN_COOLOFF_MINUTES": "60",
           "MORPHEUS_REAUTH_MINUTES": "2", "MORPHEUS_REQUIRE_2FA_FOR_OPERATORS": "yes",
           "DJANGO_SETTINGS_MODULE": "morpheus_admin.settings"}
    code = ("from django.conf import settings as s; print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME, "
            "s.REAUTH_MINUTES, s.REQUIRE_2FA_FOR_OPERATORS)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=settings.BASE_DIR, capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["3", "1:00:00", "2", "True"]
    env["MORPHEUS_REQUIRE_2FA_FOR_OPERATORS"] = "maybe"
    failed = subprocess.run([sys.executable, "-c", code], env=env, cwd=settings.BASE_DIR, capture_output=True, text=True)
    assert failed.returncode != 0 and "is not a boolean" in failed.stderr


# --- the locked-out logins page ---------------------------------------------------------------------------------
@pytest.mark.parametrize("who, status", [("anonymous", 302), ("viewer", 403), ("operator", 200)])
def test_it_shows_the_lockouts_only_to_operators(request, client, operator, viewer, who, status):
    for _ in range(5):
        log_in(Client(), "victor", "guess")
    if who != "anonymous":
        client.force_login(request.getfixturevalue(who))
    response = client.get("/security/lockouts/")
    assert response.status_code == status
    if status == 200:
        assert "victor" in page(response) and "127.0.0.1" in page(response)
        assert 'action="/security/lockouts/unlock/"' in page(response)


@pytest.mark.parametrize("who, status", [("anonymous", 302), ("viewer", 403), ("operator", 302)])
def test_it_lets_only_an_operator_unlock_a_login(request, client, operator, viewer, who, status):
    for _ in range(5):
        log_in(Client(), "victor", "guess")
    if who != "anonymous":
        client.force_login(request.getfixturevalue(who))
    response = client.post("/security/lockouts/unlock/", {"username": "victor", "ip_address": "127.0.0.1"})
    assert response.status_code == status
    victor = log_in(Client(), "victor", "viewer-pass-1")
    assert victor.status_code == (302 if who == "operator" else 429)


def test_it_lists_no_lockout_under_the_limit_or_after_an_unlock(operator_client, operator):
    for _ in range(3):
        log_in(Client(), "mallory", "guess")
    assert "No login is locked out" in page(operator_client.get("/security/lockouts/"))
    for _ in range(2):
        log_in(Client(), "mallory", "guess")
    assert "mallory" in page(operator_client.get("/security/lockouts/"))
    response = operator_client.post("/security/lockouts/unlock/", {"username": "mallory", "ip_address": "127.0.0.1"},
                                    follow=True)
    assert "Unlocked mallory from 127.0.0.1" in page(response) and "No login is locked out" in page(response)
    assert not AccessAttempt.objects.exists()


def test_it_never_unlocks_everyone_for_an_empty_form(operator_client):
    for _ in range(5):
        log_in(Client(), "mallory", "guess")
    response = operator_client.post("/security/lockouts/unlock/", {}, follow=True)
    assert "No such lockout" in page(response)
    assert AccessAttempt.objects.filter(username="mallory").exists()


# --- the Security page: enrolling a TOTP device ---------------------------------------------------------------------
@pytest.mark.parametrize("who, status", [("anonymous", 302), ("viewer", 200), ("operator", 200)])
def test_it_offers_every_user_their_own_security_page(request, client, operator, viewer, who, status):
    if who != "anonymous":
        client.force_login(request.getfixturevalue(who))
    response = client.get("/security/")
    assert response.status_code == status
    if status == 200:
        content = page(response)
        assert "Set up two-factor login" in content and "<svg" in content and 'id="totp-secret"' in content
        assert ("Locked-out logins" in content) == (who == "operator")
        assert 'href="/security/"' in content  # in the nav


def test_it_keeps_the_secret_until_confirmed_and_draws_it_as_a_qr_code(operator_client, operator):
    first, second = page(operator_client.get("/security/")), page(operator_client.get("/security/"))
    device = TOTPDevice.objects.get(user=operator)
    assert not device.confirmed
    secret = first.split('id="totp-secret">')[1].split("<")[0]
    assert len(secret) == 32 and secret in second
    assert "<img" not in first and "<script" not in first.split("<main>")[1]


def test_it_turns_the_second_factor_on_only_after_a_right_code(operator_client, operator):
    operator_client.get("/security/")
    device = TOTPDevice.objects.get(user=operator)
    wrong = operator_client.post("/security/", {"code": "12345x"})
    assert "That code is not right" in page(wrong)
    device.refresh_from_db()
    assert not device.confirmed
    device.throttle_reset()
    response = operator_client.post("/security/", {"code": code_for(device)}, follow=True)
    assert "Two-factor login is on" in page(response) and 'id="totp-secret"' not in page(response)
    device.refresh_from_db()
    assert device.confirmed
    assert operator_client.get("/").status_code == 200  # this session is already verified


def test_it_removes_the_second_factor_only_with_the_password(client, operator, device):
    client.force_login(operator)
    session_verified(client, device)
    response = client.post("/security/remove/", {"password": "guess"}, follow=True)
    assert "That password is not right" in page(response)
    assert TOTPDevice.objects.filter(user=operator).exists()
    assert AccessAttempt.objects.get(username="olga").failures_since_start == 1
    response = client.post("/security/remove/", {"password": "operator-pass-1"}, follow=True)
    assert "Two-factor login is off" in page(response)
    assert not TOTPDevice.objects.filter(user=operator, confirmed=True).exists()


def session_verified(client, device):
    session = client.session
    session["otp_device_id"] = device.persistent_id
    session.save()


# --- the code step of the login -------------------------------------------------------------------------------------------
def test_it_asks_for_the_code_after_the_password_and_lets_nothing_through_before(client, operator, device):
    response = log_in(client, "olga", "operator-pass-1")
    assert response["Location"] == "/"
    for url in ("/", "/models/", "/security/", "/admin/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/verify/?next="), url
    assert client.get("/", **HTMX)["HX-Redirect"] == "/login/verify/"
    assert client.post("/security/remove/", {"password": "operator-pass-1"})["Location"] == "/login/verify/"
    assert TOTPDevice.objects.filter(user=operator).exists()

    verify = client.get("/login/verify/?next=/models/")
    assert verify.status_code == 200 and "Login code" in page(verify)
    response = client.post("/login/verify/", {"code": code_for(device), "next": "/models/"})
    assert response.status_code == 302 and response["Location"] == "/models/"
    assert client.get("/").status_code == 200


def test_it_lets_the_code_step_log_out(client, operator, device):
    log_in(client, "olga", "operator-pass-1")
    client.post("/logout/")
    assert not logged_in(client)


def test_it_refuses_a_wrong_code_and_counts_it_towards_the_lockout(client, operator, device):
    log_in(client, "olga", "operator-pass-1")
    response = client.post("/login/verify/", {"code": "12345x"})
    assert response.status_code == 200 and "That code is not right" in page(response)
    assert client.get("/").status_code == 302
    assert AccessAttempt.objects.get(username="olga").failures_since_start == 1


def test_it_locks_out_and_logs_out_after_five_wrong_codes(client, operator, device):
    log_in(client, "olga", "operator-pass-1")
    responses = [client.post("/login/verify/", {"code": "12345x"}) for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 4 + [429]
    assert "Locked out" in page(responses[-1])
    assert not logged_in(client)
    assert log_in(client, "olga", "operator-pass-1").status_code == 429


def test_it_refuses_even_the_right_code_once_locked_out(client, operator, device):
    log_in(client, "olga", "operator-pass-1")
    for _ in range(5):
        log_in(Client(), "olga", "guess")  # someone else, same address, meanwhile
    response = client.post("/login/verify/", {"code": code_for(device)})
    assert response.status_code == 429 and not logged_in(client)


def test_it_sends_a_redirect_only_to_this_site_after_the_code(client, operator, device):
    log_in(client, "olga", "operator-pass-1")
    response = client.post("/login/verify/", {"code": code_for(device), "next": "https://evil.example/"})
    assert response["Location"] == "/"


@pytest.mark.parametrize("who, status", [("anonymous", 302), ("viewer", 302), ("operator", 200)])
def test_it_shows_the_code_step_only_to_a_user_who_owes_a_code(request, client, operator, viewer, device, who, status):
    if who != "anonymous":
        client.force_login(request.getfixturevalue(who))
    response = client.get("/login/verify/")
    assert response.status_code == status
    if who == "anonymous":
        assert response["Location"].startswith("/login/?next=")
    if who == "viewer":
        assert response["Location"] == "/"  # nothing to verify


# --- MORPHEUS_REQUIRE_2FA_FOR_OPERATORS -----------------------------------------------------------------------------
def test_it_sends_an_operator_without_a_device_to_enrol_when_required(settings, operator_client, viewer):
    settings.REQUIRE_2FA_FOR_OPERATORS = True
    response = operator_client.get("/rigs/add/")
    assert response.status_code == 302 and response["Location"].startswith("/security/?next=")
    security = operator_client.get("/security/")
    assert security.status_code == 200 and "Operators on this panel must use a second factor" in page(security)
    viewer_client = Client()
    viewer_client.force_login(viewer)
    assert viewer_client.get("/").status_code == 200


def test_it_lets_an_operator_anywhere_after_enrolling_when_required(settings, operator_client, operator):
    settings.REQUIRE_2FA_FOR_OPERATORS = True
    operator_client.get("/security/")
    device = TOTPDevice.objects.get(user=operator)
    operator_client.post("/security/", {"code": code_for(device)})
    assert operator_client.get("/rigs/add/").status_code == 200
