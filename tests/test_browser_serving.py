"""'Try it' in Chromium: a prompt typed on a deployment's page streams its answer into the page token by token
(through the panel: the browser never talks to the rig), while the page's serving metrics show the slot busy; a
second answer is stopped half-way."""

import re

import pytest
from playwright.sync_api import expect

from hosting import services
from hosting.models import Build, Deployment
from models_catalog.models import RigFile
from nodes.models import Operation
from tests import llama
from tests.gguf_model import write_tiny_llama
from tests.harness import stop_llama_servers_under, wait_until
from tests.helpers import free_port, make_node
from tests.test_browser import WAIT_MS, log_in

pytestmark = pytest.mark.browser

KEY = "sk-browser-Secret-51c3a"

# Records the answer's text length each time the answer box changes, with the answer's status at that moment.
RECORD_LENGTHS = """() => {
  window.__lengths = [];
  new MutationObserver(() => {
    const text = document.querySelector('#try-it-text');
    if (text) window.__lengths.push([text.textContent.length, text.dataset.status]);
  }).observe(document.querySelector('#try-it-answer'), {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture
def slow_server(rigs, operator, tmp_path):
    """Rig alpha serving a model big enough to generate at a pace a browser can watch (~150 tokens/s on one thread;
    the 2-layer test model makes 4,000), launched through the panel, behind an API key."""
    binary = llama.server_binary()
    node, token = make_node("alpha")
    rigs.start("alpha", token)
    build = Build.objects.create(node=node, source=str(binary), ref="", backend="cpu", adopted=True,
                                 status=Build.READY, is_default=True, binary_path=str(binary))
    model = write_tiny_llama(tmp_path / "slow-llama-F32.gguf", n_layers=8, width=512, heads=8, kv_heads=8,
                             context=1024)
    rig_file = RigFile.objects.create(node=node, path=str(model), size=model.stat().st_size)
    deployment = Deployment.objects.create(node=node, name="slow", model_file=rig_file, build=build, port=free_port(),
                                           ctx_size=1024, parallel=1, threads=1, n_gpu_layers=0, flash_attn="off",
                                           extra_flags=["--no-webui"], api_key=KEY)
    services.set_desired(deployment, "launch", operator)
    wait_until(lambda: Deployment.objects.get(pk=deployment.pk).actual_state == "healthy", timeout=60,
               message="the server healthy")
    yield deployment
    rigs.stop_all()
    stop_llama_servers_under(tmp_path)


def test_the_answer_streams_into_the_page_token_by_token(page, live_server, slow_server):
    deployment = slow_server
    rig_requests = []
    page.on("request", lambda request: f":{deployment.port}" in request.url and rig_requests.append(request.url))

    log_in(page, live_server, "olga", "operator-pass-1")
    page.goto(f"{live_server.url}{deployment.get_absolute_url()}")
    expect(page.locator("#serving-slots")).to_have_text("0 of 1 busy", timeout=WAIT_MS)
    page.evaluate(RECORD_LENGTHS)

    form = page.locator("#try-it-form")
    form.get_by_label("Prompt").fill("Tell me a long story.")
    form.get_by_label("Max tokens").fill("500")
    form.get_by_label("Temperature").fill("0")
    form.get_by_role("button", name="Send").click()

    # While it answers, the live metrics show the one slot busy and the tokens it generates each second.
    expect(page.locator("#serving-slots")).to_have_text("1 of 1 busy", timeout=WAIT_MS)
    expect(page.locator("#serving-facts")).to_have_attribute("data-generated-tps", re.compile(r"^[1-9][0-9.]*$"),
                                                              timeout=WAIT_MS)
    answer = page.locator("#try-it-text")
    expect(answer).to_have_attribute("data-status", "succeeded", timeout=WAIT_MS)
    chat = Operation.objects.get(kind=Operation.CHAT)
    expect(answer).to_have_text(chat.result["text"])
    expect(page.locator("#try-it-message")).to_contain_text("tokens in")

    lengths = page.evaluate("window.__lengths")
    while_running = sorted({length for length, status in lengths if status != "succeeded" and length > 0})
    # Several growing pieces arrived before the answer was complete (the last running report may already carry the
    # whole text when the server ends before the agent's final report goes out: a busy machine does that).
    assert len([length for length in while_running if length < len(chat.result["text"])]) >= 3, lengths
    growth = [length for length, _ in lengths]
    assert growth == sorted(growth), "the answer shrank while streaming"
    assert chat.result["timings"]["predicted_n"] > 100

    # A second answer, stopped half-way: what came is kept, the button goes, the server's slot is free again.
    form.get_by_label("Max tokens").fill("1000")
    form.get_by_role("button", name="Send").click()
    expect(answer).to_have_attribute("data-status", "running", timeout=WAIT_MS)  # the new answer, not the last one
    expect(answer).to_have_text(re.compile(r".{20}"), timeout=WAIT_MS)
    page.locator("#try-it-stop").get_by_role("button", name="Stop").click()
    expect(answer).to_have_attribute("data-status", "cancelled", timeout=WAIT_MS)
    expect(page.locator("#try-it-message")).to_have_text("stopped by the provider")
    expect(page.locator("#try-it-stop")).to_be_empty()
    stopped = Operation.objects.filter(kind=Operation.CHAT).order_by("-pk").first()
    assert 20 <= len(stopped.result["text"]) and stopped.result["pieces"] < 1000
    expect(page.locator("#serving-slots")).to_have_text("0 of 1 busy", timeout=WAIT_MS)
    # The server stopped generating too: it has not gone on towards the 1,000 tokens asked for.
    generated = Deployment.objects.get(pk=deployment.pk).serving["tokens_generated"]
    assert generated < chat.result["timings"]["predicted_n"] + 500, generated

    # The browser talked only to the panel; the key is nowhere in the page.
    assert rig_requests == []
    assert KEY not in page.content()
