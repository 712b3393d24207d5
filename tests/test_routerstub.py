"""The proxy-router stand-in, run as a real process, behaves as MORPHEUS.md and the router's source describe.

The panel's and the agent's router tests lean on it, so what it does wrong they would learn wrong: its routes,
auth, error bodies, amounts, health and forwarding are checked here against the real router's documented shapes.
"""

import json
import os
import signal
import stat
import subprocess
import urllib.request

import pytest

from tests import llama
from tests.gguf_model import write_tiny_llama
from tests.harness import wait_until
from tests.helpers import free_port
from tests.routerkit import (COOKIE, MOR, STUB_ARGV, WALLET, Backend, StubProcess, entry, mid, request,
                             write_rig_folder)

FEE = 3 * MOR // 10
COMPETITOR = "0x" + "cd" * 20


@pytest.fixture
def backend():
    server = Backend()
    yield server
    server.close()


@pytest.fixture
def stubs():
    started = []

    def start(folder, models=(), extra_env=None, seed=None, wait=True):
        web, proxy = free_port(), free_port()
        write_rig_folder(folder, web, proxy, models=models, extra_env=extra_env, seed=seed)
        stub = StubProcess(folder, web, proxy)
        started.append(stub)
        return stub.start(wait=wait)

    yield start
    for stub in started:
        stub.stop()


def seed_chain():
    return {
        "balance": {"mor": str(5 * MOR), "eth": str(MOR // 100)},
        "providers": [{"Address": WALLET, "Endpoint": "rig.example.com:3333", "Stake": str(2 * MOR // 10),
                       "CreatedAt": "1700000000", "IsDeleted": False}],
        "models": [{"Id": mid(n), "IpfsCID": mid(0), "Fee": 0, "Stake": MOR // 10, "Owner": WALLET,
                    "Name": f"model-{n}", "Tags": ["chat"], "CreatedAt": 1700000000, "IsDeleted": False,
                    "ModelType": "LLM"} for n in (1, 2, 3, 4)],
        "bids": [
            {"Id": mid(101), "Provider": WALLET, "ModelAgentId": mid(1), "PricePerSecond": "20000000000",
             "Nonce": "0", "CreatedAt": "1700000000", "DeletedAt": "0"},
            {"Id": mid(102), "Provider": WALLET, "ModelAgentId": mid(2), "PricePerSecond": "20000000000",
             "Nonce": "0", "CreatedAt": "1700000000", "DeletedAt": "0"},
            {"Id": mid(104), "Provider": WALLET, "ModelAgentId": mid(4), "PricePerSecond": "30000000000",
             "Nonce": "0", "CreatedAt": "1700000000", "DeletedAt": "0"},
            {"Id": mid(201), "Provider": COMPETITOR, "ModelAgentId": mid(1), "PricePerSecond": "15000000000",
             "Nonce": "0", "CreatedAt": "1700000000", "DeletedAt": "0"},
        ],
        "sessions": [{"Id": mid(301), "User": "0x" + "ee" * 20, "Provider": WALLET, "ModelAgentId": mid(1),
                      "BidID": mid(101), "Stake": "1000", "PricePerSecond": "20000000000", "CloseoutReceipt": "",
                      "CloseoutType": 0, "ProviderWithdrawnAmount": 0, "OpenedAt": 1700000000,
                      "EndsAt": 1700003600, "ClosedAt": 0}],
        "claimable": {mid(301): str(7 * 10**15)},
    }


def test_it_reports_health_per_model_from_probing_each_api_url(tmp_path, stubs, backend):
    closed = free_port()
    models = [entry(1, backend.url), entry(2, f"http://127.0.0.1:{closed}/v1/chat/completions"),
              entry(3, backend.url)]
    stub = stubs(tmp_path / "rig", models=models, seed=seed_chain())

    status, body = request("GET", stub.base + "/healthcheck", auth=None)  # no credential needed

    assert status == 200 and body["status"] == "healthy" and body["version"]
    assert body["uptime"].endswith("s") and "badgerdb" in body["components"]
    health = {model_id: h["status"] for model_id, h in body["models"].items()}
    assert health == {mid(1): "healthy", mid(2): "unhealthy", mid(3): "no_bid", mid(4): "no_model_configured"}
    assert str(closed) in body["models"][mid(2)]["error"]


def test_it_asks_for_the_cookie_credentials_on_every_admin_route(tmp_path, stubs):
    stub = stubs(tmp_path / "rig")

    assert request("GET", stub.base + "/wallet", auth=None) == (401, {"error": "no basic auth provided"})
    assert request("GET", stub.base + "/wallet", auth="admin:wrong") == (
        401, {"error": "invalid username or password"})
    assert request("GET", stub.base + "/wallet") == (200, {"address": WALLET})
    cookie = tmp_path / "rig" / ".cookie"
    assert cookie.read_text().strip() == COOKIE
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o600


def test_it_reads_as_the_router_does(tmp_path, stubs, backend):
    stub = stubs(tmp_path / "rig", models=[entry(1, backend.url, concurrentSlots=4, capacityPolicy="simple")],
                 seed=seed_chain())
    base = stub.base

    status, config = request("GET", base + "/config")
    assert status == 200 and config["Version"] and config["DerivedConfig"]["WalletAddress"] == WALLET
    assert config["DerivedConfig"]["ChainID"] == 8453
    assert "never-shown" not in json.dumps(config)  # the router's sanitised config hides the wallet key
    assert request("GET", base + "/blockchain/balance") == (200, {"mor": str(5 * MOR), "eth": str(MOR // 100)})
    assert request("GET", base + "/v1/models")[1] == [{
        "Id": mid(1), "Name": "model-1", "Model": "model-1", "ApiType": "openai", "ApiUrl": backend.url,
        "Slots": 4, "CapacityPolicy": "simple"}]
    providers = request("GET", base + "/blockchain/providers")[1]["providers"]
    assert providers[0]["Stake"] == str(2 * MOR // 10)  # provider amounts are strings
    models = request("GET", base + "/blockchain/models")[1]["models"]
    assert models[0]["Stake"] == MOR // 10 and isinstance(models[0]["Fee"], int)  # model amounts are numbers
    mine = request("GET", f"{base}/blockchain/providers/{WALLET}/bids/active")[1]["bids"]
    assert {b["Id"] for b in mine} == {mid(101), mid(102), mid(104)}
    competing = request("GET", f"{base}/blockchain/models/{mid(1)}/bids/active")[1]["bids"]
    assert sorted(b["PricePerSecond"] for b in competing) == ["15000000000", "20000000000"]
    sessions = request("GET", f"{base}/blockchain/sessions/provider?provider={WALLET}")[1]["sessions"]
    assert [s["Id"] for s in sessions] == [mid(301)]
    assert request("GET", f"{base}/blockchain/sessions/provider")[0] == 400
    assert request("GET", f"{base}/proxy/sessions/{mid(301)}/providerClaimableBalance")[1] == {
        "balance": str(7 * 10**15)}
    # The documented all-bids route does not exist: gin's plain 404.
    assert request("GET", base + "/blockchain/bids", raw=True) == (404, "404 page not found")
    assert request("GET", f"{base}/blockchain/providers/{WALLET}/bids/active?limit=300")[0] == 400


def test_it_acts_on_chain_as_the_marketplace_does(tmp_path, stubs):
    seed = {"balance": {"mor": str(2 * MOR), "eth": "1"}}
    stub = stubs(tmp_path / "rig", seed=seed)
    base = stub.base

    assert request("POST", base + "/blockchain/providers", {"endpoint": "rig:3333", "stake": "1"})[0] == 500
    status, body = request("POST", base + "/blockchain/providers",
                           {"endpoint": "rig.example.com:3333", "stake": str(2 * MOR // 10)})
    assert status == 200 and body["provider"]["Endpoint"] == "rig.example.com:3333"
    status, body = request("POST", base + "/blockchain/models", {
        "id": mid(7), "ipfsID": mid(0), "fee": 0, "stake": MOR // 10, "name": "tiny", "tags": ["chat"]})
    assert status == 200
    model = body["model"]
    assert model["Id"] != mid(7) and model["Stake"] == MOR // 10  # the registry derives the id
    assert request("POST", base + "/blockchain/models", {
        "ipfsID": mid(0), "fee": 0, "stake": MOR // 10, "name": "x", "tags": ["fun"]})[0] == 400
    mor_before = int(request("GET", base + "/blockchain/balance")[1]["mor"])

    status, body = request("POST", base + "/blockchain/bids", {"modelID": model["Id"],
                                                               "pricePerSecond": "9999999999"})
    assert status == 500 and "MinPricePerSecond" in body["error"]
    assert int(request("GET", base + "/blockchain/balance")[1]["mor"]) == mor_before  # no fee for a refusal
    status, body = request("POST", base + "/blockchain/bids", {"modelID": model["Id"],
                                                               "pricePerSecond": "10000000000"})
    assert status == 200 and body["bid"]["PricePerSecond"] == "10000000000"
    assert int(request("GET", base + "/blockchain/balance")[1]["mor"]) == mor_before - FEE
    bid_id = body["bid"]["Id"]

    assert request("DELETE", f"{base}/blockchain/bids/{bid_id}")[0] == 200
    assert request("GET", f"{base}/blockchain/providers/{WALLET}/bids/active")[1] == {"bids": []}
    status, body = request("DELETE", f"{base}/blockchain/bids/{bid_id}")
    assert status == 500 and body["error"]
    status, tx = request("POST", f"{base}/blockchain/approve?spender={WALLET}&amount=5")
    assert status == 200 and tx["tx"].startswith("0x")


def test_it_answers_503_when_degraded_and_the_faults_a_test_asks_for(tmp_path, stubs):
    hooks = tmp_path / "hooks.json"
    hooks.write_text(json.dumps({"faults": {"/wallet": 429, "/blockchain/balance": "malformed"}}))
    stub = stubs(tmp_path / "rig", extra_env={"ROUTERSTUB_HOOKS_FILE": hooks})

    assert request("GET", stub.base + "/wallet")[0] == 429
    status, text = request("GET", stub.base + "/blockchain/balance", raw=True)
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(text)
    assert request("GET", stub.base + "/healthcheck", auth=None)[0] == 200

    hooks.write_text(json.dumps({"degraded": True}))
    status, body = request("GET", stub.base + "/healthcheck", auth=None)
    assert status == 503 and body["status"] == "degraded"
    assert request("GET", stub.base + "/wallet")[1] == {"address": WALLET}


@pytest.mark.parametrize("broken, reason", [
    ({"modelId": "0x1234"}, "modelId"),
    ({"apiType": "llamacpp"}, "apiType"),
    ({"concurrentSlots": 0}, "concurrentSlots"),
    ({"apiUrl": None}, "apiUrl"),
])
def test_it_refuses_to_start_on_a_models_config_that_breaks_the_schema(tmp_path, broken, reason):
    model = {**entry(1, "http://127.0.0.1:1/v1/chat/completions"), **broken}
    model = {k: v for k, v in model.items() if v is not None}
    folder = write_rig_folder(tmp_path / "rig", free_port(), free_port(), models=[model])

    done = subprocess.run(STUB_ARGV, cwd=folder, capture_output=True, text=True, timeout=20)

    assert done.returncode == 2
    assert "refusing to start" in done.stderr and reason in done.stderr


def test_it_forwards_a_chat_to_the_models_api_url(tmp_path, stubs, backend):
    stub = stubs(tmp_path / "rig", models=[entry(1, backend.url, name="tiny-llama", apiKey="backend-key")])
    chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "ping"}]}

    status, body = request("POST", f"http://127.0.0.1:{stub.proxy_port}/v1/chat/completions", chat, auth=None)
    assert status == 200 and body["choices"][0]["message"]["content"] == "pong"
    status, body = request("POST", stub.base + "/v1/chat/completions", {"messages": chat["messages"]},
                           headers={"model_id": mid(1)})
    assert status == 200 and body["model"] == "tiny-llama"

    assert [seen["body"]["model"] for seen in backend.seen] == ["tiny-llama", "tiny-llama"]
    assert backend.seen[0]["authorization"] == "Bearer backend-key"
    assert request("POST", stub.base + "/v1/chat/completions", chat, auth=None)[0] == 401


def test_its_chain_outlives_a_restart_and_its_ports_are_its_own(tmp_path, stubs):
    stub = stubs(tmp_path / "rig")
    request("POST", stub.base + "/blockchain/providers", {"endpoint": "rig:3333", "stake": str(MOR)})
    stub.stop()
    assert stub.popen.returncode == 0 and "stopped" in stub.log()

    stub.start()
    assert request("GET", stub.base + "/blockchain/providers")[1]["providers"][0]["Endpoint"] == "rig:3333"
    # A second router on the same ports refuses to start and says why.
    done = subprocess.run(STUB_ARGV, cwd=stub.folder, capture_output=True, text=True, timeout=20,
                          env={**os.environ, "PROXY_STORAGE_PATH": str(tmp_path / "other")})
    assert done.returncode == 2 and "cannot listen" in done.stderr


def test_it_seeds_a_missing_models_config_from_models_config_content(tmp_path, stubs, backend):
    content = json.dumps({"models": [entry(5, backend.url)]})
    folder = tmp_path / "rig"
    stub = stubs(folder, extra_env={"MODELS_CONFIG_PATH": "seeded.json", "MODELS_CONFIG_CONTENT": f"'{content}'"})

    assert json.loads((folder / "seeded.json").read_text()) == json.loads(content)
    assert [m["Id"] for m in request("GET", stub.base + "/v1/models")[1]] == [mid(5)]


def test_a_chat_through_the_stand_in_reaches_a_real_llama_server(tmp_path, stubs):
    port = free_port()
    model = write_tiny_llama(tmp_path / "tiny-llama-F32.gguf")
    args = [str(llama.server_binary()), "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--ctx-size", "256", "--n-gpu-layers", "0", "--parallel", "1"]
    with open(tmp_path / "llama.log", "wb") as log:
        server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                    return answer.status == 200
            except OSError:
                return False

        wait_until(ready, timeout=60, message="llama-server's /health")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        stub = stubs(tmp_path / "rig", models=[entry(1, url, name="tiny-test-llama")])
        chat = {"model": "tiny-test-llama", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}

        status, body = request("POST", f"http://127.0.0.1:{stub.proxy_port}/v1/chat/completions", chat, auth=None)

        assert status == 200, body
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] >= 1
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
