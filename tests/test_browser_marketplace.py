"""Selling through Morpheus in Chromium, end to end: a real agent, the proxy-router stand-in (tests/routerstub.py) as
the router binary, a real llama-server behind an API key. The provider publishes the deployment (the restart it needs
is asked first, with the open session it cuts shown), sees the entry appear in the router's config in force, posts a
bid after the fee confirmation (priced against the competing bids), and watches the checklist turn green, the page
refreshing itself. No secret reaches any page the browser saw, an operation, a report or the broker."""

import json
import re

import pytest
from playwright.sync_api import expect

from hosting import services as hosting_services
from hosting.models import Build, Deployment
from marketplace import services
from marketplace.models import Listing, Router
from models_catalog.models import RigFile
from nodes.models import Operation
from tests import llama
from tests.gguf_model import write_tiny_llama
from tests.harness import stop_llama_servers_under, wait_until
from tests.helpers import free_port, make_node
from tests.routerkit import (COOKIE, MOR, WALLET, assert_no_secret, chain_bid, chain_model, chain_open_session,
                             chain_provider, seen_by_the_panel)
from tests.test_browser import WAIT_MS, log_in
from tests.test_integration_serving import BrokerWatch
from tests.test_router_channel import _router_binary, _stop_router

pytestmark = pytest.mark.browser

KEY = "sk-market-Secret-7f02b9"
WALLET_KEY = "0xprivate-browser-key-never-shown"
COOKIE_PASSWORD = COOKIE.partition(":")[2]
MODEL = "0x" + "ab" * 32
OTHER = "0x" + "cd" * 20
SESSION = "0x" + "5e" * 32
OLD_BID = "0x" + "b0" * 32


def _seed():
    """The provider is registered with their model and no bid yet; another provider bids on the same model at 2 and
    5 × the floor; a consumer still has a session open on the provider's old (deleted) bid."""
    return {
        "balance": {"mor": str(3 * MOR), "eth": str(10**16)},
        "providers": [chain_provider()],
        "models": [chain_model(MODEL, "tiny-llama")],
        "bids": [chain_bid(OLD_BID, MODEL, 10**10, deleted_at="5"),
                 chain_bid("0x" + "c1" * 32, MODEL, 2 * 10**10, provider=OTHER),
                 chain_bid("0x" + "c2" * 32, MODEL, 5 * 10**10, provider=OTHER)],
        "sessions": [chain_open_session(SESSION, MODEL, OLD_BID, 10**10)],
    }


@pytest.fixture
def selling_rig(rigs, operator, tmp_path):
    """Rig alpha: a healthy llama-server deployment with an API key, and a healthy proxy-router started through the
    panel that reports the provider's model and one open session."""
    binary = llama.server_binary()
    node, token = make_node("alpha")
    router_dir = tmp_path / "router"
    router_dir.mkdir()
    (router_dir / "seed.json").write_text(json.dumps(_seed()))
    (router_dir / ".env").write_text("\n".join([
        "# mine", f"WALLET_PRIVATE_KEY={WALLET_KEY}", f"COOKIE_CONTENT={COOKIE}", f"ROUTERSTUB_WALLET={WALLET}",
        f"ROUTERSTUB_CHAIN={router_dir / 'seed.json'}", "ROUTERSTUB_VERSION=v7.11.0-stub"]) + "\n")
    rigs.start("alpha", token, extra_env={"MORPHEUS_AGENT_ROUTER_DIR": str(router_dir)})
    build = Build.objects.create(node=node, source=str(binary), ref="", backend="cpu", adopted=True,
                                 status=Build.READY, is_default=True, binary_path=str(binary))
    model = write_tiny_llama(tmp_path / "tiny-llama-F32.gguf")
    rig_file = RigFile.objects.create(node=node, path=str(model), size=model.stat().st_size)
    deployment = Deployment.objects.create(node=node, name="tiny", model_file=rig_file, build=build, port=free_port(),
                                           ctx_size=512, parallel=2, threads=1, n_gpu_layers=0, flash_attn="off",
                                           extra_flags=["--no-webui"], api_key=KEY)
    hosting_services.set_desired(deployment, "launch", operator)
    op = services.apply_router(node, operator, "testnet", str(_router_binary(tmp_path / "bin")), free_port(),
                               free_port())
    wait_until(lambda: Operation.objects.get(pk=op.pk).is_terminal, timeout=60, message="the router started")
    assert Operation.objects.get(pk=op.pk).status == Operation.SUCCEEDED, Operation.objects.get(pk=op.pk).message
    wait_until(lambda: Deployment.objects.get(pk=deployment.pk).actual_state == "healthy", timeout=60,
               message="the server healthy")
    wait_until(lambda: (Router.objects.get(node=node).snapshot.get("open_sessions") == 1
                        and Router.objects.get(node=node).snapshot.get("market")), timeout=30,
               message="the router's chain state reported")
    yield deployment
    rigs.stop_all()
    _stop_router(tmp_path / "alpha" / "data" / "state" / "router" / "state.json")
    stop_llama_servers_under(tmp_path)


def test_publish_restart_asked_bid_after_the_fee_and_the_checklist_turns_green(page, live_server, redis_url, rigs,
                                                                                 selling_rig):
    deployment = selling_rig
    broker = BrokerWatch(redis_url)
    seen = []
    try:
        log_in(page, live_server, "olga", "operator-pass-1")

        # Publish from the deployment's page: the router cannot reload, so it restarts, and the page says it cuts
        # the one open session; the box must be ticked.
        page.goto(f"{live_server.url}{deployment.get_absolute_url()}")
        sell = page.locator("#publish-form")
        expect(sell.locator("#sell_model")).to_have_value(MODEL)
        expect(page.locator("#sell-restart-warning strong")).to_have_text("1")
        seen.append(page.content())
        sell.locator("#publish-submit").click()
        expect(page.locator("body")).to_contain_text("cuts its 1 open session(s)", timeout=WAIT_MS)
        assert not Listing.objects.exists()
        page.locator("#sell_confirm_restart").check()
        page.locator("#publish-submit").click()

        # The Marketplace page follows the router live: the entry appears in the config in force, the checklist
        # says a bid is missing.
        page.goto(f"{live_server.url}/rigs/alpha/marketplace/")
        live = page.locator("#router-live")
        expect(live.locator("#router-config-models")).to_contain_text(MODEL, timeout=WAIT_MS)
        expect(live.locator("#router-config-models")).to_contain_text(
            f"http://127.0.0.1:{deployment.port}/v1/chat/completions")
        expect(live.locator("#checklist-alpha")).to_have_attribute("data-ready", "no")
        expect(live.locator('li[data-check="config-without-bid"]')).to_be_visible(timeout=WAIT_MS)
        seen.append(page.content())

        # Post a bid: the form starts at the deployment's suggested price, the review says what it burns and where
        # the price stands among the competing bids; only then is it sent.
        form = page.locator("#chain-form-post_bid")
        expect(form.locator("#id_post_bid_model_id")).to_have_value(MODEL)
        form.locator("#id_post_bid_price").fill("0.00000003")
        form.locator("#id_post_bid_price_unit").select_option("MOR")
        form.get_by_role("button", name=re.compile("Review")).click()
        costs = page.locator("#chain-costs")
        expect(costs).to_contain_text("non-refundable 0.3 MOR fee")
        expect(page.locator("#chain-confirm #chain-market")).to_contain_text("of 2")
        seen.append(page.content())
        assert not Operation.objects.filter(kind=Operation.ROUTER_CHAIN).exists()
        page.locator("#chain-confirm-button").click()

        # Back on the Marketplace page, without reloading it: the bid is on chain and every check passes.
        expect(page.locator("#ready-to-sell-alpha")).to_be_visible(timeout=WAIT_MS * 2)
        expect(page.locator("#checklist-alpha")).to_have_attribute("data-ready", "yes")
        seen.append(page.content())
        bid_op = Operation.objects.get(kind=Operation.ROUTER_CHAIN)
        assert bid_op.status == Operation.SUCCEEDED, bid_op.message
        router = Router.objects.get(node__name="alpha")
        assert [b["price_per_second"] for b in router.snapshot["bids"]] == [str(3 * 10**10)]
        assert router.snapshot["models_health"][MODEL] == "healthy"
        page.goto(f"{live_server.url}/marketplace/")
        expect(page.locator("#ready-to-sell-alpha")).to_be_visible()
        seen.append(page.content())
    finally:
        broker.close()

    assert_no_secret(seen_by_the_panel(seen, broker, rigs.logs()),
                     KEY, WALLET_KEY, COOKIE_PASSWORD)
