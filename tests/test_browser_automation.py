"""Automating the fleet in Chromium, end to end: an operator creates a personal API token (shown once), a script uses
it to launch a deployment on a real rig agent through the JSON API, follows the operation it gets back until the
server is healthy, and the audit log shows the action — who, over the API, from which address, how it ended."""

import json
import urllib.request

import pytest
from playwright.sync_api import expect

from api.models import ApiToken
from hosting.models import Build, Deployment
from models_catalog.models import RigFile
from tests import llama
from tests.gguf_model import write_tiny_llama
from tests.harness import stop_llama_servers_under, wait_until
from tests.helpers import free_port, make_node
from tests.test_browser import WAIT_MS, log_in

pytestmark = pytest.mark.browser


def _api(live_server, method, path, token):
    request = urllib.request.Request(f"{live_server.url}/api/v1{path}", method=method, data=b"" if method == "POST"
                                     else None, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


@pytest.fixture
def stopped_deployment(rigs, tmp_path):
    binary = llama.server_binary()
    node, token = make_node("alpha")
    rigs.start("alpha", token)
    build = Build.objects.create(node=node, source=str(binary), ref="", backend="cpu", adopted=True,
                                 status=Build.READY, is_default=True, binary_path=str(binary))
    model = write_tiny_llama(tmp_path / "tiny-llama-F32.gguf")
    rig_file = RigFile.objects.create(node=node, path=str(model), size=model.stat().st_size)
    yield Deployment.objects.create(node=node, name="tiny", model_file=rig_file, build=build, port=free_port(),
                                    ctx_size=512, parallel=1, threads=1, n_gpu_layers=0, flash_attn="off",
                                    extra_flags=["--no-webui"])
    rigs.stop_all()
    stop_llama_servers_under(tmp_path)


def test_a_token_made_in_the_page_launches_a_deployment_and_the_audit_log_shows_it(page, live_server, operator,
                                                                                     stopped_deployment):
    deployment = stopped_deployment
    log_in(page, live_server, "olga", "operator-pass-1")

    # The token: shown once, then only its prefix.
    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("Name").fill("deploy-script")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#token-secret").inner_text(timeout=WAIT_MS).strip()
    page.goto(f"{live_server.url}/account/tokens/")
    expect(page.locator("#token-list")).to_contain_text(f"{secret[:12]}…")
    assert secret not in page.content()

    # A script launches the deployment with it and follows the operation until it ends.
    status, answer = _api(live_server, "POST", f"/deployments/{deployment.pk}/launch", secret)
    assert status == 202 and answer["kind"] == "launch" and answer["status"] == "queued"
    finished = wait_until(lambda: (lambda body: body if body["terminal"] else None)(
        _api(live_server, "GET", answer["url"].removeprefix("/api/v1"), secret)[1]), timeout=60,
        message="the launch to end")
    assert finished["status"] == "succeeded", finished
    _, served = _api(live_server, "GET", f"/deployments/{deployment.pk}", secret)
    assert served["desired_state"] == "running" and "api_key" not in served
    wait_until(lambda: Deployment.objects.get(pk=deployment.pk).actual_state == "healthy", timeout=60,
               message="the server healthy")
    assert ApiToken.objects.get(prefix=secret[:12]).last_used_at is not None

    # The audit log: the API's own row (the operator, channel API, the address) and the operation with its outcome.
    page.get_by_role("link", name="Audit log").click()
    log = page.locator("#audit-log")
    api_row = log.locator('tr[data-source="event"][data-action="deployment.launch"]')
    expect(api_row).to_have_count(1)
    expect(api_row).to_contain_text("olga")
    expect(api_row.locator("td").nth(7)).to_have_text("api")
    expect(api_row).to_contain_text("127.0.0.1")
    expect(api_row.locator(".badge")).to_have_text("ok")
    operation_row = log.locator('tr[data-source="operation"][data-action="launch"]')
    expect(operation_row).to_contain_text("olga")
    expect(operation_row).to_contain_text("127.0.0.1")  # the operation keeps where it was asked from, and how
    expect(operation_row.locator("td").nth(7)).to_have_text("api")
    expect(operation_row.locator(".badge.succeeded")).to_have_text("ok")
    expect(log.locator('tr[data-action="token.create"]')).to_contain_text("deploy-script")
    assert secret not in page.content()
