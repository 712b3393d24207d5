"""A provider and a viewer using the panel in a real Chromium, against real agents."""

import re

import pytest
from playwright.sync_api import expect

from tests.helpers import make_node

pytestmark = pytest.mark.browser

WAIT_MS = 30_000  # two shared cores, several people testing at once: be generous


def log_in(page, live_server, username, password):
    page.goto(f"{live_server.url}/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Rigs")).to_be_visible(timeout=WAIT_MS)


def confirm_password(page, password):
    """Give the password the panel asks for again before a risky action; the user is back where they clicked and
    does the action again (nothing was done yet)."""
    expect(page.get_by_role("heading", name="Confirm your password")).to_be_visible(timeout=WAIT_MS)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator(".flash")).to_contain_text("Password confirmed")


def htmx_requests(page):
    """Records the requests htmx makes (it marks them with an HX-Request header)."""
    seen = []
    page.on("request", lambda request: request.headers.get("hx-request") == "true" and seen.append(request.url))
    return seen


def test_it_updates_both_rig_cards_live_without_reloading_the_page(page, live_server, rigs, operator, tmp_path):
    _, alpha_token = make_node("alpha")
    _, beta_token = make_node("beta")
    rigs.start("alpha", alpha_token, fake_nvml="2x3090")
    rigs.start("beta", beta_token, fake_nvml="nodriver")
    polls = htmx_requests(page)

    log_in(page, live_server, "olga", "operator-pass-1")

    alpha, beta = page.locator("#rig-alpha"), page.locator("#rig-beta")
    expect(alpha.locator(".gpu-name")).to_have_text(
        ["GPU 0 · NVIDIA GeForce RTX 3090", "GPU 1 · NVIDIA GeForce RTX 3090"], timeout=WAIT_MS)
    expect(alpha.locator(".badge")).to_have_text("online", timeout=WAIT_MS)
    expect(beta.locator(".badge")).to_have_text("online", timeout=WAIT_MS)
    expect(beta.locator(".no-gpu")).to_contain_text("no GPUs", timeout=WAIT_MS)
    expect(alpha.locator(".bar span").first).to_have_text(re.compile(r"^\d+%$"), timeout=WAIT_MS)
    page.screenshot(path=tmp_path / "dashboard.png", full_page=True)

    page.evaluate("window.__marker = 1")
    alpha_text = alpha.locator(".gpu").first.inner_text()
    page.wait_for_event("request", lambda request: request.headers.get("hx-request") == "true", timeout=WAIT_MS)
    expect(alpha.locator(".gpu").first).not_to_have_text(alpha_text, timeout=WAIT_MS)
    expect(beta.locator(".muted").first).to_contain_text("reporting")

    assert page.evaluate("window.__marker") == 1, "the page reloaded instead of swapping the cards"
    assert any(url.rstrip("/") == live_server.url for url in polls), polls

    # Each poll says which cards the page shows; the answer carries only changed cards (or nothing). Beta stopped:
    # its card alone turns stale, then offline, and its "last seen" age is kept by the browser.
    cards_header = page.evaluate("""() => new Promise(resolve => {
        document.addEventListener("htmx:beforeRequest", e => resolve(e.detail.requestConfig.headers["X-Rig-Cards"]),
                                  {once: true});
    })""")
    assert re.fullmatch(r"[0-9a-f]{16}:[0-9a-f]{12}", cards_header), cards_header
    rigs.procs[1].stop()
    expect(beta.locator(".badge")).to_have_text("offline", timeout=WAIT_MS * 3)
    expect(beta.locator("time")).to_have_text(re.compile(r"^\d+ s ago$"), timeout=WAIT_MS)
    expect(alpha.locator(".badge")).to_have_text("online")
    assert page.evaluate("window.__marker") == 1


def test_it_shows_a_rigs_hardware_and_runs_a_ping_from_its_page(page, live_server, rigs, operator, tmp_path):
    _, token = make_node("alpha")
    rigs.start("alpha", token, fake_nvml="2x3090")

    log_in(page, live_server, "olga", "operator-pass-1")
    page.locator("#rig-alpha").get_by_role("link", name="alpha").click()

    expect(page.get_by_role("heading", name="Rig alpha")).to_be_visible(timeout=WAIT_MS)
    gpu_rows = page.locator("table.gpus tbody tr")
    expect(gpu_rows).to_have_count(2, timeout=WAIT_MS)
    expect(gpu_rows.nth(0)).to_contain_text("NVIDIA GeForce RTX 3090")
    expect(gpu_rows.nth(1)).to_contain_text("24.0 GB")
    charts = page.locator(".gpu-charts")
    expect(charts).to_have_count(2)
    expect(charts.first.locator("figure.chart svg")).to_have_count(4)
    # The live part refreshes itself until the first telemetry shows in the captions.
    first_caption = charts.first.locator("figcaption").first
    expect(first_caption).to_have_text(re.compile(r"Utilisation \d+ %"), timeout=WAIT_MS)
    for action in ("Refresh hardware", "Ping agent", "Rotate token"):
        expect(page.get_by_role("button", name=action)).to_be_visible()
    expect(page.get_by_role("link", name="Remove rig")).to_be_visible()
    page.screenshot(path=tmp_path / "rig.png", full_page=True)

    status_poll = re.compile(r"/operations/\d+/$")
    with page.expect_request(lambda r: status_poll.search(r.url) and r.headers.get("hx-request") == "true",
                             timeout=WAIT_MS):
        page.get_by_role("button", name="Ping agent").click()
        expect(page.get_by_role("heading", name="Ping agent on alpha")).to_be_visible(timeout=WAIT_MS)
        page.evaluate("window.__marker = 1")
    expect(page.locator("#op-status")).to_have_text("succeeded", timeout=WAIT_MS)
    page.screenshot(path=tmp_path / "operation.png", full_page=True)
    assert page.evaluate("window.__marker") == 1, "the status came from a reload, not the live poll"


# Serialized rollback like the tests on the shared panel worker: a plain flush breaks their restore.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_it_shows_a_viewer_no_action_buttons(page, live_server, viewer):
    make_node("alpha")

    log_in(page, live_server, "victor", "viewer-pass-1")
    expect(page.locator("#rig-alpha")).to_be_visible()
    expect(page.get_by_text("Add rig")).to_have_count(0)

    page.locator("#rig-alpha").get_by_role("link", name="alpha").click()
    expect(page.get_by_role("heading", name="Rig alpha")).to_be_visible(timeout=WAIT_MS)
    for action in ("Refresh hardware", "Ping agent", "Rotate token", "Remove rig", "Attach"):
        expect(page.get_by_text(action, exact=True)).to_have_count(0)
    expect(page.locator("main form[method=post]")).to_have_count(0)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)  # a plain flush breaks the next tests' restore
def test_it_copies_the_agent_command_and_shows_a_viewer_why_a_page_is_refused(page, live_server, operator, viewer):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    log_in(page, live_server, "olga", "operator-pass-1")
    page.get_by_role("link", name="Add rig").click()
    page.get_by_label("Name").fill("rig-07")
    page.get_by_role("button", name=re.compile("Add")).click()
    command = page.locator("#agent-command")
    expect(command).to_contain_text("-m nodes.agent")
    page.locator(".copy-wrap", has=command).get_by_role("button", name="Copy").click()
    expect(page.locator(".copy-wrap", has=command).get_by_role("button")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == command.inner_text()
    assert page.locator("link[rel=icon]").count() == 1

    page.context.clear_cookies()
    log_in(page, live_server, "victor", "viewer-pass-1")
    page.goto(f"{live_server.url}/rigs/add/")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.locator("#forbidden")).to_contain_text("Viewers can look but not change anything")
    expect(page.get_by_role("link", name="Rigs", exact=True)).to_be_visible()  # the panel's navigation
