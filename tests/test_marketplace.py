"""The `router` report's validation and writer, the Marketplace page and its form, and the rig's config checks."""

import pytest

from marketplace import services
from marketplace.ingest import apply_router
from marketplace.models import Router
from marketplace.templatetags.wei import wei_amount
from nodes.agent.tasks.router import check_config
from nodes.agent.validation import InvalidValue
from nodes.models import Operation
from nodes.reports import ReportError, clean_router
from tests.helpers import make_node, page

WALLET = "0x" + "12" * 20
MID = "0x" + "ab" * 32


def report(**changes):
    data = {"state": "healthy", "pid": 4242, "message": "healthy", "log": "started", "restarts": 0,
            "sessions": [], "claimable_wei": None, "started_at": 1_789_999_000.0,
            "version": "v7.11.0", "health": "healthy", "models_health": {MID: {"status": "healthy"}},
            "wallet": WALLET, "mor_wei": str(3 * 10**18), "eth_wei": "10000000000000000",
            "provider": {"address": WALLET, "endpoint": "rig.example.com:3333", "stake": str(2 * 10**17)},
            "models": [{"id": MID, "name": "tiny", "stake": str(10**17)}],
            "bids": [{"id": MID, "model_id": MID, "price_per_second": "10000000000"}], "open_sessions": 2,
            "proxy_listening": True, "reload_supported": None,
            "config_models": [], "unmanaged_keys": ["WALLET_PRIVATE_KEY"], "network": "testnet",
            "binary": "/opt/morpheus/proxy-router", "at": 1_790_000_000.0, "error": None}
    data["market"] = {MID: {"count": 1, "lowest": "10000000000", "median": "10000000000"}}
    data.update(changes)
    return data


# --- validation ------------------------------------------------------------------------------------------------------
def test_a_good_report_is_kept_with_exact_wei_and_lowercase_addresses():
    clean = clean_router(report(wallet=WALLET.upper().replace("0X", "0x")))
    assert clean["mor_wei"] == "3000000000000000000" and clean["wallet"] == WALLET
    assert clean["models_health"] == {MID: "healthy"} and clean["open_sessions"] == 2


@pytest.mark.parametrize("changes, why", [
    ({"state": "running"}, "router state"),
    ({"mor_wei": 3.0e18}, "mor_wei must be a whole number of wei"),
    ({"eth_wei": "-1"}, "eth_wei must be a whole number of wei"),
    ({"wallet": "0x1234"}, "wallet must be"),
    ({"bids": [{"id": "0x12", "model_id": MID, "price_per_second": "1"}]}, "bid id must be"),
    ({"bids": [{"id": MID, "model_id": MID, "price_per_second": "1"}] * 65}, "more than 64"),
    ({"error": {"kind": "exploded", "reason": "x"}}, "error kind must be"),
    ({"unmanaged_keys": ["WALLET_PRIVATE_KEY=0xsecret"]}, "unmanaged_keys must be .env key names"),
    ({"network": "ropsten"}, "network"),
    ({"message": "a\x00b"}, "NUL"),
    ({"pid": True}, "pid must be a number"),
])
def test_a_bad_report_is_refused_with_the_reason(changes, why):
    with pytest.raises(ReportError, match=why):
        clean_router(report(**changes))


def test_the_text_is_bounded():
    clean = clean_router(report(log="x" * 50_000, message="m" * 10_000))
    assert len(clean["log"]) == 8000 and len(clean["message"]) == 4000


# --- the writer: only the reporting rig's row, never an older report over a newer one -------------------------------
def test_the_writer_keeps_the_newest_report_and_touches_only_its_rig(db):
    alpha, _ = make_node("alpha")
    beta, _ = make_node("beta")
    Router.objects.create(node=beta, binary_path="/opt/r", state="stopped")
    apply_router(alpha, clean_router(report()), None, 10)
    apply_router(alpha, clean_router(report(state="backoff", pid=None)), None, 9)  # older: ignored
    row = Router.objects.get(node=alpha)
    assert row.state == "healthy" and row.report_seq == 10 and row.snapshot["pid"] == 4242
    apply_router(alpha, clean_router(report(state="degraded")), None, 11)
    assert Router.objects.get(node=alpha).state == "degraded"
    assert Router.objects.get(node=beta).state == "stopped" and Router.objects.count() == 2


# --- amounts ------------------------------------------------------------------------------------------------------
def test_wei_is_shown_in_mor_with_the_exact_value_on_hover():
    assert wei_amount("1234567890123456789") == '<span class="wei" title="1234567890123456789 wei">1.2346 MOR</span>'
    assert ">&lt; 0.0001 MOR<" in wei_amount("10000000000")  # 1e-8 MOR: not shown as 0
    assert wei_amount(None) == "–" and wei_amount("x") == "–"


# --- the rig's own checks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, why", [
    ({"network": "ropsten", "binary": "/opt/r"}, "network"),
    ({"network": "mainnet", "binary": "proxy-router"}, "absolute path"),
    ({"network": "mainnet", "binary": "/opt/r", "wallet_key": "0x1"}, "config must be an object"),
    ("mainnet", "config must be an object"),
])
def test_the_rig_refuses_a_config_it_cannot_apply(config, why):
    with pytest.raises(InvalidValue, match=why):
        check_config(config)


# --- the page ------------------------------------------------------------------------------------------------------
@pytest.fixture
def alpha(db):
    return make_node("alpha")[0]


@pytest.fixture
def sent(monkeypatch):
    calls = []

    def fake(node, kind, user=None, target="", payload=None):
        calls.append(payload)
        return Operation.objects.create(node=node, kind=kind, requested_by=user, target=target)

    monkeypatch.setattr(services, "start_operation", fake)
    return calls


FORM = {"binary": "/opt/morpheus/proxy-router", "network": "testnet", "proxy_port": 3333, "web_port": 8082}


def test_anonymous_is_sent_to_log_in(client, alpha):
    response = client.get("/rigs/alpha/marketplace/")
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert client.post("/rigs/alpha/marketplace/", FORM).status_code == 302
    assert not Router.objects.exists()


def test_a_viewer_sees_the_state_but_no_form_and_cannot_post(viewer_client, alpha, sent):
    Router.objects.create(node=alpha, binary_path="/opt/r", state="healthy", snapshot=clean_router(report()))
    text = page(viewer_client.get("/rigs/alpha/marketplace/"))
    assert WALLET in text and 'title="3000000000000000000 wei">3.0000 MOR' in text and "v7.11.0" in text
    assert "rig.example.com:3333" in text and 'id="router-form"' not in text
    assert viewer_client.post("/rigs/alpha/marketplace/", FORM).status_code == 403
    assert viewer_client.post("/rigs/alpha/marketplace/refresh/").status_code == 403
    assert sent == []


def test_an_operator_starts_it_and_the_rig_gets_the_managed_settings_only(operator_client, alpha, sent):
    assert "No proxy-router on this rig yet" in page(operator_client.get("/rigs/alpha/marketplace/"))
    response = operator_client.post("/rigs/alpha/marketplace/", FORM)
    assert response.status_code == 302
    assert sent == [{"config": {"network": "testnet", "binary": "/opt/morpheus/proxy-router", "models": [],
                                "env": {"PROXY_ADDRESS": "0.0.0.0:3333", "WEB_ADDRESS": "127.0.0.1:8082"}}}]
    assert Router.objects.get(node=alpha).network == "testnet"


def test_a_restart_is_asked_first_with_the_open_sessions_shown(operator_client, alpha, sent):
    Router.objects.create(node=alpha, binary_path="/opt/r", state="healthy", snapshot=clean_router(report()))
    text = page(operator_client.post("/rigs/alpha/marketplace/", FORM))
    assert "cuts its 2 open session(s)" in text and sent == []
    response = operator_client.post("/rigs/alpha/marketplace/", {**FORM, "confirm_restart": "on"})
    assert response.status_code == 302 and sent[0]["restart"] is True


@pytest.mark.parametrize("binary", ["proxy-router", "/opt/../etc/passwd", "/opt/r/", "/opt/r\nx"])
def test_a_binary_path_that_is_not_plain_and_absolute_is_refused(operator_client, alpha, sent, binary):
    text = page(operator_client.post("/rigs/alpha/marketplace/", {**FORM, "binary": binary}))
    assert "not a plain absolute path" in text and sent == []


def test_the_admin_api_failing_is_shown_plainly(viewer_client, alpha):
    snap = clean_router(report(wallet=None, mor_wei=None, error={"kind": "unauthorized", "reason": "401 from it"}))
    Router.objects.create(node=alpha, binary_path="/opt/r", state="healthy", snapshot=snap)
    text = page(viewer_client.get("/rigs/alpha/marketplace/"))
    assert "refused the credentials in its cookie file (401)" in text and 'data-kind="unauthorized"' in text


def test_the_rig_page_links_to_the_marketplace(viewer_client, alpha):
    assert 'href="/rigs/alpha/marketplace/"' in viewer_client.get("/rigs/alpha/").content.decode()


def test_a_new_binary_asks_for_the_password_again(client, operator, alpha, sent):
    client.force_login(operator)  # logged in, but the password not typed again lately
    response = client.post("/rigs/alpha/marketplace/", FORM)
    assert response.status_code == 403 and "password" in page(response).lower()
    assert sent == [] and not Router.objects.exists()


def test_the_report_fields_are_the_protocols():
    from nodes.agent.protocol import ROUTER_FIELDS

    assert set(clean_router(report())) == set(ROUTER_FIELDS) == set(report())
