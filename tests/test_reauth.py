"""The password asked again before rotating a rig token, setting the Hub token, building llama.cpp from another
source than the official release, and adopting a binary (nodes/reauth.py)."""

import time

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import SESSION_KEY
from django.test import Client
from django.utils import timezone

from hosting.models import Build
from models_catalog.models import HubSettings
from nodes import reauth
from nodes.agent import builder
from tests.helpers import make_node, page

pytestmark = pytest.mark.django_db

RIG_PAGE = "http://testserver/rigs/alpha/"
OFFICIAL = {"build-source": builder.DEFAULT_SOURCE, "build-ref": builder.DEFAULT_REF, "build-backend": "auto"}


def asks_password(response):
    return response.status_code == 403 and "Confirm your password" in page(response)


@pytest.fixture
def alpha():
    return make_node("alpha", hardware={"gpus": [], "hostname": "alpha-box"}, last_seen=timezone.now())


@pytest.fixture
def fresh_operator(operator):
    """An operator logged in a while ago: no password typed in this session yet."""
    client = Client()
    client.force_login(operator)
    return client


def stamp(client, seconds_ago):
    session = client.session
    session[reauth.SESSION_KEY] = time.time() - seconds_ago
    session.save()


def confirm(client, password="operator-pass-1", next_url=RIG_PAGE):
    return client.post("/login/confirm/", {"password": password, "next": next_url})


# --- rotating a rig token --------------------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["anonymous", "viewer", "operator"])
def test_it_rotates_no_token_without_a_recent_password(request, client, alpha, viewer, operator, who):
    if who != "anonymous":
        client.force_login(request.getfixturevalue(who))
    response = client.post("/rigs/alpha/rotate-token/", HTTP_REFERER=RIG_PAGE)
    if who == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith("/login/")
    elif who == "viewer":
        assert response.status_code == 403 and not asks_password(response)  # the role first, not a password page
    else:
        assert asks_password(response) and f'name="next" value="{RIG_PAGE}"' in page(response)
        assert "Nothing was done yet" in page(response)
    node, token = alpha
    node.refresh_from_db()
    assert node.check_token(token)


def test_it_rotates_the_token_after_the_password_and_a_second_click(fresh_operator, alpha):
    assert asks_password(fresh_operator.post("/rigs/alpha/rotate-token/", HTTP_REFERER=RIG_PAGE))

    response = confirm(fresh_operator)
    assert response.status_code == 302 and response["Location"] == RIG_PAGE
    assert "Password confirmed" in page(fresh_operator.get(RIG_PAGE))

    response = fresh_operator.post("/rigs/alpha/rotate-token/", HTTP_REFERER=RIG_PAGE)
    assert response.status_code == 200 and "New token for alpha" in page(response)
    node, old_token = alpha
    node.refresh_from_db()
    assert not node.check_token(old_token)


@pytest.mark.parametrize("seconds_ago, asks", [(9 * 60, False), (11 * 60, True), (-60, True)])
def test_it_trusts_the_password_for_reauth_minutes(settings, fresh_operator, alpha, seconds_ago, asks):
    settings.REAUTH_MINUTES = 10
    stamp(fresh_operator, seconds_ago)
    response = fresh_operator.post("/rigs/alpha/rotate-token/")
    assert asks_password(response) == asks
    assert (response.status_code == 200) != asks


# --- the password page ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("who, status", [("anonymous", 302), ("viewer", 200), ("operator", 200)])
def test_it_shows_the_password_page_to_any_logged_in_user(request, client, viewer, operator, who, status):
    if who != "anonymous":
        client.force_login(request.getfixturevalue(who))
    response = client.get("/login/confirm/?next=/models/settings/")
    assert response.status_code == status
    if status == 200:
        assert "Confirm your password" in page(response) and 'value="/models/settings/"' in page(response)


def test_it_refuses_a_wrong_password_and_counts_it_as_a_failed_login(fresh_operator, alpha):
    response = confirm(fresh_operator, password="guess")
    assert response.status_code == 200 and "That password is not right" in page(response)
    assert reauth.SESSION_KEY not in fresh_operator.session
    assert AccessAttempt.objects.get(username="olga").failures_since_start == 1
    assert asks_password(fresh_operator.post("/rigs/alpha/rotate-token/"))


def test_it_locks_out_and_logs_out_after_five_wrong_passwords(fresh_operator):
    responses = [confirm(fresh_operator, password="guess") for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 4 + [429]
    assert "Locked out" in page(responses[-1])
    assert SESSION_KEY not in fresh_operator.session
    locked = Client().post("/login/", {"username": "olga", "password": "operator-pass-1"})
    assert locked.status_code == 429


@pytest.mark.parametrize("next_url", ["https://evil.example/", "//evil.example/x", ""])
def test_it_returns_only_to_a_page_of_this_site(fresh_operator, next_url):
    response = confirm(fresh_operator, next_url=next_url)
    assert response.status_code == 302 and response["Location"] == "/"


# --- the Hub token -----------------------------------------------------------------------------------------------
def test_it_shows_the_hub_token_page_but_saves_a_token_only_after_the_password(fresh_operator):
    assert fresh_operator.get("/models/settings/").status_code == 200
    response = fresh_operator.post("/models/settings/", {"token": "hf_abcdefghijkl"},
                                   HTTP_REFERER="http://testserver/models/settings/")
    assert asks_password(response)
    assert not HubSettings.current().token

    confirm(fresh_operator, next_url="/models/settings/")
    response = fresh_operator.post("/models/settings/", {"token": "hf_abcdefghijkl"})
    assert response.status_code == 302
    assert HubSettings.current().token == "hf_abcdefghijkl"


def test_it_refuses_a_viewers_hub_token_with_403_not_a_password_page(viewer_client):
    response = viewer_client.post("/models/settings/", {"token": "hf_abcdefghijkl"})
    assert response.status_code == 403 and not asks_password(response)
    assert not HubSettings.current().token


# --- builds from another source, adopted binaries ------------------------------------------------------------
def test_it_builds_the_official_release_without_asking(fresh_operator, alpha):
    response = fresh_operator.post("/rigs/alpha/builds/", OFFICIAL)
    assert response.status_code == 302 and Build.objects.get().source == builder.DEFAULT_SOURCE


@pytest.mark.parametrize("changes", [{"build-source": "https://git.example.org/fork/llama.cpp"},
                                     {"build-source": "/src/llama.cpp"}, {"build-ref": "master"}])
def test_it_asks_for_the_password_before_building_other_code(fresh_operator, alpha, changes):
    response = fresh_operator.post("/rigs/alpha/builds/", {**OFFICIAL, **changes},
                                   HTTP_REFERER="http://testserver/rigs/alpha/builds/")
    assert asks_password(response)
    assert not Build.objects.exists()

    confirm(fresh_operator, next_url="/rigs/alpha/builds/")
    response = fresh_operator.post("/rigs/alpha/builds/", {**OFFICIAL, **changes})
    assert response.status_code == 302 and Build.objects.count() == 1


def test_it_asks_for_the_password_before_adopting_a_binary(fresh_operator, alpha):
    data = {"adopt-path": "/home/me/llama.cpp/build/bin/llama-server"}
    assert asks_password(fresh_operator.post("/rigs/alpha/builds/adopt/", data))
    assert not Build.objects.exists()

    confirm(fresh_operator, next_url="/rigs/alpha/builds/")
    response = fresh_operator.post("/rigs/alpha/builds/adopt/", data)
    assert response.status_code == 302 and Build.objects.get().adopted


def test_it_refuses_a_viewers_build_and_adoption_with_403_not_a_password_page(viewer_client, alpha):
    for url, data in (("/rigs/alpha/builds/", {**OFFICIAL, "build-ref": "master"}),
                      ("/rigs/alpha/builds/adopt/", {"adopt-path": "/opt/llama-server"})):
        response = viewer_client.post(url, data)
        assert response.status_code == 403 and not asks_password(response)
    assert not Build.objects.exists()
