"""Publishing end to end: a real agent, the proxy-router stand-in (tests/routerstub.py) as the router binary, and a
real llama-server behind an API key. The panel publishes the deployment; the rig writes it into models-config.json;
the router's /healthcheck probes it healthy; a chat sent to the router's proxy port reaches llama-server. The first
router has no reload endpoint, so the change costs a restart, asked first; after the provider upgrades it to one that
reloads, changes are applied with the same pid. The API key never reaches a page, a report, an operation or Redis."""

import json
import os

import pytest

from marketplace.models import Listing
from nodes.models import Operation
from tests import llama
from tests.harness import stop_llama_servers_under, wait_until
from tests.helpers import free_port, make_node, page
from tests.routerkit import (COOKIE, MOR, WALLET, assert_no_secret, chain_bid, chain_model, chain_open_session,
                             chain_provider, request, seen_by_the_panel)
from tests.test_integration_serving import BrokerWatch
from tests.test_router_channel import _router_binary, _snapshot as _router, _stop_router

pytestmark = pytest.mark.integration

KEY = "sk-router-Secret-93c1a7"
WALLET_KEY = "0xprivate-test-key-never-shown"
MODEL = "0x" + "ab" * 32
BID = "0x" + "b1" * 32
SESSION = "0x" + "5e" * 32


def _seed():
    """The provider's chain: registered, their model, an active bid on it and one open session."""
    return {
        "balance": {"mor": str(3 * MOR), "eth": str(10**16)},
        "providers": [chain_provider()],
        "models": [chain_model(MODEL, "tiny-llama")],
        "bids": [chain_bid(BID, MODEL, 10_000_000_000)],
        "sessions": [chain_open_session(SESSION, MODEL, BID, 10_000_000_000)],
    }


def _provider_env(folder, version):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "seed.json").write_text(json.dumps(_seed()))
    (folder / "hooks.json").write_text("{}")
    (folder / ".env").write_text("\n".join([
        "# mine", f"WALLET_PRIVATE_KEY={WALLET_KEY}", f"COOKIE_CONTENT={COOKIE}", f"ROUTERSTUB_WALLET={WALLET}",
        f"ROUTERSTUB_CHAIN={folder / 'seed.json'}", f"ROUTERSTUB_HOOKS_FILE={folder / 'hooks.json'}",
        f"ROUTERSTUB_VERSION={version}"]) + "\n")


def _finished(timeout=90):
    op = Operation.objects.filter(kind=Operation.ROUTER_APPLY).order_by("-pk").first()
    wait_until(lambda: Operation.objects.get(pk=op.pk).is_terminal, timeout=timeout, message="router_apply to end")
    return Operation.objects.get(pk=op.pk)


def _models_config(router_dir):
    return json.loads((router_dir / "models-config.json").read_text())["models"]


@pytest.fixture(scope="session")
def llama_server_binary():
    return llama.server_binary()


def test_a_published_deployment_is_served_through_the_router_and_its_key_stays_on_the_rig(
        rigs, operator_client, redis_url, llama_server_binary, tmp_path):
    node, token = make_node("alpha")
    router_dir = tmp_path / "router"
    _provider_env(router_dir, "v7.11.0-stub")
    binary = _router_binary(tmp_path / "bin")
    rigs.start("alpha", token, extra_env={"MORPHEUS_AGENT_ROUTER_DIR": str(router_dir)})
    broker = BrokerWatch(redis_url)
    pages = []
    try:
        # A real llama-server behind an API key.
        deployment, port = llama.host_tiny_model(operator_client, node, llama_server_binary, tmp_path, ctx_size=512,
                                                 parallel=2, api_key=KEY)

        # The router, started from the Marketplace page: it reports the provider's model and its open session.
        proxy_port, web_port = free_port(), free_port()
        router_form = {"binary": str(binary), "network": "testnet", "proxy_port": proxy_port, "web_port": web_port}
        assert operator_client.post("/rigs/alpha/marketplace/", router_form).status_code == 302
        assert _finished().status == Operation.SUCCEEDED
        router = _router(lambda s, r: s.get("models") and s.get("open_sessions") == 1, "the router's chain state")
        first_pid = router.snapshot["pid"]
        assert router.snapshot["proxy_listening"] is True and router.snapshot["reload_supported"] is None

        # Publishing asks first: this router restarts to apply it, which cuts the open session.
        url = f"/deployments/{deployment.pk}/marketplace/publish/"
        text = page(operator_client.get(f"/deployments/{deployment.pk}/"))
        pages.append(text)
        assert f'<option value="{MODEL}" selected>tiny-llama' in text
        assert "cuts its <strong>1</strong> open session." in text
        publish = {"model": MODEL, "model_id": "", "model_name": "tiny-llama", "concurrent_slots": 2,
                   "capacity_policy": "simple"}
        text = page(operator_client.post(url, publish))
        pages.append(text)
        assert "cuts its 1 open session(s)" in text and not Listing.objects.exists()
        assert operator_client.post(url, {**publish, "confirm_restart": "on"}).status_code == 302
        op = _finished()
        assert op.status == Operation.SUCCEEDED, op.message
        router = _router(lambda s, r: s.get("config_models") and s.get("reload_supported") is False
                         and r.state == "healthy", "the router restarted with the entry")
        assert router.snapshot["pid"] != first_pid and "restarted (its models changed and it could not reload" in \
            op.message  # the router has no reload endpoint

        # On the rig: the entry, with the server's loopback URL and its key; the router probes it healthy.
        api_url = f"http://127.0.0.1:{port}/v1/chat/completions"
        assert _models_config(router_dir) == [{"modelId": MODEL, "modelName": "tiny-llama", "apiType": "openai",
                                               "apiUrl": api_url, "concurrentSlots": 2, "capacityPolicy": "simple",
                                               "apiKey": KEY}]
        status, health = request("GET", f"http://127.0.0.1:{web_port}/healthcheck", auth=None)
        assert status == 200 and health["models"][MODEL]["status"] == "healthy"
        assert router.snapshot["config_models"][0]["apiKey"] == "set"

        # A consumer's chat on the proxy port reaches llama-server, the key added by the router.
        status, answer = request("POST", f"http://127.0.0.1:{proxy_port}/v1/chat/completions", {
            "model": "tiny-llama", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}, auth=None)
        assert status == 200, answer
        assert answer["choices"][0]["message"]["role"] == "assistant" and answer["usage"]["completion_tokens"] >= 1

        # The checklist turns green once the router reports the model healthy.
        _router(lambda s, r: s.get("models_health", {}).get(MODEL) == "healthy", "the model healthy in a report")
        text = page(operator_client.get("/rigs/alpha/marketplace/"))
        pages.append(text)
        assert 'id="ready-to-sell-alpha"' in text, text[text.find('id="checklist"'):][:3000]
        pages.append(page(operator_client.get("/marketplace/")))
        assert 'id="ready-to-sell-alpha"' in pages[-1]

        # The provider upgrades to a router that reloads its models (a new version), restarted from the panel.
        env = (router_dir / ".env").read_text().replace("ROUTERSTUB_VERSION=v7.11.0-stub",
                                                        "ROUTERSTUB_VERSION=v7.12.0-stub")
        (router_dir / ".env").write_text(env + "ROUTERSTUB_RELOAD=1\n")
        response = operator_client.post("/rigs/alpha/marketplace/", {**router_form, "confirm_restart": "on"})
        assert response.status_code == 302
        assert _finished().status == Operation.SUCCEEDED
        router = _router(lambda s, r: s.get("version") == "v7.12.0-stub" and r.state == "healthy"
                         and s.get("open_sessions") is not None, "upgraded")
        assert router.snapshot["reload_supported"] is None  # not tried on this version yet: still asked
        upgraded_pid = router.snapshot["pid"]

        # A change of the entry is reloaded: same pid, no session cut.
        text = page(operator_client.post(url, {**publish, "concurrent_slots": 1}))
        assert f"cuts its {router.open_sessions} open session(s)" in text
        assert operator_client.post(url, {**publish, "concurrent_slots": 1, "confirm_restart": "on"}).status_code == 302
        op = _finished()
        assert op.status == Operation.SUCCEEDED and "reloaded its models without a restart" in op.message, op.message
        router = _router(lambda s, r: s.get("reload_supported") is True, "reload known to work")
        assert router.snapshot["pid"] == upgraded_pid and _models_config(router_dir)[0]["concurrentSlots"] == 1

        # Known to reload, a change is sent without a question; the reload failing changes nothing on the rig.
        (router_dir / "hooks.json").write_text(json.dumps({"faults": {"/config/models/reload": 500}}))
        assert operator_client.post(url, {**publish, "concurrent_slots": 2}).status_code == 302
        op = _finished()
        assert op.status == Operation.FAILED and "nothing was changed" in op.message, op.message
        assert _models_config(router_dir)[0]["concurrentSlots"] == 1
        router = _router(lambda s, r: s.get("pid"), "the router still running")
        assert router.snapshot["pid"] == upgraded_pid and router.snapshot["config_models"][0]["concurrentSlots"] == 1
        text = page(operator_client.get("/rigs/alpha/marketplace/"))
        assert 'data-check="apply-pending"' in text
        (router_dir / "hooks.json").write_text("{}")

        # Now that it reloads, unpublishing asks nothing and keeps the router running.
        text = page(operator_client.get(f"/deployments/{deployment.pk}/marketplace/unpublish/"))
        pages.append(text)
        assert 'id="unpublish-restart-warning"' not in text
        response = operator_client.post(f"/deployments/{deployment.pk}/marketplace/unpublish/")
        assert response.status_code == 302 and not Listing.objects.exists()
        op = _finished()
        assert op.status == Operation.SUCCEEDED and "reloaded" in op.message, op.message
        router = _router(lambda s, r: s.get("config_models") == [], "the entry gone")
        assert router.snapshot["pid"] == upgraded_pid and _models_config(router_dir) == []
        assert os.path.exists(f"/proc/{upgraded_pid}")
        pages.append(page(operator_client.get("/rigs/alpha/marketplace/")))
    finally:
        broker.close()
        rigs.stop_all()
        _stop_router(tmp_path / "alpha" / "data" / "state" / "router" / "state.json")
        stop_llama_servers_under(tmp_path)

    assert_no_secret(seen_by_the_panel(pages, broker, rigs.logs()),
                     KEY, WALLET_KEY, COOKIE.partition(":")[2])
