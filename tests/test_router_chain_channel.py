"""An on-chain action end to end: the operator posts a bid on the Marketplace page, confirms the 0.3 MOR fee, the
operation reaches a real agent, the agent posts it through the router stand-in (tests/routerstub.py, a real process),
and the outcome and a fresh router report (the new bid, the competing prices) come back to the page."""

import json

import pytest

from nodes.models import Operation
from tests.helpers import free_port, make_node, page
from tests.routerkit import MOR, WALLET, assert_no_secret, confirm_chain_action, mid, seen_by_the_panel
from tests.test_integration_serving import BrokerWatch
from tests.test_router_channel import (COOKIE_PASSWORD, WALLET_KEY, _finished, _provider_env, _router_binary,
                                       _snapshot, _stop_router)

pytestmark = pytest.mark.integration

THEIRS = mid(7)
OTHER = "0x" + "34" * 20
FEE = 3 * MOR // 10


def _seed(seed_file):
    """This wallet already a provider; someone else's model with two competing bids on it."""
    bid = {"Nonce": "1", "CreatedAt": "1700000000", "DeletedAt": "0", "Provider": OTHER, "ModelAgentId": THEIRS}
    seed_file.write_text(json.dumps({
        "balance": {"mor": str(3 * MOR), "eth": str(10**16)},
        "providers": [{"Address": WALLET, "Endpoint": "alpha.example.com:3333", "Stake": str(2 * MOR // 10),
                       "CreatedAt": "1700000000", "IsDeleted": False}],
        "models": [{"Id": THEIRS, "IpfsCID": mid(0), "Fee": 0, "Stake": MOR // 10, "Owner": OTHER, "Name": "llama",
                    "Tags": ["chat"], "CreatedAt": 1700000000, "IsDeleted": False, "ModelType": "LLM"}],
        "bids": [{**bid, "Id": mid(101), "PricePerSecond": "12000000000"},
                 {**bid, "Id": mid(102), "PricePerSecond": "30000000000"}]}))


def test_a_bid_posted_from_the_page_after_the_fee_confirmation(rigs, operator_client, redis_url, tmp_path):
    node, token = make_node("alpha")
    router_dir, hooks = tmp_path / "router", tmp_path / "hooks.json"
    _provider_env(router_dir, hooks)
    _seed(router_dir / "seed.json")
    binary = _router_binary(tmp_path / "bin")
    rigs.start("alpha", token, extra_env={"MORPHEUS_AGENT_ROUTER_DIR": str(router_dir)})
    broker = BrokerWatch(redis_url)
    pages = []
    try:
        form = {"binary": str(binary), "network": "testnet", "proxy_port": free_port(), "web_port": free_port()}
        assert operator_client.post("/rigs/alpha/marketplace/", form).status_code == 302
        assert _finished(Operation.objects.get(kind=Operation.ROUTER_APPLY)).status == Operation.SUCCEEDED
        _snapshot(lambda s, r: s.get("provider") and r.state == "healthy", "a report with the provider")

        bid = {"model_id": THEIRS, "price": "0.00000002", "price_unit": "MOR"}
        text = page(operator_client.post("/rigs/alpha/marketplace/chain/post_bid/", bid))
        pages.append(text)
        assert "Every bid posted burns a non-refundable 0.3 MOR fee" in text
        assert not Operation.objects.filter(kind=Operation.ROUTER_CHAIN).exists()  # nothing before the confirmation
        response = confirm_chain_action(operator_client, "/rigs/alpha/marketplace/chain/post_bid/", bid)
        assert response.status_code == 302

        op = _finished(Operation.objects.get(kind=Operation.ROUTER_CHAIN))
        assert op.status == Operation.SUCCEEDED, op.message
        assert "0.3 MOR fee is burnt" in op.message and op.result["price_per_second"] == "20000000000"
        chain = json.loads((router_dir / "data" / "badger" / "stub-chain.json").read_text())
        posted = [b for b in chain["bids"] if b["Provider"] == WALLET and b["DeletedAt"] == "0"]
        assert [b["Id"] for b in posted] == [op.result["bid_id"]] and chain["balance"]["mor"] == str(3 * MOR - FEE)

        # The report sent after it: the new bid and the competing prices, the provider's own left out.
        router = _snapshot(lambda s, r: s.get("bids"), "the report with the new bid")
        assert router.snapshot["bids"][0]["id"] == op.result["bid_id"]
        assert router.snapshot["market"][THEIRS] == {"count": 2, "lowest": "12000000000", "median": "12000000000"}
        text = page(operator_client.get("/rigs/alpha/marketplace/"))
        pages.append(text)
        assert "of 2 competing bids: yours is above the median" in text and op.result["bid_id"] in text

        # The router rate-limited: a plain failure, no second fee, nothing changed.
        hooks.write_text(json.dumps({"faults": {"/blockchain/bids": 429}}))
        confirm_chain_action(operator_client, "/rigs/alpha/marketplace/chain/post_bid/", bid)
        failed = _finished(Operation.objects.filter(kind=Operation.ROUTER_CHAIN).latest("pk"))
        assert failed.status == Operation.FAILED and "rate-limited (429)" in failed.message
        assert json.loads((router_dir / "data" / "badger" / "stub-chain.json").read_text()) == chain
        pages.append(page(operator_client.get("/rigs/alpha/marketplace/")))
    finally:
        broker.close()
        _stop_router(tmp_path / "alpha" / "data" / "state" / "router" / "state.json")

    assert_no_secret(seen_by_the_panel(pages, broker, rigs.logs()),
                     WALLET_KEY, COOKIE_PASSWORD)
