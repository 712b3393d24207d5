"""Operator logins in Chromium: the lockout after failed logins, a TOTP second factor, the password asked again."""

import re
import time
from base64 import b32decode

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone
from django_otp.oath import hotp
from django_otp.plugins.otp_totp.models import TOTPDevice
from playwright.sync_api import expect

from hosting.models import Build
from morpheus_admin.celery import app as celery_app
from nodes.permissions import OPERATORS_GROUP
from tests.helpers import make_node
from tests.test_browser import WAIT_MS, log_in

# Serialized rollback like the tests on the shared panel worker: a plain flush breaks their restore.
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def type_password(page, live_server, username, password):
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_it_locks_out_after_five_wrong_passwords_until_an_operator_unlocks(page, live_server, browser, operator):
    for attempt in range(4):
        type_password(page, live_server, "olga", f"wrong-{attempt}")
        expect(page.get_by_text("Wrong username or password.")).to_be_visible()
    type_password(page, live_server, "olga", "wrong-4")
    expect(page.get_by_role("heading", name="Locked out")).to_be_visible()
    expect(page.locator("#locked-out")).to_contain_text("refused for 15 minutes after the last attempt")
    expect(page.locator("#locked-out")).to_contain_text("An operator can unlock you")

    type_password(page, live_server, "olga", "operator-pass-1")
    expect(page.get_by_role("heading", name="Locked out")).to_be_visible()
    expect(page.get_by_role("link", name="Rigs")).to_have_count(0)

    otto = User.objects.create_user("otto", password="otto-pass-1")
    otto.groups.add(Group.objects.get_or_create(name=OPERATORS_GROUP)[0])
    other = browser.new_context()
    try:
        admin_page = other.new_page()
        log_in(admin_page, live_server, "otto", "otto-pass-1")
        admin_page.get_by_role("link", name="Security").click()
        admin_page.get_by_role("link", name="Locked-out logins").click()
        row = admin_page.locator("#lockouts tbody tr", has_text="olga")
        expect(row).to_contain_text("127.0.0.1")
        row.get_by_role("button", name="Unlock").click()
        expect(admin_page.get_by_text("Unlocked olga from 127.0.0.1")).to_be_visible()
        expect(admin_page.get_by_text("No login is locked out.")).to_be_visible()
    finally:
        other.close()

    log_in(page, live_server, "olga", "operator-pass-1")


def test_it_enrols_a_totp_app_and_then_asks_for_its_code_at_login(page, live_server, operator):
    log_in(page, live_server, "olga", "operator-pass-1")
    page.get_by_role("link", name="Security").click()
    expect(page.get_by_role("heading", name="Set up two-factor login")).to_be_visible()
    expect(page.locator("figure.qr svg")).to_be_visible()
    key = b32decode(page.locator("#totp-secret").inner_text())  # what a person types into their app by hand

    page.get_by_label("Code").fill(str(hotp(key, int(time.time()) // 30)).zfill(6))
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_text("Two-factor login is on: the panel asks for a code after your password.")).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    type_password(page, live_server, "olga", "operator-pass-1")
    expect(page.get_by_role("heading", name="Login code")).to_be_visible(timeout=WAIT_MS)
    page.goto(f"{live_server.url}/models/")
    expect(page.get_by_role("heading", name="Login code")).to_be_visible()  # nothing else before the code

    now = int(time.time()) // 30
    near = {str(hotp(key, t)).zfill(6) for t in range(now - 2, now + 3)}
    page.get_by_label("Code").fill(next(code for code in ("000000", "111111", "222222") if code not in near))
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_text("That code is not right.")).to_be_visible()
    expect(page.get_by_role("heading", name="Login code")).to_be_visible()

    # A code is accepted once: the app's next one, as it shows after the one used to enrol.
    device = TOTPDevice.objects.get(user=operator)
    device.throttle_reset()
    page.get_by_label("Code").fill(str(hotp(key, device.last_t + 1)).zfill(6))
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("heading", name="Model catalogue")).to_be_visible(timeout=WAIT_MS)
    expect(page).to_have_url(re.compile(r"/models/$"))


def test_it_asks_for_the_password_again_before_building_from_another_source(page, live_server, operator):
    node, _token = make_node("alpha", hardware={"gpus": [], "hostname": "alpha-box"}, last_seen=timezone.now())
    log_in(page, live_server, "olga", "operator-pass-1")
    try:
        page.goto(f"{live_server.url}/rigs/alpha/builds/")
        page.get_by_label("Source").fill("https://git.example.org/someone/llama.cpp")
        page.get_by_role("button", name="Build", exact=True).click()
        expect(page.get_by_role("heading", name="Confirm your password")).to_be_visible()
        assert not Build.objects.exists()

        page.get_by_label("Password").fill("not-my-password")
        page.get_by_role("button", name="Confirm").click()
        expect(page.get_by_text("That password is not right.")).to_be_visible()
        page.get_by_label("Password").fill("operator-pass-1")
        page.get_by_role("button", name="Confirm").click()
        expect(page.get_by_text("Password confirmed. Do the action again.")).to_be_visible()
        expect(page.get_by_role("heading", name="llama.cpp builds on alpha")).to_be_visible()

        page.get_by_label("Source").fill("https://git.example.org/someone/llama.cpp")
        page.get_by_role("button", name="Build", exact=True).click()
        expect(page.get_by_role("heading", name=re.compile(r"^Build \d+ on alpha$"))).to_be_visible(timeout=WAIT_MS)
        assert Build.objects.get().source == "https://git.example.org/someone/llama.cpp"
    finally:
        with celery_app.connection_for_write() as conn:  # no rig runs here: drop the build sent to its queue
            conn.default_channel.queue_purge(node.queue)
