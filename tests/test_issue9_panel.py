"""Rough edges a provider noticed: error pages in the panel's layout, "rig" not "node", an operation's result in
human units, enrolment commands that work as printed, and the favicon."""

import re
import shutil
import subprocess
from xml.etree import ElementTree

import pytest
from django.contrib.staticfiles import finders

from nodes.models import HardwareProfile, Node, Operation
from tests.helpers import make_node, page
from tests.test_views_profiles import SEED_TEMPLATE, build_form

pytestmark = pytest.mark.django_db

NAV = ('href="/operations/"', 'href="/deployments/"')


@pytest.fixture(autouse=True)
def production_errors(settings):
    settings.DEBUG = False  # Django's technical error pages stand in for ours under DEBUG


def block(content, element_id):
    """The text of the <pre> with `element_id` on a page."""
    start = content.index(f'id="{element_id}">') + len(f'id="{element_id}">')
    return content[start:content.index("</pre>", start)]


# --- 1. 403 and 404 pages in the panel's layout ----------------------------------------------------------------
@pytest.mark.parametrize("method, url", [("post", "/rigs/alpha/operations/ping/"), ("get", "/rigs/add/"),
                                         ("post", "/rigs/alpha/delete/"), ("get", "/security/lockouts/")])
def test_it_tells_a_viewer_why_an_action_is_refused_on_a_page_with_the_navigation(viewer_client, method, url):
    make_node("alpha")
    response = getattr(viewer_client, method)(url)
    assert response.status_code == 403
    content = page(response)
    assert "Viewers can look but not change anything: ask an operator." in content
    assert all(link in content for link in NAV)
    assert "victor" in content and 'class="role">viewer<' in content
    assert Node.objects.filter(name="alpha").exists() and not Operation.objects.exists()


def test_it_shows_an_unknown_url_as_a_404_in_the_panels_layout(viewer_client):
    response = viewer_client.get("/no-such-page/")
    assert response.status_code == 404
    content = page(response)
    assert "<title>Not found · Morpheus Admin</title>" in content
    assert "Nothing at <code>/no-such-page/</code>." in content
    assert all(link in content for link in NAV)
    assert "Resolver404" not in content and "tried" not in content  # nothing of the URL configuration


@pytest.mark.parametrize("url, said", [("/rigs/ghost/", "There is no such rig"),
                                       ("/operations/999999/", "There is no such operation"),
                                       ("/profiles/999999/", "There is no such planned build")])
def test_it_says_what_was_not_found_in_the_products_words(viewer_client, url, said):
    response = viewer_client.get(url)
    assert response.status_code == 404
    content = page(response)
    assert said in content and f"Nothing at <code>{url}</code>." in content
    assert "matches the given query" not in content and "Node" not in content


def test_it_says_an_unknown_operation_kind_is_not_found(operator_client):
    make_node("alpha")
    response = operator_client.post("/rigs/alpha/operations/format-disk/")
    assert response.status_code == 404
    assert "Unknown operation." in page(response)


def test_it_shows_an_anonymous_visitor_a_404_without_the_navigation(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    content = page(response)
    assert "Nothing at <code>/no-such-page/</code>." in content
    assert not any(link in content for link in NAV)


def test_the_404_page_does_not_echo_markup_from_the_url(viewer_client):
    content = viewer_client.get("/<script>alert(1)</script>/").content.decode()
    assert "<script>alert(1)" not in content


# --- 2. "rig", not "node" ------------------------------------------------------------------------------------
def test_it_says_a_rig_name_is_taken_in_the_products_words(operator_client):
    make_node("alpha")
    content = page(operator_client.post("/rigs/add/", {"name": "alpha", "notes": ""}))
    assert "A rig with this name already exists." in content
    assert "Node" not in content


def test_it_says_a_planned_build_name_is_taken_in_the_products_words(operator_client):
    response = operator_client.post("/profiles/new/", build_form(SEED_TEMPLATE, []))
    assert response.status_code == 200
    assert "A planned build with this name already exists." in page(response)
    assert HardwareProfile.objects.filter(name=SEED_TEMPLATE).count() == 1


# --- 3. an operation's result as a table ---------------------------------------------------------------------
def test_it_shows_an_operations_result_as_a_table_in_human_units(viewer_client):
    node, _token = make_node("alpha")
    operation = Operation.objects.create(
        node=node, kind=Operation.DOWNLOAD_MODEL, status=Operation.SUCCEEDED,
        result={"bytes_fetched": 1610612736, "resumed_from": 524288, "seconds": 65.4, "commit": "0123abcd",
                "removed": ["/models/a.gguf", "/models/b.gguf"], "node": "alpha", "verified": True})
    content = page(viewer_client.get(operation.get_absolute_url()))
    result = content[content.index('id="op-result"'):]
    result = result[:result.index("</dd>")]
    assert "{'" not in result and "bytes_fetched" not in result  # not the Python dict
    assert "<th>Bytes fetched</th><td>1.5\xa0GB</td>" in result
    assert "<th>Resumed from</th><td>512.0\xa0KB</td>" in result
    assert "<th>Seconds</th><td>1 min 5 s</td>" in result
    assert "<th>Commit</th><td>0123abcd</td>" in result
    assert "<li>/models/a.gguf</li><li>/models/b.gguf</li>" in result
    assert "<th>Rig</th><td>alpha</td>" in result and "<th>Verified</th><td>yes</td>" in result


def test_it_escapes_what_a_rig_put_in_a_result(viewer_client):
    node, _token = make_node("alpha")
    operation = Operation.objects.create(node=node, kind=Operation.PING, status=Operation.SUCCEEDED,
                                         result={"<b>key</b>": "<script>alert(1)</script>", "files": [{"size": 2048}]})
    content = viewer_client.get(operation.get_absolute_url()).content.decode()
    assert "<script>alert(1)" not in content and "<b>key" not in content
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in content
    assert "<th>Size</th><td>2.0\xa0KB</td>" in content  # a list of objects: each one a small table


# --- 4. the enrolment page: commands that work as printed ---------------------------------------------------
def enrol(client, name="rig-01"):
    return page(client.post("/rigs/add/", {"name": name, "notes": ""}))


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis://localhost:6379/0", "redis://[::1]:6380/0",
                                 "rediss://127.0.0.2:6380/0"])
def test_a_loopback_broker_puts_the_compose_service_on_the_hosts_network_and_says_why(operator_client, settings, url):
    settings.RIG_BROKER_URL = url
    content = enrol(operator_client)
    compose = block(content, "compose-service")
    assert "\n    network_mode: host\n" in compose
    assert "loopback" in compose and "MORPHEUS_RIG_BROKER_URL" in compose  # the comment tells a remote rig what to do
    assert 'id="broker-loopback"' in content


def test_a_reachable_broker_keeps_the_compose_service_on_its_own_network(operator_client, settings):
    settings.RIG_BROKER_URL = "redis://panel.example.com:6379/0"
    content = enrol(operator_client)
    assert "network_mode" not in block(content, "compose-service")
    assert 'id="broker-loopback"' not in content


def test_every_printed_command_runs_the_agent_with_the_virtualenvs_python(operator_client):
    content = enrol(operator_client)
    assert "after <code>python3 -m venv .venv && .venv/bin/pip install -r requirements.txt</code>" in content
    shell, systemd = block(content, "agent-command"), block(content, "systemd-commands")
    assert ".venv/bin/python -m nodes.agent" in shell
    for commands in (shell, systemd):
        assert not re.search(r"(?<![/\w])python3?\b", commands.replace(".venv/bin/python", "")), commands
    # In the image, "python" is its virtualenv's (Dockerfile.agent puts /opt/venv/bin first on PATH).
    assert 'command: ["python", "-m", "nodes.agent"' in block(content, "compose-service")


def test_the_command_blocks_get_a_copy_button_from_a_script_the_layout_loads(operator_client):
    content = enrol(operator_client)
    assert content.count('<pre class="copy"') == 3
    assert '<script src="/static/js/copy.js" defer></script>' in content
    script = finders.find("js/copy.js")
    assert script, "static/js/copy.js is missing"
    source = open(script).read()
    assert 'querySelectorAll("pre.copy")' in source and "clipboard" in source
    node = shutil.which("node")
    if node:
        subprocess.run([node, "--check", script], check=True)


# --- 5. the favicon ----------------------------------------------------------------------------------------
def test_every_page_links_a_favicon_that_exists(viewer_client):
    for url in ("/", "/operations/", "/no-such-page/"):
        assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page(viewer_client.get(url)), url
    icon = finders.find("favicon.svg")
    assert icon, "static/favicon.svg is missing"
    assert ElementTree.parse(icon).getroot().tag == "{http://www.w3.org/2000/svg}svg"
