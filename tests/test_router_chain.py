"""On-chain actions on the rig (nodes/agent/tasks/routerchain.py) against the proxy-router stand-in run as a real
process: the params checked before any call, each action changing the stand-in's chain, the router's faults each
giving a plain failure with nothing half-applied, and the market prices the router report carries."""

import json

import pytest

from nodes.agent import protocol
from nodes.agent.router import NETWORKS, client_for
from nodes.agent.tasks.routerchain import check_params, market, run_action
from nodes.agent.validation import InvalidValue
from nodes.reports import ReportError, clean_router
from tests.harness import wait_until
from tests.helpers import free_port
from tests.routerkit import COOKIE, MOR, WALLET, StubProcess, mid, write_rig_folder

PASSWORD = COOKIE.partition(":")[2]
WALLET_KEY = "0xprivate-test-key-never-shown"
DIAMOND = NETWORKS["testnet"]["DIAMOND_CONTRACT_ADDRESS"]
OTHER = "0x" + "34" * 20
THIRD = "0x" + "56" * 20
THEIRS = mid(7)  # a model someone else registered, with competing bids
FEE = 3 * MOR // 10


def seed():
    """A chain with two other providers bidding on THEIRS, and this wallet registered as a provider."""
    bid = {"Nonce": "1", "CreatedAt": "1700000000", "DeletedAt": "0"}
    return {
        "balance": {"mor": str(5 * MOR), "eth": str(10**16)},
        "providers": [{"Address": WALLET, "Endpoint": "rig.example.com:3333", "Stake": str(2 * MOR // 10),
                       "CreatedAt": "1700000000", "IsDeleted": False}],
        "models": [{"Id": THEIRS, "IpfsCID": mid(0), "Fee": 0, "Stake": MOR // 10, "Owner": OTHER, "Name": "llama",
                    "Tags": ["chat"], "CreatedAt": 1700000000, "IsDeleted": False, "ModelType": "LLM"}],
        "bids": [
            {**bid, "Id": mid(101), "Provider": OTHER, "ModelAgentId": THEIRS, "PricePerSecond": "30000000000"},
            {**bid, "Id": mid(102), "Provider": THIRD, "ModelAgentId": THEIRS, "PricePerSecond": "12000000000"},
            {**bid, "Id": mid(103), "Provider": OTHER, "ModelAgentId": THEIRS, "PricePerSecond": "50000000000",
             "DeletedAt": "1700000100"},  # deleted: not a competing price
            {**bid, "Id": mid(104), "Provider": WALLET, "ModelAgentId": THEIRS, "PricePerSecond": "11000000000"},
        ],
    }


@pytest.fixture
def rig(tmp_path):
    hooks = tmp_path / "hooks.json"
    hooks.write_text("{}")
    web_port, proxy_port = free_port(), free_port()
    folder = write_rig_folder(tmp_path / "router", web_port, proxy_port, seed=seed(), extra_env={
        "DIAMOND_CONTRACT_ADDRESS": DIAMOND, "ROUTERSTUB_HOOKS_FILE": str(hooks)})
    stub = StubProcess(folder, web_port, proxy_port).start()
    stub.hooks = hooks
    yield stub
    stub.stop()


def chain(stub):
    return json.loads((stub.folder / "data" / "stub-chain.json").read_text())


def active_bids(stub, model):
    return [b for b in chain(stub)["bids"] if b["ModelAgentId"] == model and b["DeletedAt"] == "0"]


def router_report(**more):
    return {"state": "healthy", "models": [], "bids": [], "config_models": [], "unmanaged_keys": [], "at": 1.0,
            **more}


def no_secret(*texts):
    for text in texts:
        text = json.dumps(text)
        assert PASSWORD not in text and WALLET_KEY not in text


# --- the params, checked before any call ---------------------------------------------------------------------------
GOOD = {
    "approve": {"amount": str(MOR)},
    "register_provider": {"endpoint": "rig.example.com:3333", "stake": str(2 * MOR // 10)},
    "register_model": {"name": "tiny", "stake": str(MOR // 10), "fee": "0", "tags": ["chat"]},
    "post_bid": {"model_id": THEIRS, "price_per_second": "10000000000"},
    "delete_bid": {"bid_id": mid(104)},
}


@pytest.mark.parametrize("action, changes, why", [
    ("approve", {"amount": "0"}, "at least"),
    ("approve", {"amount": 1.5e18}, "whole number of wei"),
    ("approve", {"amount": "1.5"}, "whole number of wei"),
    ("approve", {"spender": OTHER}, "approve takes amount"),  # the spender is the rig's own contract
    ("register_provider", {"endpoint": "http://rig.example.com:3333"}, "no scheme"),
    ("register_provider", {"endpoint": "rig.example.com"}, "has no port"),
    ("register_provider", {"stake": str(2 * MOR // 10 - 1)}, "provider stake must be at least 0.2 MOR"),
    ("register_model", {"stake": str(MOR // 10 - 1)}, "model stake must be at least 0.1 MOR"),
    ("register_model", {"tags": ["chat", "video"]}, "tags must be"),
    ("register_model", {"tags": []}, "tags must be"),
    ("register_model", {"name": ""}, "model name"),
    ("register_model", {"fee": "-1"}, "whole number"),
    ("register_model", {"ipfs_id": "Qm123"}, "not a model id"),
    ("post_bid", {"model_id": "0x1234"}, "not a model id"),
    ("post_bid", {"model_id": THEIRS[2:]}, "not a model id"),
    ("post_bid", {"price_per_second": "9999999999"}, "price per second must be at least"),
    ("post_bid", {"price_per_second": 1e10}, "whole number of wei"),
    ("post_bid", {"price_per_second": True}, "whole number of wei"),
    ("delete_bid", {"bid_id": "0x" + "g" * 64}, "not a model id"),
])
def test_it_refuses_bad_params_before_any_call(action, changes, why):
    with pytest.raises(InvalidValue, match=why):
        check_params(action, {**GOOD[action], **changes})


def test_it_refuses_an_unknown_action_and_keeps_amounts_exact():
    with pytest.raises(InvalidValue, match="not an on-chain action"):
        check_params("withdraw", {})
    clean = check_params("post_bid", {"model_id": THEIRS.upper().replace("0X", "0x"),
                                      "price_per_second": "123456789012345678901"})
    assert clean == {"model_id": THEIRS, "price_per_second": 123456789012345678901}


def test_a_refused_value_never_reaches_the_router(rig):
    before = chain(rig)
    status, message, _ = run_action(rig.folder, "post_bid", {**GOOD["post_bid"], "price_per_second": "9"})
    assert status == protocol.FAILED and "nothing sent" in message and "at least" in message
    assert chain(rig) == before
    assert "POST /blockchain/bids" not in rig.log()


# --- each action against the stand-in ------------------------------------------------------------------------------
def test_each_action_changes_the_chain_and_returns_what_the_router_returned(rig):
    status, message, result = run_action(rig.folder, "approve", {"amount": str(2 * MOR)})
    assert status == protocol.SUCCEEDED, message
    assert chain(rig)["allowance"] == {DIAMOND.lower(): str(2 * MOR)}
    assert result["spender"] == DIAMOND and result["tx"].startswith("0x") and "up to 2 MOR" in message

    status, message, result = run_action(rig.folder, "register_provider",
                                         {"endpoint": "rig2.example.com:3333", "stake": str(MOR // 10 * 2)})
    assert status == protocol.SUCCEEDED, message
    provider = chain(rig)["providers"][0]
    assert provider["Endpoint"] == "rig2.example.com:3333" and provider["Stake"] == str(4 * MOR // 10)
    assert result == {"provider": WALLET, "endpoint": "rig2.example.com:3333", "stake": str(4 * MOR // 10)}

    status, message, result = run_action(rig.folder, "register_model",
                                         {"name": "tiny-chat", "stake": str(MOR // 10), "tags": ["chat"]})
    assert status == protocol.SUCCEEDED, message
    mine = [m for m in chain(rig)["models"] if m["Name"] == "tiny-chat"]
    assert len(mine) == 1 and result["model_id"] == mine[0]["Id"]  # the id the router returned
    assert result["model_id"] in message and "publish a deployment" in message

    status, message, result = run_action(rig.folder, "post_bid",
                                         {"model_id": result["model_id"], "price_per_second": "20000000000"})
    assert status == protocol.SUCCEEDED, message
    bids = active_bids(rig, mine[0]["Id"])
    assert [b["Id"] for b in bids] == [result["bid_id"]] and bids[0]["PricePerSecond"] == "20000000000"
    assert "0.3 MOR fee is burnt" in message

    status, message, result = run_action(rig.folder, "delete_bid", {"bid_id": result["bid_id"]})
    assert status == protocol.SUCCEEDED, message
    assert active_bids(rig, mine[0]["Id"]) == [] and result["tx"].startswith("0x")
    # Every stake and fee came out of the wallet, exactly: 0.2 provider + 0.1 model + 0.3 bid fee.
    assert chain(rig)["balance"]["mor"] == str(5 * MOR - 2 * MOR // 10 - MOR // 10 - FEE)
    no_secret(message, result)


def test_a_secret_typed_into_a_value_never_goes_on_chain(rig):
    before = chain(rig)
    status, message, result = run_action(rig.folder, "register_model", {**GOOD["register_model"], "name": WALLET_KEY})
    assert status == protocol.FAILED and "nothing sent" in message and "holds one of the rig's secrets" in message
    assert chain(rig) == before
    no_secret(message, result)


def test_the_router_refusing_is_a_plain_failure_with_its_reason(rig):
    status, message, result = run_action(rig.folder, "delete_bid", {"bid_id": mid(999)})
    assert status == protocol.FAILED and result == {"error": "refused"}
    assert "delete bid failed, nothing was done (refused)" in message and "MarketplaceActiveBidNotFound" in message


def test_approve_needs_the_contract_in_the_routers_env(rig):
    env = rig.folder / ".env"
    env.write_text("\n".join(l for l in env.read_text().splitlines() if "DIAMOND" not in l) + "\n")
    status, message, _ = run_action(rig.folder, "approve", {"amount": str(MOR)})
    assert status == protocol.FAILED and "DIAMOND_CONTRACT_ADDRESS" in message and chain(rig)["allowance"] == {}


# --- faults: a plain failure, nothing half-applied -----------------------------------------------------------------
@pytest.mark.parametrize("fault, kind, words", [
    (429, "rate_limited", "rate-limited (429)"),
    (503, "degraded", "degraded (503)"),
    (500, "refused", "answered 500"),
])
def test_a_router_fault_on_a_write_fails_plainly_and_changes_nothing(rig, fault, kind, words):
    rig.hooks.write_text(json.dumps({"faults": {"/blockchain/bids": fault}}))
    before = chain(rig)
    status, message, result = run_action(rig.folder, "post_bid", GOOD["post_bid"])
    assert status == protocol.FAILED and result == {"error": kind}
    assert words in message and "nothing was done" in message
    assert chain(rig) == before


def test_a_wrong_cookie_is_a_401_without_the_password_in_the_message(rig):
    (rig.folder / ".cookie").write_text(f"admin:{PASSWORD}-stale\n")
    before = chain(rig)
    status, message, result = run_action(rig.folder, "register_provider", GOOD["register_provider"])
    assert status == protocol.FAILED and result == {"error": "unauthorized"}
    assert "refused the credentials in its cookie file" in message and chain(rig) == before
    no_secret(message, result)


def test_a_malformed_answer_to_a_write_says_to_check_before_retrying(rig):
    rig.hooks.write_text(json.dumps({"faults": {"/blockchain/models": "malformed"}}))
    before = chain(rig)
    status, message, result = run_action(rig.folder, "register_model", GOOD["register_model"])
    assert status == protocol.FAILED and result == {"error": "malformed"}
    assert "may have happened on chain" in message and "before retrying" in message
    assert chain(rig) == before  # the stand-in answered garbage without doing it


def test_a_lost_answer_is_an_unknown_outcome_and_is_never_retried(rig):
    rig.hooks.write_text(json.dumps({"faults": {"/blockchain/bids": "sleep:2.5"}}))
    status, message, result = run_action(rig.folder, "post_bid", GOOD["post_bid"], tx_timeout=0.5)
    assert status == protocol.FAILED and result == {"error": "outcome_unknown"}
    assert "may have happened on chain" in message and "check the provider, models and bids" in message
    # The router did post it once the answer was gone: one bid, one fee, nothing sent twice.
    wait_until(lambda: [b for b in active_bids(rig, THEIRS) if b["Provider"] == WALLET and b["Id"] != mid(104)],
               timeout=10, message="the bid posted after the answer was lost")
    assert len([b for b in active_bids(rig, THEIRS) if b["Provider"] == WALLET]) == 1
    assert chain(rig)["balance"]["mor"] == str(5 * MOR - FEE)
    wait_until(lambda: "POST /blockchain/bids" in rig.log(), timeout=5, message="the stand-in's log line")
    assert rig.log().count("POST /blockchain/bids") == 1


def test_a_router_that_is_down_fails_before_anything_is_sent(rig):
    rig.stop()
    status, message, result = run_action(rig.folder, "delete_bid", GOOD["delete_bid"])
    assert status == protocol.FAILED and result == {"error": "down"} and "not answering" in message


# --- market prices -------------------------------------------------------------------------------------------------
def test_the_market_summarises_the_competing_bids_without_the_providers_own(rig):
    client = client_for(rig.folder)
    own_bids = [{"model_id": THEIRS}]
    summary = market(client, WALLET, [{"modelId": mid(8).upper().replace("0X", "0x")}, {"modelId": "bad"}], own_bids)
    # Deleted bids and the provider's own (11 Gwei/s) are not competition; mid(8) has no bid at all.
    assert summary == {mid(8): {"count": 0, "lowest": None, "median": None},
                       THEIRS: {"count": 2, "lowest": "12000000000", "median": "12000000000"}}
    clean = clean_router(router_report(market=summary))["market"]
    assert clean == summary


def test_the_market_is_bounded_and_skips_a_model_it_cannot_read(rig):
    client = client_for(rig.folder)
    many = [{"modelId": mid(n)} for n in range(200, 230)]
    assert len(market(client, WALLET, many, [])) == 16
    rig.hooks.write_text(json.dumps({"faults": {f"/blockchain/models/{THEIRS}/bids/active": 429}}))
    assert market(client, WALLET, [{"modelId": THEIRS}, {"modelId": mid(8)}], []) == {
        mid(8): {"count": 0, "lowest": None, "median": None}}


@pytest.mark.parametrize("bad, why", [
    ({mid(n): {"count": 0, "lowest": None, "median": None} for n in range(17)}, "at most 16"),
    ({"0x12": {"count": 0, "lowest": None, "median": None}}, "market model id"),
    ({THEIRS: {"count": 2, "lowest": 1.2e10, "median": "12000000000"}}, "whole number of wei"),
    ({THEIRS: {"count": 2, "lowest": "-1", "median": "12000000000"}}, "whole number of wei"),
    ({THEIRS: {"count": 2, "lowest": "13000000000", "median": "12000000000"}}, "lowest <= median"),
    ({THEIRS: {"count": 0, "lowest": "1", "median": "1"}}, "lowest <= median"),
    ({THEIRS: "cheap"}, "must be an object"),
    ([THEIRS], "must be an object"),
])
def test_the_panel_refuses_a_market_a_hostile_rig_makes_up(bad, why):
    with pytest.raises(ReportError, match=why):
        clean_router(router_report(market=bad))


def test_the_report_lists_the_market_field():
    assert "market" in protocol.ROUTER_FIELDS
    assert clean_router(router_report())["market"] == {}
