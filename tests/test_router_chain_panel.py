"""The on-chain actions on a rig's Marketplace page: amounts made exact, the rig's checks made first, a confirmation
that says what each action costs before the operation goes to the rig, operators act and viewers read, the market
prices beside the price a deployment's economics suggest. Commands go to this process's memory:// broker."""

import html
import re

import pytest
from django.test import Client

from marketplace import chain
from marketplace.models import Listing, Router
from nodes.agent import protocol
from nodes.models import Operation
from nodes.reports import clean_router
from tests.helpers import page, queued_messages
from tests.routerkit import confirm_chain_action
from tests.test_marketplace import report
from tests.test_views_benchmark import RESULT, _deployment, _rig, _succeed

pytestmark = pytest.mark.django_db

MOR = 10**18
MID = "0x" + "ab" * 32  # the model the report's bid is on
THEIRS = "0x" + "cd" * 32
BID = "0x" + "ef" * 32
URL = "/rigs/alpha/marketplace/chain/{}/"
MARKET = {MID: {"count": 5, "lowest": "12000000000", "median": "15000000000"},
          THEIRS: {"count": 0, "lowest": None, "median": None}}
SUGGESTED = 343_750_000_000  # 330 W at $0.15/kWh, MOR at $10, shared by 4 sessions: ceil(0.0495/3600/10 × 1e18 / 4)


@pytest.fixture
def clients(viewer, operator_client):
    viewer_client = Client()
    viewer_client.force_login(viewer)
    return Client(), viewer_client, operator_client


@pytest.fixture
def alpha():
    node = _rig("alpha")
    node.hardware = {**node.hardware, "hostname": "gpu-rig-1.example.com"}
    node.save(update_fields=["hardware"])
    Router.objects.create(node=node, binary_path="/opt/r", state="healthy", proxy_port=3333,
                          snapshot=clean_router(report(market=MARKET, bids=[
                              {"id": BID, "model_id": MID, "price_per_second": "20000000000"}])))
    return node


def sent(node):
    return [m for m in queued_messages(node.queue) if m.task == protocol.AGENT_ROUTER_CHAIN]


# --- amounts -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, unit, wei", [
    ("0.3", "MOR", 3 * MOR // 10), ("1", "MOR", MOR), (" 0.000000000000000001 ", "MOR", 1),
    ("123456789012345678901234567890.123456789012345678", "MOR", 123456789012345678901234567890123456789012345678),
    ("10000000000", "wei", 10_000_000_000), ("0", "wei", 0),
])
def test_amounts_are_exact_wei(text, unit, wei):
    assert chain.parse_amount(text, unit) == wei


@pytest.mark.parametrize("text, unit, why", [
    ("0.0000000000000000001", "MOR", "19 decimals"), ("1e18", "MOR", "not an amount of MOR"),
    ("-1", "MOR", "not an amount"), ("0.1.2", "MOR", "not an amount"), ("", "MOR", "not an amount"),
    ("1.5", "wei", "whole number of wei"), ("1e10", "wei", "whole number of wei"), ("NaN", "MOR", "not an amount"),
    ("1", "ETH", "unit must be"),
])
def test_an_amount_that_is_not_exact_is_refused(text, unit, why):
    with pytest.raises(chain.Refused, match=why):
        chain.parse_amount(text, unit)


# --- who may do what -----------------------------------------------------------------------------------------------
def test_viewers_see_prices_and_bids_but_no_form_and_cannot_act(clients, alpha, django_capture_on_commit_callbacks):
    anonymous, viewer_client, _ = clients
    text = page(viewer_client.get("/rigs/alpha/marketplace/"))
    assert 'id="chain-market"' in text and "median 0.000000015 MOR/s of 5 competing bids" in text
    assert BID in text and "chain-form-" not in text and "Delete…" not in text
    for action in protocol.ROUTER_CHAIN_ACTIONS:
        assert viewer_client.get(URL.format(action)).status_code == 403
        with django_capture_on_commit_callbacks(execute=True):
            assert viewer_client.post(URL.format(action), {"bid_id": BID, "confirmed": "yes"}).status_code == 403
        response = anonymous.post(URL.format(action), {"bid_id": BID, "confirmed": "yes"})
        assert response.status_code == 302 and "/login/" in response["Location"]
    assert not Operation.objects.exists() and sent(alpha) == []


def test_operators_get_every_form_with_its_defaults(clients, alpha):
    text = page(clients[2].get("/rigs/alpha/marketplace/"))
    for action in ("approve", "register_provider", "register_model", "post_bid"):
        assert f'id="chain-form-{action}"' in text
    assert 'value="gpu-rig-1.example.com:3333"' in text  # the rig's host name and the router's proxy port
    assert 'name="stake" value="0.2"' in text and 'name="stake" value="0.1"' in text
    assert f'<input type="hidden" name="bid_id" value="{BID}">' in text  # delete, from the active bids


def test_nothing_is_offered_or_sent_without_a_running_router(clients, alpha, django_capture_on_commit_callbacks):
    Router.objects.filter(node=alpha).update(state="stopped")
    operator_client = clients[2]
    text = page(operator_client.get("/rigs/alpha/marketplace/"))
    assert "is stopped: start it first" in text and "chain-form-" not in text
    with django_capture_on_commit_callbacks(execute=True):
        text = page(operator_client.post(URL.format("delete_bid"), {"bid_id": BID, "confirmed": "yes"}))
    assert "is stopped: start it first" in text and not Operation.objects.exists() and sent(alpha) == []


# --- checks before any operation, the form keeping what was typed ---------------------------------------------------
@pytest.mark.parametrize("action, data, why", [
    ("post_bid", {"model_id": "0x1234", "price": "10000000000", "price_unit": "wei"}, "not a model id"),
    ("post_bid", {"model_id": MID, "price": "9999999999", "price_unit": "wei"},
     "the price per second must be at least 0.00000001 MOR (10000000000 wei)"),
    ("post_bid", {"model_id": MID, "price": "0.00000001000000000001", "price_unit": "MOR"}, "20 decimals"),
    ("post_bid", {"model_id": MID, "price": "1.5e10", "price_unit": "wei"}, "not a whole number of wei"),
    ("register_provider", {"endpoint": "https://gpu-rig-1.example.com:3333", "stake": "0.2", "stake_unit": "MOR"},
     "no scheme"),
    ("register_provider", {"endpoint": "gpu-rig-1.example.com", "stake": "0.2", "stake_unit": "MOR"}, "has no port"),
    ("register_provider", {"endpoint": "gpu-rig-1.example.com:3333", "stake": "0.19", "stake_unit": "MOR"},
     "the provider stake must be at least 0.2 MOR"),
    ("register_model", {"name": "tiny", "stake": "99999999999999999", "stake_unit": "wei", "fee": "0",
                        "fee_unit": "MOR", "tags": ["chat"]}, "the model stake must be at least 0.1 MOR"),
    ("register_model", {"name": "tiny", "stake": "0.1", "stake_unit": "MOR", "fee": "0", "fee_unit": "MOR",
                        "tags": ["chat"], "ipfs_id": "Qmnotahexid"}, "not a model id"),
    ("approve", {"amount": "0", "amount_unit": "MOR"}, "the allowance must be at least"),
    ("delete_bid", {"bid_id": "0xnope"}, "not a model id"),
])
def test_bad_values_are_refused_with_the_reason_and_the_form_keeps_them(clients, alpha, action, data, why,
                                                                        django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = clients[2].post(URL.format(action), {**data, "confirmed": "yes"})
    text = page(response)
    assert response.status_code == 200 and why in text and 'id="chain-confirm"' not in text
    for value in (v for v in data.values() if isinstance(v, str) and v not in ("MOR", "wei")):
        assert f'value="{value}"' in text
    assert not Operation.objects.exists() and sent(alpha) == []


# --- the confirmation, then the operation --------------------------------------------------------------------------
def test_a_bid_is_posted_only_after_the_fee_is_confirmed(clients, alpha, django_capture_on_commit_callbacks):
    operator_client = clients[2]
    data = {"model_id": MID, "price": "0.000000013", "price_unit": "MOR"}
    text = page(operator_client.post(URL.format("post_bid"), data))
    assert 'id="chain-confirm"' in text
    assert "Every bid posted burns a non-refundable 0.3 MOR fee (300000000000000000 wei)" in text
    assert "0.000000013 MOR (13000000000 wei) per second" in text and "another 0.3 MOR fee" in text
    assert ("lowest 0.000000012 MOR/s, median 0.000000015 MOR/s of 5 competing bids: yours is below the median"
            in text)
    assert not Operation.objects.exists() and sent(alpha) == []

    # Back: the form again, as typed.
    back = page(operator_client.post(URL.format("post_bid"), {**data, "back": "1"}))
    assert 'id="chain-form-post_bid"' in back and 'value="0.000000013"' in back and not Operation.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = confirm_chain_action(operator_client, URL.format("post_bid"), data)
    assert response.status_code == 302 and response["Location"] == "/rigs/alpha/marketplace/"
    op = Operation.objects.get()
    assert op.kind == Operation.ROUTER_CHAIN and op.target == "post bid on 0xabab…abab"
    (message,) = sent(alpha)
    assert message.args == [op.pk]
    assert message.kwargs == {"action": "post_bid", "params": {"model_id": MID, "price_per_second": "13000000000"}}


@pytest.mark.parametrize("action, data, costs, params", [
    ("approve", {"amount": "2.5", "amount_unit": "MOR"},
     "Allows the Morpheus marketplace contract 0x6aBE1d282f72B474E54527D93b979A4f64d3030a (mainnet) to spend up to "
     "2.5 MOR (2500000000000000000 wei)", {"amount": "2500000000000000000"}),
    ("register_provider", {"endpoint": "gpu-rig-1.example.com:3333", "stake": "0.2", "stake_unit": "MOR"},
     "Locks 0.2 MOR (200000000000000000 wei) from the rig's wallet as the provider stake",
     {"endpoint": "gpu-rig-1.example.com:3333", "stake": "200000000000000000"}),
    ("register_model", {"name": "tiny", "stake": "100000000000000000", "stake_unit": "wei", "fee": "0",
                        "fee_unit": "MOR", "tags": ["chat", "embedding"]},
     "Locks 0.1 MOR (100000000000000000 wei) from the rig's wallet as the model's stake",
     {"name": "tiny", "stake": "100000000000000000", "fee": "0", "tags": ["chat", "embedding"]}),
    ("delete_bid", {"bid_id": BID}, f"Deletes bid {BID}", {"bid_id": BID}),
])
def test_each_action_says_what_it_costs_before_it_is_sent(clients, alpha, action, data, costs, params,
                                                          django_capture_on_commit_callbacks):
    operator_client = clients[2]
    text = page(operator_client.post(URL.format(action), data))
    assert costs in text and 'id="chain-confirm-button"' in text and sent(alpha) == []
    with django_capture_on_commit_callbacks(execute=True):
        assert confirm_chain_action(operator_client, URL.format(action), data).status_code == 302
    (message,) = sent(alpha)
    assert message.kwargs == {"action": action, "params": params}


def test_only_the_confirmation_shown_for_these_values_sends_the_action(clients, alpha,
                                                                     django_capture_on_commit_callbacks):
    operator_client, url = clients[2], URL.format("post_bid")
    data = {"model_id": MID, "price": "0.000000013", "price_unit": "MOR"}
    text = page(operator_client.post(url, data))
    token = html.unescape(re.search(r'name="confirmed" value="([^"]+)"', text)[1])
    cheaper = {**data, "price": "0.00000002"}
    with django_capture_on_commit_callbacks(execute=True):
        forged = page(operator_client.post(url, {**data, "confirmed": "yes"}))
        swapped = page(operator_client.post(url, {**cheaper, "confirmed": token}))
        viewer_made = page(clients[1].post(url, {**data, "confirmed": token}))
    for text in (forged, swapped):
        assert 'id="chain-confirm-button"' in text and "That confirmation was for other values" in text
    assert "0.00000002 MOR (20000000000 wei) per second" in swapped
    assert "chain-confirm-button" not in viewer_made
    assert not Operation.objects.exists() and sent(alpha) == []


# --- prices --------------------------------------------------------------------------------------------------------
def test_the_bid_price_is_prefilled_from_the_deployments_economics_and_shown_against_the_market(clients, alpha):
    deployment = _deployment(alpha, "llama")
    _succeed(deployment)
    Listing.objects.create(deployment=deployment, model_id=THEIRS, model_name="llama-8b")
    assert chain.suggested_bid(alpha, THEIRS)[0] == SUGGESTED
    assert chain.suggested_bid(alpha, MID)[0] == chain.FLOOR_WEI_PER_SECOND  # no deployment serves it here

    text = page(clients[2].get(URL.format("post_bid") + f"?model={THEIRS}"))
    assert f'name="model_id" value="{THEIRS}"' in text and f'name="price" value="{SUGGESTED}"' in text
    assert f'<option value="{THEIRS}">llama-8b (llama)</option>' in text  # the Listing, to choose from

    text = page(clients[1].get("/rigs/alpha/marketplace/"))
    assert "the economics of llama (latest benchmark" in text and f"{SUGGESTED} wei/s" in text
    assert "no competing bid on this model" in text
    # The own bid (0.00000002 MOR/s) against 5 others: above the 0.000000015 median.
    assert "of 5 competing bids: yours is above the median" in text
    assert "secret-key-123456" not in text  # the deployment's API key stays sealed


def test_a_cheap_deployment_never_suggests_less_than_the_floor(alpha):
    deployment = _deployment(alpha, "llama")
    _succeed(deployment, {**RESULT, "steps": [{**step, "power_w": 1.0} for step in RESULT["steps"]]})
    Listing.objects.create(deployment=deployment, model_id=THEIRS, model_name="llama-8b")
    assert chain.suggested_bid(alpha, THEIRS)[0] == chain.FLOOR_WEI_PER_SECOND


def test_comparing_a_price_with_the_market():
    summary = {"count": 3, "lowest": "10000000000", "median": "20000000000"}
    assert chain.compare(10**10 - 1, summary).endswith("yours is below the lowest")
    assert chain.compare(2 * 10**10, summary).endswith("yours is at the median")
    assert chain.compare(3 * 10**10, summary, "the suggested price").endswith("the suggested price is above the median")
    assert chain.compare(10**10, {"count": 0, "lowest": None, "median": None}) == "no competing bid on this model"


# --- outcomes ------------------------------------------------------------------------------------------------------
def test_a_registered_models_returned_id_is_shown_to_publish_with(clients, alpha):
    returned = "0x" + "77" * 32
    ok = Operation.objects.create(node=alpha, kind=Operation.ROUTER_CHAIN, target="register model tiny")
    ok.apply_report(Operation.SUCCEEDED, f"model 'tiny' registered as {returned}", result={"model_id": returned})
    forged = Operation.objects.create(node=alpha, kind=Operation.ROUTER_CHAIN, target="register model evil")
    forged.apply_report(Operation.SUCCEEDED, "ok", result={"model_id": "<script>alert(1)</script>"})
    failed = Operation.objects.create(node=alpha, kind=Operation.ROUTER_CHAIN, target="post bid on 0xabab…abab")
    failed.apply_report(Operation.FAILED, "post bid failed, nothing was done (rate_limited): try again")
    text = page(clients[1].get("/rigs/alpha/marketplace/"))
    assert f'<span class="mono chain-model-id">{returned}</span>: publish a deployment with it' in text
    assert text.count("publish a deployment with it") == 1 and "<script>alert(1)" not in text
    assert "post bid failed, nothing was done (rate_limited)" in text
