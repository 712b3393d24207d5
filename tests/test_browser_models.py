"""A provider finds a model on the Hub stand-in, adds it to the catalogue and sends it to a rig, in Chromium."""

import re

import pytest
from playwright.sync_api import expect

from tests.helpers import make_node
from tests.gguf_model import write_tiny_llama
from tests.test_browser import WAIT_MS, confirm_password, htmx_requests, log_in

pytestmark = pytest.mark.browser

MiB = 1024 * 1024
REPO = "browser-org/TinyChat-GGUF"
FILENAME = "tinychat-Q8_0.gguf"
GATED_REPO = "browser-org/Gated-GGUF"
GATED_FILE = "gated-Q4_K_M.gguf"
BAR = "#downloads tr[data-node='alpha'] progress"


def fact(page, name):
    """The value beside a term in the model facts list."""
    return page.locator("#facts dt", has_text=re.compile(f"^{name}$")).locator("xpath=following-sibling::dd[1]")


def shot(page, folder, name):
    page.screenshot(path=folder / f"{name}.png", full_page=True)


def bar_value(page):
    return page.evaluate("sel => { const e = document.querySelector(sel); return e ? Number(e.getAttribute('value')) : null }",
                         BAR)


def test_it_finds_a_model_on_the_hub_and_downloads_it_to_a_rig_with_a_live_progress_bar(
        page, live_server, rigs, operator, hub, settings, tmp_path):
    settings.HF_ENDPOINT = hub.url
    path = write_tiny_llama(tmp_path / "tinychat.gguf", chat_template="{{ bos_token }}{{ messages }}", pad_to=64 * MiB)
    hub.add_file(REPO, FILENAME, path, rate=16 * MiB)  # a few seconds: long enough to watch the bar move
    hub.add_repo(REPO, downloads=12345, likes=678)
    _, token = make_node("alpha")
    rigs.start("alpha", token)
    make_node("beta")  # enrolled, no agent: a second box to tick while the page polls
    shots = tmp_path / "shots"
    shots.mkdir()

    log_in(page, live_server, "olga", "operator-pass-1")
    expect(page.locator("#rig-alpha .badge")).to_have_text("online", timeout=WAIT_MS)

    page.get_by_role("navigation").get_by_role("link", name="Models").click()
    expect(page.get_by_role("heading", name="Model catalogue")).to_be_visible()
    expect(page.locator("#catalogue")).to_contain_text("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf")  # curated
    shot(page, shots, "catalogue")

    page.get_by_label("Search Hugging Face").fill("tiny")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", name="Search Hugging Face")).to_be_visible()
    result = page.locator("#search-results tbody tr", has=page.get_by_role("link", name=REPO, exact=True))
    expect(result).to_have_count(1)
    expect(result.locator("td").nth(1)).to_have_text("12,345")
    expect(result.locator("td").nth(2)).to_have_text("678")
    expect(result.locator(".badge")).to_have_text("GGUF")
    shot(page, shots, "search")

    result.get_by_role("link", name=REPO, exact=True).click()
    expect(page.get_by_role("heading", name=REPO)).to_be_visible()
    row = page.locator("#repo-files tbody tr", has_text=FILENAME)
    expect(row.locator("td").nth(1)).to_have_text("Q8_0")
    expect(row.locator("td").nth(2)).to_have_text("64.0 MB")
    shot(page, shots, "repo")

    row.get_by_role("button", name="Add to catalogue").click()
    expect(page.get_by_role("heading", name=FILENAME)).to_be_visible(timeout=WAIT_MS)
    # The panel worker reads the header over range requests; the page polls until the facts are in.
    expect(fact(page, "Architecture")).to_have_text("llama", timeout=WAIT_MS)
    expect(fact(page, "Layers")).to_have_text("2")
    expect(fact(page, "Context length")).to_have_text("256")
    expect(fact(page, "Heads / KV heads")).to_have_text("4 / 4")
    expect(fact(page, "Chat template")).to_have_text("yes")
    expect(fact(page, "Size")).to_have_text("64.0 MB")
    served_before_download = hub.file(REPO, FILENAME).served
    assert served_before_download < 8 * MiB, "the facts were read from the header, not the whole file"

    page.get_by_label("alpha", exact=True).check()
    page.get_by_role("button", name="Download").click()
    expect(page.locator(".flash")).to_have_text("Download started on alpha.", timeout=WAIT_MS)
    page.evaluate("window.__marker = 1")
    polls = htmx_requests(page)

    # The bar shows a part of the file, then a larger part, each time from the live poll.
    page.wait_for_function("sel => { const e = document.querySelector(sel);"
                           " return e && Number(e.getAttribute('value')) > 0 && Number(e.value) < e.max }",
                           arg=BAR, timeout=WAIT_MS, polling=100)
    first = bar_value(page)
    shot(page, shots, "model_file_downloading")
    page.get_by_label("beta", exact=True).check()  # a provider picking the next rig while the bar moves
    page.wait_for_function(f"sel => Number(document.querySelector(sel).getAttribute('value')) > {first}",
                           arg=BAR, timeout=WAIT_MS, polling=100)
    second = bar_value(page)
    progress = page.locator("#downloads tr[data-node='alpha'] .progress")
    assert 0 < first < second <= 64 * MiB, (first, second)
    assert int(progress.get_attribute("data-total")) == 64 * MiB
    expect(page.get_by_label("beta", exact=True)).to_be_checked()  # the poll did not wipe the tick

    download = page.locator("#downloads tr[data-node='alpha']")
    expect(download).to_have_attribute("data-status", "succeeded", timeout=WAIT_MS)
    expect(download.locator(".badge")).to_have_text("succeeded")
    expect(page.locator(BAR)).to_have_attribute("value", str(64 * MiB))
    copy = page.locator("#copies li", has_text="alpha")
    expect(copy).to_contain_text("sha256 verified", timeout=WAIT_MS)
    expect(copy).to_contain_text("64.0 MB")
    shot(page, shots, "model_file_done")
    assert page.evaluate("window.__marker") == 1, "the progress came from a reload, not the live poll"
    assert polls, "the page never polled"

    copy.get_by_role("link", name="alpha").click()
    expect(page.get_by_role("heading", name="Model files on alpha")).to_be_visible()
    rig_row = page.locator("#rig-files tbody tr", has_text=FILENAME)
    expect(rig_row).to_have_count(1)
    expect(rig_row).to_contain_text("64.0 MB")
    expect(rig_row).to_contain_text("sha256 ok")
    expect(rig_row.get_by_role("link", name="TinyChat-GGUF")).to_be_visible()
    shot(page, shots, "rig_files")


# Serialized rollback like the tests on the shared panel worker: a plain flush breaks their restore.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_it_lists_a_gated_repo_only_after_a_token_is_saved_and_never_shows_the_token(
        page, live_server, operator, hub, settings, tmp_path):
    settings.HF_ENDPOINT = hub.url
    hub.add_file(GATED_REPO, GATED_FILE, write_tiny_llama(tmp_path / "gated.gguf"))
    hub.add_repo(GATED_REPO, gated=True)

    log_in(page, live_server, "olga", "operator-pass-1")
    page.goto(f"{live_server.url}/models/search/?q=gated")
    page.get_by_role("link", name=GATED_REPO, exact=True).click()
    expect(page.locator("#repo-error")).to_contain_text(f"{GATED_REPO} is gated")
    expect(page.locator("#repo-error")).to_contain_text("token")
    expect(page.locator("#repo-files")).to_have_count(0)
    shot(page, tmp_path, "gated_repo")

    page.get_by_role("link", name="Set a Hugging Face token").click()
    expect(page.get_by_role("heading", name="Hugging Face token")).to_be_visible()
    expect(page.locator("#token-state")).to_have_text("No token is set.")
    page.get_by_label("Token").fill(hub.token)
    page.get_by_role("button", name="Save").click()
    confirm_password(page, "operator-pass-1")  # a Hub token is a secret the rigs will use: the password first
    page.get_by_label("Token").fill(hub.token)
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".flash")).to_contain_text("token saved")
    expect(page.locator("#token-state")).to_have_text("A token is set.")
    expect(page.locator("#id_token")).to_have_value("")
    expect(page.locator("#id_token_helptext")).to_contain_text("set — leave blank to keep")
    assert hub.token not in page.content()
    shot(page, tmp_path, "token_saved")

    page.goto(f"{live_server.url}/models/hub/{GATED_REPO}/")
    expect(page.locator("#repo-error")).to_have_count(0)
    expect(page.locator("#repo-files tbody tr", has_text=GATED_FILE)).to_contain_text("Q4_K_M")
