"""The dashboard, adding a rig, its page, rotating its token and removing it."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from nodes.models import HardwareProfile, Node
from tests.helpers import make_node, page, report as handle_report
from tests.test_reports import hardware, telemetry

pytestmark = pytest.mark.django_db

SEED_TEMPLATE = "Seed sample build: 2x RTX 3090"
HTMX = {"HTTP_HX_REQUEST": "true"}



def token_on(response):
    found = re.search(r'MORPHEUS_NODE_TOKEN: "([A-Za-z0-9_-]+)"', page(response))
    assert found, "no agent command on the page"
    return found.group(1)


def reporting(name, gpu_count=2, **changes):
    """A rig whose agent has sent its hardware and one reading just now."""
    node, token = make_node(name)
    now = timezone.now()
    assert handle_report(name, token, "hardware", hardware(gpu_count=gpu_count, **changes), now=now) is None
    assert handle_report(name, token, "telemetry", telemetry(gpu_count=gpu_count, at=now.timestamp()), now=now) is None
    node.refresh_from_db()
    return node, token


# --- who may see and do what ---------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/", "/rigs/add/", "/rigs/alpha/", "/rigs/alpha/delete/"])
def test_it_sends_anonymous_visitors_to_the_login_page(client, url):
    make_node("alpha")
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(f"{reverse('login')}?next=")


@pytest.mark.parametrize("url", ["/rigs/add/", "/rigs/alpha/rotate-token/", "/rigs/alpha/delete/",
                                 "/rigs/alpha/profile/"])
def test_it_sends_anonymous_posts_to_the_login_page_and_changes_nothing(client, url):
    node, token = make_node("alpha")
    response = client.post(url, {"name": "sneaky", "profile": ""})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert list(Node.objects.values_list("name", flat=True)) == ["alpha"]
    assert Node.objects.get(pk=node.pk).check_token(token)


def test_it_shows_a_viewer_the_rigs_without_any_action(viewer_client):
    reporting("alpha")
    content = page(viewer_client.get("/"))
    assert 'id="rig-alpha"' in content
    assert "viewer" in content
    for action in ("Add rig", "Add your first rig", reverse("node_add")):
        assert action not in content


def test_it_shows_a_viewer_a_rig_page_without_any_action(viewer_client):
    node, _token = reporting("alpha")
    response = viewer_client.get(node.get_absolute_url())
    assert response.status_code == 200
    content = page(response)
    assert "NVIDIA GeForce RTX 3090" in content
    for action in ("Refresh hardware", "Ping agent", "Rotate token", "Remove rig", "Attach",
                   '<form method="post" action="/rigs/'):
        assert action not in content


def test_it_refuses_a_viewers_forged_posts_and_changes_nothing(viewer_client):
    node, token = make_node("alpha")
    template = HardwareProfile.objects.get(name=SEED_TEMPLATE)
    attempts = [
        ("/rigs/add/", {"name": "sneaky"}),
        ("/rigs/alpha/rotate-token/", {}),
        ("/rigs/alpha/delete/", {}),
        ("/rigs/alpha/profile/", {"profile": template.pk}),
    ]
    before = list(Node.objects.values())
    for url, data in attempts:
        assert viewer_client.post(url, data).status_code == 403, url
    assert list(Node.objects.values()) == before
    assert Node.objects.get(pk=node.pk).check_token(token)


def test_it_refuses_a_viewer_the_add_and_delete_pages(viewer_client):
    make_node("alpha")
    assert viewer_client.get("/rigs/add/").status_code == 403
    assert viewer_client.get("/rigs/alpha/delete/").status_code == 403


# --- dashboard -----------------------------------------------------------------------------------
def test_it_shows_an_operator_a_card_per_rig_with_gpu_bars(operator_client):
    reporting("alpha")
    make_node("beta")
    content = page(operator_client.get("/"))
    assert "Add rig" in content
    alpha = content[content.index('id="rig-alpha"'):content.index('id="rig-beta"')]
    assert 'data-status="online"' in alpha
    assert alpha.count('class="gpu"') == 2
    for label in ("util", "VRAM", "temp", "power"):
        assert f'<b>{label}</b>' in alpha
    assert "87%" in alpha and "20.0 / 24 GiB" in alpha and "71 °C" in alpha and "302 / 350 W" in alpha
    beta = content[content.index('id="rig-beta"'):]
    assert "waiting for its agent" in beta


def test_it_keeps_an_offline_rig_on_the_dashboard_marked_offline(operator_client):
    node, _token = reporting("alpha")
    Node.objects.filter(pk=node.pk).update(last_seen=timezone.now() - timedelta(hours=1))
    content = page(operator_client.get("/"))
    assert 'id="rig-alpha"' in content
    assert 'data-status="offline"' in content


def test_it_answers_the_dashboards_poll_with_just_the_cards(operator_client):
    reporting("alpha")
    response = operator_client.get("/", **HTMX)
    content = page(response)
    assert response.status_code == 200
    assert 'id="rig-alpha"' in content
    for outside in ("<html", "<header class=\"top\"", "Add rig", 'id="rig-cards"'):
        assert outside not in content


def shown(content):
    """The X-Rig-Cards header static/js/dashboard.js sends for a page holding `content`."""
    names = re.search(r'id="rig-names" data-hash="([0-9a-f]+)"', content).group(1)
    return names + ":" + "".join(re.findall(r'data-fp="([0-9a-f]+)"', content))


def refresh(client, header):
    return client.get("/", HTTP_X_RIG_CARDS=header, **HTMX)


def test_a_refresh_sends_only_the_cards_that_changed_and_nothing_when_none_did(operator_client):
    from nodes.models import GPU

    for name in ("alpha", "beta", "gamma"):
        reporting(name)
    header = shown(page(operator_client.get("/")))
    unchanged = refresh(operator_client, header)
    assert unchanged.status_code == 204 and unchanged.content == b""  # htmx leaves the page alone

    GPU.objects.filter(node__name="beta", index=0).update(util=12.0)  # beta's next reading
    changed = refresh(operator_client, header)
    content = page(changed)
    assert changed.status_code == 200 and changed["HX-Reswap"] == "none"
    assert re.findall(r'<article [^>]*id="(rig-[a-z]+)"[^>]*hx-swap-oob="true"', content) == ["rig-beta"]
    assert "12%" in content and len(changed.content) < 4000  # one card, not three
    # Once the page shows it, the next refresh is empty again.
    assert refresh(operator_client, shown(page(operator_client.get("/")))).status_code == 204


def test_a_refresh_after_a_rig_was_added_or_with_a_bad_header_sends_every_card(operator_client):
    reporting("alpha")
    header = shown(page(operator_client.get("/")))
    make_node("beta")
    for sent in (header, "not-a-header", header.split(":")[0] + ":zz"):
        content = page(refresh(operator_client, sent))
        assert 'id="rig-alpha"' in content and 'id="rig-beta"' in content and "hx-swap-oob" not in content
        assert 'id="rig-names"' in content


def test_a_card_shows_no_clock_so_an_online_rig_that_only_reported_again_is_unchanged(operator_client):
    node, _token = reporting("alpha")
    header = shown(page(operator_client.get("/")))
    Node.objects.filter(pk=node.pk).update(last_seen=timezone.now())  # a new report, same readings
    assert refresh(operator_client, header).status_code == 204
    # Once it is not online its card says since when (the browser keeps the age current) and changes.
    Node.objects.filter(pk=node.pk).update(last_seen=timezone.now() - timedelta(minutes=5))
    content = page(refresh(operator_client, header))
    assert 'data-status="offline"' in content and re.search(r'<time datetime="[^"]+" data-age>', content)


def test_a_rigs_gpu_name_is_escaped_on_its_card(operator_client):
    from nodes.models import GPU

    node, _token = reporting("alpha")
    GPU.objects.filter(node=node, index=0).update(name='<img src=x onerror="alert(1)">')
    content = operator_client.get("/").content.decode()
    assert "<img src=x" not in content and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in content


def test_it_says_when_an_agent_reports_with_a_rejected_token(operator_client):
    reporting("alpha")
    later = timezone.now() + timedelta(seconds=1)
    handle_report("alpha", "stale-token-" + "x" * 30, "telemetry", telemetry(), now=later)
    assert "agent token rejected" in page(operator_client.get("/"))
    assert "agent token rejected" in page(operator_client.get("/rigs/alpha/"))


# --- adding a rig --------------------------------------------------------------------------------
def test_it_adds_a_rig_and_shows_its_agent_command_once(operator_client):
    assert operator_client.get("/rigs/add/").status_code == 200
    response = operator_client.post("/rigs/add/", {"name": "rig-01", "notes": "garage, left shelf"})
    assert response.status_code == 200
    node = Node.objects.get(name="rig-01")
    assert node.notes == "garage, left shelf"

    content = page(response)
    token = token_on(response)
    assert node.check_token(token)
    # The token goes to a 0600 file, never onto a command line; the broker address carries no login.
    assert f"(umask 077 && printf '%s\\n' {token} > ~/.morpheus-agent/token)" in content
    assert ".venv/bin/python -m nodes.agent --broker redis://" in content
    assert "--node rig-01 --data-dir" in content
    assert "@" not in content[content.index("--broker"):].split()[1]
    systemd = content[content.index('id="systemd-commands"'):content.index('id="compose-service"')]
    assert f"(umask 077 && printf '%s\\n' {token} > /var/lib/morpheus-agent/rig-01/token)" in systemd
    assert "morpheus-agent@.service /etc/systemd/system/" in systemd
    assert "systemctl enable --now morpheus-agent@rig-01" in systemd
    assert "MORPHEUS_BROKER_URL=%s" in systemd and "@" not in systemd.split("MORPHEUS_BROKER_URL=%s\\n' ")[1].split()[0]
    compose = content[content.index('id="compose-service"'):]
    assert "agent-rig-01:" in compose
    assert f'MORPHEUS_NODE_TOKEN: "{token}"' in compose
    assert "driver: nvidia" in compose and "capabilities: [gpu]" in compose

    for later in ("/rigs/rig-01/", "/", "/rigs/rig-01/delete/"):
        assert token not in page(operator_client.get(later)), later


@pytest.mark.parametrize("name", ["Bad Name!", "rig_01", "-rig", "rig-", "Rig-01", "r" * 41, ""])
def test_it_refuses_a_rig_name_that_is_not_a_slug(operator_client, name):
    response = operator_client.post("/rigs/add/", {"name": name, "notes": ""})
    assert response.status_code == 200
    assert response.context["form"].errors["name"]
    assert "MORPHEUS_NODE_TOKEN" not in page(response)
    assert not Node.objects.exists()


def test_it_refuses_a_rig_name_already_taken(operator_client):
    node, token = make_node("alpha")
    response = operator_client.post("/rigs/add/", {"name": "alpha", "notes": "again"})
    assert response.status_code == 200
    assert "already exists" in str(response.context["form"].errors["name"])
    assert Node.objects.count() == 1
    node.refresh_from_db()
    assert node.notes == "" and node.check_token(token)


# --- the rig page --------------------------------------------------------------------------------
def test_it_shows_the_detected_hardware_on_the_rig_page(operator_client):
    reporting("alpha")
    content = page(operator_client.get("/rigs/alpha/"))
    assert "13th Gen Intel(R) Core(TM) i7-13700K (16 cores / 24 threads)" in content
    assert "driver 550.54.14 · CUDA 12.4" in content
    assert content.count("NVIDIA GeForce RTX 3090</td>") == 2
    assert "gen 4 x16" in content and "8.6" in content and "GPU-00000001" in content
    assert 'id="rig-status">online' in content
    assert content.count('class="gpu-charts"') == 2
    for action in ("Refresh hardware", "Ping agent", "Rotate token", "Remove rig"):
        assert action in content


def test_it_explains_a_rig_without_gpus(operator_client):
    reporting("alpha", gpu_count=0, driver_version=None, cuda_version=None,
              gpu_note="no NVIDIA driver (NVML Shared Library Not Found)")
    content = page(operator_client.get("/rigs/alpha/"))
    assert "No GPUs: no NVIDIA driver (NVML Shared Library Not Found)" in content
    assert "no GPUs — no NVIDIA driver" in page(operator_client.get("/"))


def test_it_answers_the_rig_pages_poll_with_just_the_live_part(operator_client):
    reporting("alpha")
    content = page(operator_client.get("/rigs/alpha/", **HTMX))
    assert 'id="rig-status"' in content
    assert "<html" not in content and "Rotate token" not in content


def test_it_sets_the_planned_build_beside_what_was_detected(operator_client):
    reporting("alpha", gpu_count=1)
    template = HardwareProfile.objects.get(name=SEED_TEMPLATE)
    response = operator_client.post("/rigs/alpha/profile/", {"profile": template.pk})
    assert response.status_code == 302 and response["Location"] == "/rigs/alpha/"
    assert Node.objects.get(name="alpha").profile == template

    content = page(operator_client.get("/rigs/alpha/"))
    assert SEED_TEMPLATE in content
    assert "$4,500.00" in content
    mismatches = content[content.index('id="mismatches"'):]
    assert "planned 2 GPUs, detected 1" in mismatches


def test_it_says_when_the_detected_hardware_matches_the_plan(operator_client):
    reporting("alpha", gpu_count=2)
    Node.objects.filter(name="alpha").update(profile=HardwareProfile.objects.get(name=SEED_TEMPLATE))
    content = page(operator_client.get("/rigs/alpha/"))
    assert "Detected hardware matches the plan." in content
    assert 'id="mismatches"' not in content


def test_it_detaches_a_planned_build(operator_client):
    node, _token = make_node("alpha", profile=HardwareProfile.objects.get(name=SEED_TEMPLATE))
    operator_client.post("/rigs/alpha/profile/", {"profile": ""})
    node.refresh_from_db()
    assert node.profile is None


def test_it_answers_404_for_a_rig_that_does_not_exist(operator_client):
    assert operator_client.get("/rigs/ghost/").status_code == 404
    assert operator_client.post("/rigs/ghost/rotate-token/").status_code == 404


# --- rotating the token --------------------------------------------------------------------------
def test_it_rotates_the_token_and_the_old_one_stops_working(operator_client):
    node, old = reporting("alpha")
    assert operator_client.get("/rigs/alpha/rotate-token/").status_code == 405  # a link cannot rotate it

    response = operator_client.post("/rigs/alpha/rotate-token/")
    assert response.status_code == 200
    new = token_on(response)
    assert new != old
    assert "The old token no longer works" in page(response)
    assert f'MORPHEUS_NODE_TOKEN: "{new}"' in page(response)

    node.refresh_from_db()
    assert node.check_token(new) and not node.check_token(old)
    assert "bad report signature" in handle_report("alpha", old, "telemetry", telemetry(), now=timezone.now())
    assert handle_report("alpha", new, "telemetry", telemetry(at=timezone.now().timestamp())) is None
    assert new not in page(operator_client.get("/rigs/alpha/"))


# --- removing a rig ------------------------------------------------------------------------------
def test_it_asks_before_removing_a_rig(operator_client):
    make_node("alpha")
    response = operator_client.get("/rigs/alpha/delete/")
    assert response.status_code == 200
    assert "Remove rig alpha?" in page(response)
    assert Node.objects.filter(name="alpha").exists()


def test_it_removes_a_rig_and_rejects_its_agent_afterwards(operator_client):
    _node, token = reporting("alpha")
    response = operator_client.post("/rigs/alpha/delete/", follow=True)
    assert response.redirect_chain == [("/", 302)]
    assert "Rig alpha removed" in page(response)
    assert not Node.objects.filter(name="alpha").exists()
    assert handle_report("alpha", token, "telemetry", telemetry()) == "unknown rig"


def test_the_enrolment_page_never_hands_a_rig_the_admins_broker_login(operator_client, settings):
    settings.RIG_BROKER_URL = "rediss://:admin-secret-pw@panel.example.com:6380/0?ssl_ca_certs=/etc/ca.pem"
    content = page(operator_client.post("/rigs/add/", {"name": "rig-02", "notes": ""}))
    assert "admin-secret-pw" not in content
    assert "--broker 'rediss://panel.example.com:6380/0?ssl_ca_certs=/etc/ca.pem'" in content
    assert 'MORPHEUS_BROKER_URL: "rediss://panel.example.com:6380/0?ssl_ca_certs=/etc/ca.pem"' in content


def test_a_rig_enrolled_before_rigs_had_keys_is_sent_nothing_and_the_page_says_why(operator_client):
    from nodes.models import Operation

    Node.objects.create(name="legacy")  # what the migration leaves: no token, so no key
    response = operator_client.post("/rigs/legacy/operations/ping/", follow=True)
    assert response.redirect_chain[-1][0] == "/rigs/legacy/"
    content = page(response)
    assert "rig legacy has no key yet: rotate its token and restart its agent. Nothing was sent." in content
    assert "enrolled before rigs had their own keys" in content
    assert not Operation.objects.exists()
