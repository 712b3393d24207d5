"""A provider builds llama.cpp on a rig, hosts a model with it and stops it, in Chromium, against a real agent."""

import re
import urllib.request

import pytest
from playwright.sync_api import expect

from hosting.models import Build, Deployment
from models_catalog.models import RigFile
from tests import llama
from tests.gguf_model import write_tiny_llama
from tests.harness import cmdline, stop_llama_servers_under
from tests.helpers import free_port, make_node
from tests.test_browser import WAIT_MS, confirm_password, htmx_requests, log_in

pytestmark = pytest.mark.browser

BUILD_WAIT_MS = 600_000  # warm ccache: ~30 s (the fixture warms it); a cold compile on two busy cores: minutes


def shot(page, folder, name):
    page.screenshot(path=folder / f"{name}.png", full_page=True)


def health(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status
    except OSError:
        return None


@pytest.fixture
def alpha(rigs, tmp_path):
    """Rig alpha with a real agent; at teardown the agent stops first (so it cannot relaunch), then any server
    this test left running: servers run in their own session and outlive the agent."""
    llama.server_binary()  # on a cold machine this fills the ccache, so the build below takes seconds, not minutes
    node, token = make_node("alpha")
    rigs.start("alpha", token, extra_env={"MORPHEUS_CCACHE_DIR": str(llama.CCACHE_DIR)})
    yield node
    rigs.stop_all()
    stop_llama_servers_under(tmp_path)


def test_it_builds_llama_cpp_hosts_a_model_turns_healthy_live_and_stops_it(
        page, live_server, alpha, operator, tmp_path):
    node = alpha
    model = write_tiny_llama(tmp_path / "tiny-llama-F32.gguf")
    RigFile.objects.create(node=node, path=str(model), size=model.stat().st_size)  # as the agent's disk scan finds it
    source = str(llama.source_repo())
    shots = tmp_path / "shots"
    shots.mkdir()
    polls = htmx_requests(page)

    log_in(page, live_server, "olga", "operator-pass-1")
    expect(page.locator("#rig-alpha .badge")).to_have_text("online", timeout=WAIT_MS)
    page.locator("#rig-alpha").get_by_role("link", name="alpha").click()
    expect(page.get_by_role("heading", name="Rig alpha")).to_be_visible(timeout=WAIT_MS)

    page.locator("#rig-nav").get_by_role("link", name="llama.cpp builds").click()
    expect(page.get_by_role("heading", name="llama.cpp builds on alpha")).to_be_visible()
    expect(page.locator("#builds")).to_contain_text("No builds yet.")
    form = page.locator("#build-form")
    form.get_by_label("Source").fill(source)
    form.get_by_label("Ref").fill(llama.TAG)
    form.get_by_role("button", name="Build").click()
    # A build from anything but the official release runs new code on the rig: the password first.
    confirm_password(page, "operator-pass-1")
    form.get_by_label("Source").fill(source)
    form.get_by_label("Ref").fill(llama.TAG)
    form.get_by_role("button", name="Build").click()

    expect(page.get_by_role("heading", name=re.compile(r"^Build \d+ on alpha$"))).to_be_visible(timeout=WAIT_MS)
    page.evaluate("window.__marker = 1")
    status = page.locator("#build-status")
    # While it builds, the page shows CMake's progress and the log tail, refreshed by the poll.
    expect(status).to_have_text("building", timeout=WAIT_MS)
    expect(page.locator("#build-progress")).to_be_visible(timeout=BUILD_WAIT_MS)
    expect(page.locator("#build-log")).to_contain_text("%]", timeout=WAIT_MS)
    seen_percent = page.locator("#build-progress").get_attribute("value")
    shot(page, shots, "build_running")
    expect(status).to_have_text("ready", timeout=BUILD_WAIT_MS)
    build = Build.objects.get(node=node)
    assert build.status == Build.READY and build.version, build.message
    expect(page.locator("#build-version")).to_contain_text(build.version)
    expect(page.locator("#build-version")).to_contain_text(build.commit)
    expect(page.locator("#build-progress")).to_have_count(0)
    assert 0 <= int(seen_percent) < 100, seen_percent
    shot(page, shots, "build_ready")
    assert page.evaluate("window.__marker") == 1, "the build's progress came from a reload, not the live poll"
    assert any(url.rstrip("/").endswith(f"/builds/{build.pk}") for url in polls), polls

    page.get_by_role("heading", name=re.compile("on alpha")).get_by_role("link", name="alpha").click()
    expect(page.get_by_role("heading", name="llama.cpp builds on alpha")).to_be_visible()
    row = page.locator("#builds tbody tr", has=page.get_by_role("link", name=str(build.pk), exact=True))
    expect(row).to_have_attribute("data-status", "ready")
    expect(row).to_contain_text("default")
    expect(row).to_contain_text(build.version)
    shot(page, shots, "builds")

    page.get_by_role("heading", name="llama.cpp builds on alpha").get_by_role("link", name="alpha").click()
    page.locator("#rig-nav").get_by_role("link", name="Host a model").click()
    expect(page.get_by_role("heading", name="Host a model on alpha")).to_be_visible()
    port = free_port()
    form = page.locator("#deployment-form")
    form.get_by_label("Name").fill("tiny")
    form.get_by_label("Model file on this rig").select_option(label=str(model))
    form.get_by_label("llama.cpp build").select_option(str(build.pk))
    form.get_by_label("Port").fill(str(port))
    form.get_by_label("Context size").fill("512")
    form.get_by_label("GPU layers").fill("0")
    form.get_by_label("Parallel slots").fill("2")
    shot(page, shots, "deployment_form")
    form.get_by_role("button", name="Host it").click()

    expect(page.get_by_role("heading", name="tiny on alpha")).to_be_visible(timeout=WAIT_MS)
    page.evaluate("window.__marker = 2")
    state = page.locator("#deployment-state")
    expect(state).to_have_text("healthy", timeout=WAIT_MS)
    expect(page.locator("#endpoint")).to_have_text(f"http://127.0.0.1:{port}/v1")
    expect(page.locator("#command")).to_contain_text(f"--port {port} --ctx-size 512 --n-gpu-layers 0")
    assert health(port) == 200, "the endpoint the page shows does not answer"
    expect(page.locator("#deployment-log")).not_to_have_text("(no output yet)", timeout=WAIT_MS)
    shot(page, shots, "deployment_healthy")
    assert page.evaluate("window.__marker") == 2, "the state came from a reload, not the live poll"
    deployment = Deployment.objects.get(node=node, name="tiny")
    pid = deployment.pid
    assert pid and str(tmp_path) in cmdline(pid)

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#deployment-state + .muted")).to_have_text("wanted: stopped", timeout=WAIT_MS)
    page.evaluate("window.__marker = 3")
    expect(state).to_have_text("stopped", timeout=WAIT_MS)
    assert health(port) is None, "the port still answers after the stop"
    assert "llama-server" not in cmdline(pid)
    shot(page, shots, "deployment_stopped")
    assert page.evaluate("window.__marker") == 3, "the page reloaded by itself after the stop"


# Serialized rollback like the tests on the shared panel worker: a plain flush breaks their restore.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_it_shows_a_viewer_builds_and_deployments_without_any_action(page, live_server, viewer, tmp_path):
    node, _ = make_node("alpha")
    build = Build.objects.create(node=node, source=str(tmp_path), ref=llama.TAG, backend="cpu", status=Build.READY,
                                 is_default=True, binary_path="/opt/llama/llama-server", version="1 (0c1e570)",
                                 commit="0c1e570")
    rig_file = RigFile.objects.create(node=node, path="/models/tiny.gguf", size=1234)
    deployment = Deployment.objects.create(node=node, name="tiny", model_file=rig_file, build=build, port=8099,
                                           ctx_size=512, n_gpu_layers=0, actual_state="healthy")

    log_in(page, live_server, "victor", "viewer-pass-1")
    page.goto(f"{live_server.url}/rigs/alpha/")
    expect(page.get_by_role("heading", name="Rig alpha")).to_be_visible()
    expect(page.locator("#rig-nav").get_by_role("link", name="Host a model")).to_have_count(0)

    page.locator("#rig-nav").get_by_role("link", name="llama.cpp builds").click()
    expect(page.get_by_role("heading", name="llama.cpp builds on alpha")).to_be_visible()
    expect(page.locator("#builds tbody tr")).to_contain_text("0c1e570")
    for form in ("#build-form", "#adopt-form"):
        expect(page.locator(form)).to_have_count(0)
    expect(page.get_by_role("button", name="Make default")).to_have_count(0)
    expect(page.get_by_role("link", name="delete…")).to_have_count(0)

    page.get_by_role("navigation").get_by_role("link", name="Deployments").click()
    page.locator("#deployments").get_by_role("link", name="tiny").click()
    expect(page.get_by_role("heading", name="tiny on alpha")).to_be_visible()
    expect(page.locator("#deployment-state")).to_have_text("healthy")
    for action in ("Start", "Stop", "Restart", "Edit", "Delete"):
        expect(page.get_by_role("button", name=action, exact=True)).to_have_count(0)
        expect(page.get_by_role("link", name=action, exact=True)).to_have_count(0)
    expect(page.locator("main form[method=post]")).to_have_count(0)
    assert page.url.endswith(deployment.get_absolute_url())
