"""The rig side of the proxy-router, alone (no panel, no Celery): its .env and models-config.json, the process kept
running as the real one would be (the stand-in tests/routerstub.py, launched for real), and the admin API client.
"""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from nodes.agent import router as rt
from nodes.agent import routeradmin as ra
from nodes.agent.router import AdminClient, RouterError, RouterProcess
from nodes.agent.supervisor import pid_alive
from nodes.agent.validation import InvalidValue
from tests.harness import wait_until
from tests.helpers import free_port
from tests.routerkit import (COOKIE, MOR, STUB_ARGV, WALLET, Backend, StubProcess, entry, mid, request,
                             write_rig_folder)

SECRET_KEY_LINE = "WALLET_PRIVATE_KEY=0xfeedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedface"
RPC_LINE = 'export ETH_NODE_ADDRESS="https://base-mainnet.example/v2/rpc-secret-123"'
PASSWORD = COOKIE.split(":", 1)[1]


# --- .env ----------------------------------------------------------------------------------------------------------
def test_write_env_keeps_the_providers_lines_and_sets_the_managed_keys(tmp_path):
    env = tmp_path / ".env"
    env.write_text("# my rig\n" + SECRET_KEY_LINE + "\n" + RPC_LINE + "\nWEB_ADDRESS=0.0.0.0:8082\n\n"
                   "LOG_LEVEL_APP=debug\nWEB_ADDRESS=0.0.0.0:9999\n")
    env.chmod(0o644)

    rt.write_env(env, rt.default_env("testnet", web_port=18082))

    lines = env.read_text().splitlines()
    assert lines[:4] == ["# my rig", SECRET_KEY_LINE, RPC_LINE, "WEB_ADDRESS=127.0.0.1:18082"]  # in place
    assert lines.count("WEB_ADDRESS=127.0.0.1:18082") == 1 and "WEB_ADDRESS=0.0.0.0:9999" not in lines
    assert "LOG_LEVEL_APP=info" in lines
    assert "MOR_TOKEN_ADDRESS=0x5C80Ddd187054E1E4aBBfFCD750498e81d34FfA3" in lines  # BASE Sepolia's MOR
    assert "ETH_NODE_CHAIN_ID=84532" in lines and rt.MANAGED_MARK in lines
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    written = env.read_text()
    rt.write_env(env, rt.default_env("testnet", web_port=18082))
    assert env.read_text() == written  # writing the same settings again changes nothing

    names, managed = rt.unmanaged_keys(env), rt.managed_values(env)
    assert names == ["ETH_NODE_ADDRESS", "WALLET_PRIVATE_KEY"]
    assert managed["WEB_ADDRESS"] == "127.0.0.1:18082" and "ETH_NODE_ADDRESS" not in managed
    assert "feedface" not in repr((names, managed)) and "rpc-secret" not in repr((names, managed))


@pytest.mark.parametrize("key, value", [
    ("WEB_ADDRESS", "127.0.0.1:8082\nWALLET_PRIVATE_KEY=0xattacker"),
    ("WEB_PUBLIC_URL", "https://rig.example.com/x=1"),
    ("BLOCKSCOUT_API_URL", "https://base.blockscout.com/api/v2?k=$HOME"),
    ("DIAMOND_CONTRACT_ADDRESS", "0x6aBE1d282f72B474E54527D93b979A4f64d3030"),
    ("PROXY_ADDRESS", "0.0.0.0:70000"),
    ("PROXY_ADDRESS", "3333"),
    ("MODELS_CONFIG_PATH", "models config.json"),
    ("ETH_NODE_CHAIN_ID", "1"),
    ("LLM_TIMEOUT", True),
    ("WALLET_PRIVATE_KEY", "0xabc"),
    ("ETH_NODE_ADDRESS", "https://rpc.example"),
])
def test_write_env_refuses_a_bad_value_and_writes_nothing(tmp_path, key, value):
    env = tmp_path / ".env"
    env.write_text(SECRET_KEY_LINE + "\n")

    with pytest.raises(InvalidValue):
        rt.write_env(env, {**rt.default_env("mainnet"), key: value})

    assert env.read_text() == SECRET_KEY_LINE + "\n"
    assert [p.name for p in tmp_path.iterdir()] == [".env"]  # no temporary file left behind


# --- models-config.json --------------------------------------------------------------------------------------------
GOOD = {"modelId": mid(1), "modelName": "tiny", "apiType": "openai",
        "apiUrl": "http://127.0.0.1:8080/v1/chat/completions"}


@pytest.mark.parametrize("change, field", [
    ({"modelId": "0x" + "g" * 64}, "models[0].modelId"),
    ({"modelId": mid(1)[:-1]}, "models[0].modelId"),
    ({"modelName": ""}, "models[0].modelName"),
    ({"apiType": "llama"}, "models[0].apiType"),
    ({"apiUrl": "not a url"}, "models[0].apiUrl"),
    ({"concurrentSlots": 0}, "models[0].concurrentSlots"),
    ({"concurrentSlots": 2.5}, "models[0].concurrentSlots"),
    ({"concurrentSlots": True}, "models[0].concurrentSlots"),
    ({"capacityPolicy": "greedy"}, "models[0].capacityPolicy"),
    ({"parameters": {"steps": 30}}, "models[0].parameters.steps"),
    ({"apiKey": ""}, "models[0].apiKey"),
])
def test_validate_models_config_names_the_field_that_breaks_the_schema(change, field):
    with pytest.raises(rt.ModelsConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        rt.validate_models_config({"models": [{**GOOD, **change}]})


def test_validate_models_config_wants_the_required_fields_and_one_entry_per_model():
    for missing in ("modelId", "modelName", "apiType", "apiUrl"):
        with pytest.raises(rt.ModelsConfigError, match=f"{missing} is required"):
            rt.validate_models_config({"models": [{k: v for k, v in GOOD.items() if k != missing}]})
    with pytest.raises(rt.ModelsConfigError, match="twice"):
        rt.validate_models_config({"models": [GOOD, {**GOOD, "modelId": mid(1)[2:].upper()}]})
    assert rt.validate_models_config({"models": [GOOD, {**GOOD, "modelId": mid(2), "concurrentSlots": 4,
                                                         "capacityPolicy": "idle_timeout", "extra": 1}]})


def test_write_models_config_writes_ids_as_the_router_looks_them_up(tmp_path):
    path = tmp_path / "models-config.json"
    upper = mid(171)[2:].upper()  # no 0x, capitals: valid for the schema, never found by the router

    rt.write_models_config(path, [{**GOOD, "modelId": upper, "apiKey": "backend-key"}])

    data = json.loads(path.read_text())
    assert data["models"][0]["modelId"] == mid(171) and data["$schema"] == rt.SCHEMA_REF
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(rt.ModelsConfigError):
        rt.write_models_config(path, [GOOD, GOOD])
    assert json.loads(path.read_text()) == data  # refused: the old file stays


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/v1",  # older routers appended the path; v7 sends to apiUrl as it is
    "127.0.0.1:8080/v1/chat/completions",
    "ftp://127.0.0.1:8080/v1/chat/completions",
    "http://127.0.0.1/v1/chat/completions",
    "http://127.0.0.1:8080/v1/chat/completions?x=1",
])
def test_a_published_entry_needs_the_full_chat_completions_url(url):
    with pytest.raises(InvalidValue):
        rt.models_config_entry(mid(1), "tiny", url)


def test_a_published_entry_passes_the_schema():
    made = rt.models_config_entry(mid(1).upper().replace("0X", "0x"), "tiny",
                                  "http://10.0.0.5:8080/v1/chat/completions", concurrent_slots=4)
    assert made == {"modelId": mid(1), "modelName": "tiny", "apiType": "openai",
                    "apiUrl": "http://10.0.0.5:8080/v1/chat/completions", "concurrentSlots": 4,
                    "capacityPolicy": "simple"}
    rt.validate_models_config({"models": [made]})


# --- the process ---------------------------------------------------------------------------------------------------
@pytest.fixture
def backend():
    server = Backend()
    yield server
    server.close()


class Rig:
    """A router folder written the way the agent writes it, and RouterProcess instances over one state folder."""

    def __init__(self, tmp_path, models):
        self.web, self.proxy = free_port(), free_port()
        self.folder = write_rig_folder(tmp_path / "router", self.web, self.proxy)  # the provider's own lines
        managed = rt.default_env("mainnet", web_port=self.web)
        managed.update(PROXY_ADDRESS=f"127.0.0.1:{self.proxy}")
        rt.write_env(self.folder / ".env", managed)
        rt.write_models_config(self.folder / "models-config.json", models)
        self.state = tmp_path / "state"
        self.made, self.exits = [], []

    def process(self, **knobs):
        knobs = {"backoff_base": 0.05, "stop_timeout": 5.0, **knobs}
        made = RouterProcess(STUB_ARGV, self.folder, self.state, on_exit=self.exits.append, **knobs)
        self.made.append(made)
        return made

    def cleanup(self):
        for made in self.made:
            made.stop_loop()
            if made.pid and made.is_running():
                os.killpg(made.pid, signal.SIGKILL)


@pytest.fixture
def rig(tmp_path, backend):
    made = Rig(tmp_path, [rt.models_config_entry(mid(1), "tiny", backend.url, concurrent_slots=2)])
    yield made
    made.cleanup()


def environ_of(pid):
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_it_keeps_the_router_running_and_re_adopts_it(rig, backend, monkeypatch):
    monkeypatch.setenv("MORPHEUS_NODE_TOKEN", "agent-token-never-for-children")
    monkeypatch.setenv("WALLET_PRIVATE_KEY", "0xagent-environment-key")
    first = rig.process()

    first.start()
    assert first.wait_healthy(timeout=20) == rt.HEALTHY, first.report()
    report = first.report()
    assert report["version"] and report["models"][mid(1)]["status"] == "no_bid"
    pid = report["pid"]
    assert Path(f"/proc/{pid}/cwd").resolve() == rig.folder.resolve()
    child_env = environ_of(pid)
    assert "MORPHEUS_NODE_TOKEN" not in child_env and "WALLET_PRIVATE_KEY" not in child_env
    assert PASSWORD not in json.dumps(report) and "never-shown" not in json.dumps(report)

    assert rt.client_for(rig.folder).wallet() == WALLET  # its address and cookie, from the files on the rig

    # A chat sent to the router's consumer port reaches the model's backend.
    status, body = request("POST", f"http://127.0.0.1:{rig.proxy}/v1/chat/completions",
                           {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}, auth=None)
    assert status == 200 and backend.seen[-1]["body"]["model"] == "tiny"

    os.killpg(pid, signal.SIGKILL)
    assert wait_until(lambda: first.tick() == rt.BACKOFF, timeout=10, interval=0.02)
    assert "SIGKILL" in first.message and rig.exits[-1]["exit"] == "SIGKILL"
    assert first.wait_healthy(timeout=20) == rt.HEALTHY
    assert first.pid != pid and first.restarts == 1

    # The agent restarts: a new instance takes the running router back instead of starting a second one.
    second = rig.process()
    assert second.adopt() is True
    assert second.pid == first.pid and second.state == rt.HEALTHY and "re-adopted" in second.message

    second.stop()
    assert wait_until(lambda: not pid_alive(first.pid), timeout=10)
    assert second.state == rt.STOPPED
    third = rig.process()
    assert third.adopt() is False and third.tick() == rt.STOPPED and third.pid is None


def test_a_router_that_died_while_the_agent_was_away_is_started_again_and_counted(rig):
    first = rig.process()
    first.start()
    assert first.wait_healthy(timeout=20) == rt.HEALTHY
    os.killpg(first.pid, signal.SIGKILL)
    first.popen.wait()

    second = rig.process()
    assert second.adopt() is False
    assert rig.exits[-1]["exit"].startswith("exit status unknown")  # the panel's timeline still gets the exit
    assert second.wait_healthy(timeout=20) == rt.HEALTHY and second.pid != first.pid

    second.run(interval=0.05)  # the agent's loop: a crash is noticed and undone without anyone asking
    crashed = second.pid
    os.killpg(crashed, signal.SIGKILL)
    assert wait_until(lambda: second.state == rt.HEALTHY and second.pid not in (None, crashed), timeout=20)
    second.stop_loop()
    second.stop()


def test_it_tells_a_degraded_router_from_one_that_does_not_answer(rig, tmp_path):
    hooks = tmp_path / "hooks.json"
    hooks.write_text(json.dumps({"degraded": True}))
    with open(rig.folder / ".env", "a") as fh:
        fh.write(f"ROUTERSTUB_HOOKS_FILE={hooks}\n")
    process = rig.process()
    process.start()
    assert process.wait_healthy(timeout=20) == rt.DEGRADED
    assert "unhealthy" in process.report()["components"]["badgerdb"]
    hooks.write_text("{}")
    assert wait_until(lambda: process.tick() == rt.HEALTHY, timeout=10, interval=0.02)
    process.stop()

    # A program that neither answers /healthcheck nor stops on SIGTERM.
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    silent = RouterProcess([sys.executable, "-c", stubborn], rig.folder, tmp_path / "other", start_timeout=0.3,
                           stop_timeout=0.3)
    rig.made.append(silent)
    assert silent.start() == rt.STARTING
    assert wait_until(lambda: silent.tick() == rt.UNRESPONSIVE, timeout=10, interval=0.05)
    assert "does not answer" in silent.message
    pid = silent.pid
    silent.stop()
    assert silent.state == rt.STOPPED and "killed" in silent.message and not pid_alive(pid)


def test_it_does_not_adopt_another_program_on_a_reused_pid(rig):
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        state = {"argv": STUB_ARGV, "desired": "running", "state": rt.HEALTHY, "pid": sleeper.pid,
                 "cmdline": STUB_ARGV, "started_at": 1.0, "restarts": 0, "crashes": [],
                 "web_address": f"127.0.0.1:{rig.web}"}
        (rig.state / "router").mkdir(parents=True)
        (rig.state / "router" / "state.json").write_text(json.dumps(state))
        process = rig.process()
        assert process.adopt() is False and process.pid is None
        assert process.wait_healthy(timeout=20) == rt.HEALTHY and process.pid != sleeper.pid
        process.stop()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_what_it_reports_hides_the_keys_and_passwords_on_the_rig(rig, backend):
    rt.write_models_config(rig.folder / "models-config.json", [
        {**rt.models_config_entry(mid(1), "tiny", backend.url), "apiKey": "backend-api-key-42"}])
    with open(rig.folder / ".env", "a") as fh:
        fh.write(RPC_LINE + "\n")
    process = rig.process()
    process.start()
    assert process.wait_healthy(timeout=20) == rt.HEALTHY
    rpc = RPC_LINE.split('"')[1]
    secrets = ["0xprivate-test-key-never-shown", PASSWORD, "backend-api-key-42", rpc]
    with open(process.log_path, "a") as log:  # a router that prints what it should not
        log.write(" ".join(secrets) + "\n")

    report = json.dumps(process.report())

    assert not [secret for secret in secrets if secret in report]
    assert "***" in report
    process.stop()


def test_it_gives_up_after_repeated_crashes_with_the_routers_last_words(rig):
    (rig.folder / "models-config.json").write_text(json.dumps({"models": [{**GOOD, "apiType": "llama"}]}))
    process = rig.process(backoff_base=0.01, max_crashes=3)

    process.start()
    assert wait_until(lambda: process.tick() == rt.FAILED, timeout=20, interval=0.02)
    assert "crashed 3 times" in process.message and "exit code 2" in process.message
    assert "refusing to start" in process.message and "apiType" in process.message
    assert len(rig.exits) == 3 and process.tick() == rt.FAILED  # it stays down until started again


def test_it_says_when_the_routers_port_is_taken(rig):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", rig.web))
        taken.listen()
        process = rig.process()
        assert process.start() == rt.FAILED
    assert f"WEB_ADDRESS 127.0.0.1:{rig.web} is already in use" in process.message


# --- the admin API client ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One stand-in for the client tests; `hooks` lets a test switch on a fault."""
    folder = tmp_path_factory.mktemp("admin")
    hooks = folder / "hooks.json"
    hooks.write_text("{}")
    web, proxy = free_port(), free_port()
    seed = {"balance": {"mor": str(3 * MOR), "eth": str(10**16)},
            "bids": [{"Id": mid(201), "Provider": "0x" + "cd" * 20, "ModelAgentId": mid(9),
                      "PricePerSecond": "12000000000", "Nonce": "0", "CreatedAt": "1", "DeletedAt": "0"}],
            "sessions": [{"Id": mid(301), "User": "0x" + "ee" * 20, "Provider": WALLET, "ModelAgentId": mid(9),
                          "BidID": mid(201), "Stake": "1000", "PricePerSecond": "12000000000",
                          "ProviderWithdrawnAmount": 0, "OpenedAt": 100, "EndsAt": 200, "ClosedAt": 0}],
            "claimable": {mid(301): "5"}}
    write_rig_folder(folder, web, proxy, models=[entry(1, f"http://127.0.0.1:{free_port()}/v1/chat/completions")],
                     extra_env={"ROUTERSTUB_HOOKS_FILE": hooks}, seed=seed)
    stub = StubProcess(folder, web, proxy).start()
    stub.hooks = hooks
    yield stub
    stub.stop()


@pytest.fixture
def client(live):
    live.hooks.write_text("{}")
    yield AdminClient(f"0.0.0.0:{live.web_port}", live.folder / ".cookie", timeout=2.0)
    live.hooks.write_text("{}")


def test_the_client_reads_the_router_with_its_own_cookie(client):
    health = client.healthcheck()
    assert health["status"] == "healthy" and health["models"][mid(1)]["status"] == "no_bid"
    assert client.config()["wallet"] == WALLET and client.config()["chain_id"] == 8453
    assert client.wallet() == WALLET
    assert client.balance() == {"mor": 3 * MOR, "eth": 10**16}
    assert client.local_models()[0]["id"] == mid(1)
    competing = client.model_bids(mid(9))
    assert competing[0]["price_per_second"] == 12_000_000_000 and competing[0]["active"]
    sessions = client.provider_sessions(WALLET)
    assert sessions[0]["open"] and sessions[0]["stake"] == 1000 and sessions[0]["opened_at"] == 100
    assert client.claimable_balance(mid(301)) == 5
    everything = [health, client.config(), client.providers(), client.models(), competing, sessions]
    assert PASSWORD not in repr(everything) and "never-shown" not in repr(everything)


def test_the_client_registers_and_bids_in_exact_wei(client):
    provider = client.register_provider("rig.example.com:3333", 2 * 10**17)
    assert provider["stake"] == 2 * 10**17 and provider["endpoint"] == "rig.example.com:3333"
    model = client.register_model("tiny", 10**17, base_id=mid(7))
    assert model["id"] != mid(7) and model["stake"] == 10**17 and isinstance(model["fee"], int)
    before = client.balance()["mor"]

    bid = client.post_bid(model["id"], 10_000_000_000)

    assert bid["price_per_second"] == 10_000_000_000 and bid["active"]
    assert client.balance()["mor"] == before - ra.BID_FEE
    assert [b["id"] for b in client.provider_bids(WALLET)] == [bid["id"]]
    assert client.delete_bid(bid["id"]).startswith("0x")
    assert client.provider_bids(WALLET) == []
    assert client.approve(WALLET, 5).startswith("0x") and client.allowance(WALLET) == 5


@pytest.mark.parametrize("action", [
    lambda c: c.post_bid(mid(1), 9_999_999_999),
    lambda c: c.post_bid(mid(1), 1e10),
    lambda c: c.post_bid(mid(1), True),
    lambda c: c.post_bid(mid(1), "1.5e10"),
    lambda c: c.post_bid("0x1234", 10**10),
    lambda c: c.register_provider("http://rig.example.com:3333", 2 * 10**17),
    lambda c: c.register_provider("rig.example.com", 2 * 10**17),
    lambda c: c.register_provider("rig.example.com:3333/x", 2 * 10**17),
    lambda c: c.register_provider("rig.example.com:3333", 2 * 10**17 - 1),
    lambda c: c.register_model("tiny", 10**17 - 1),
    lambda c: c.register_model("tiny", Decimal(10**17)),
    lambda c: c.register_model("tiny", 10**17, tags=["fun"]),
    lambda c: c.approve("0xnot-an-address", 1),
    lambda c: c.delete_bid("42"),
])
def test_the_client_refuses_bad_values_before_any_call(tmp_path, action):
    nowhere = AdminClient(f"127.0.0.1:{free_port()}", tmp_path / "no-cookie")  # a call would fail as "down"
    with pytest.raises(InvalidValue):
        action(nowhere)


def failure(call):
    with pytest.raises(RouterError) as caught:
        call()
    assert PASSWORD not in caught.value.reason
    return caught.value


def test_each_router_failure_is_one_router_error_with_a_plain_reason(client, live, tmp_path):
    down = failure(lambda: AdminClient(f"127.0.0.1:{free_port()}", live.folder / ".cookie").wallet())
    assert down.kind == "down" and "connection refused" in down.reason

    wrong = tmp_path / "cookie"
    wrong.write_text("admin:not-the-password\n")
    refused = failure(lambda: AdminClient(f"127.0.0.1:{live.web_port}", wrong).wallet())
    assert refused.kind == "unauthorized" and refused.status == 401 and "not-the-password" not in refused.reason
    assert failure(lambda: AdminClient(f"127.0.0.1:{live.web_port}", tmp_path / "none").wallet()).kind == \
        "unauthorized"

    assert failure(lambda: client.call("GET", "/blockchain/bids")).kind == "not_found"
    unknown = failure(lambda: client.post_bid(mid(55), 10**10))
    assert unknown.kind == "refused" and "ModelNotFound" in unknown.reason

    live.hooks.write_text(json.dumps({"faults": {"/wallet": 429, "/blockchain/balance": "malformed",
                                                 "/config": 503, "/blockchain/models": "sleep:1"}}))
    assert failure(client.wallet).kind == "rate_limited"
    assert failure(client.balance).kind == "malformed"
    assert failure(client.config).kind == "degraded"
    hasty = AdminClient(f"127.0.0.1:{live.web_port}", live.folder / ".cookie", timeout=0.3)
    slow = failure(hasty.models)
    assert slow.kind == "timeout" and "0.3 s" in slow.reason

    live.hooks.write_text(json.dumps({"faults": {"/blockchain/bids": "sleep:1"}}))
    posting = AdminClient(f"127.0.0.1:{live.web_port}", live.folder / ".cookie", tx_timeout=0.3)
    lost = failure(lambda: posting.post_bid(mid(55), 10**10))
    assert lost.kind == "outcome_unknown" and "read the chain again" in lost.reason

    live.hooks.write_text(json.dumps({"degraded": True}))
    assert client.healthcheck()["status"] == "degraded"  # a 503 healthcheck is an answer, not an error
    small = AdminClient(f"127.0.0.1:{live.web_port}", live.folder / ".cookie", max_bytes=40)
    assert failure(small.local_models).kind == "too_large"


def test_competing_prices_are_summarised_in_exact_wei():
    def bid(provider, price, active=True):
        return {"provider": provider, "price_per_second": price, "active": active}

    bids = [bid(WALLET, 10**10), bid("0x" + "cd" * 20, 3 * 10**10), bid("0x" + "ce" * 20, 2 * 10**10),
            bid("0x" + "cf" * 20, 10**19 + 1), bid("0x" + "d0" * 20, 1, active=False)]
    assert ra.price_summary(bids, exclude=WALLET.upper().replace("0X", "0x")) == {
        "count": 3, "lowest": 2 * 10**10, "median": 3 * 10**10}
    assert ra.price_summary(bids)["median"] == 2 * 10**10
    assert ra.price_summary([], exclude=WALLET) == {"count": 0, "lowest": None, "median": None}


def test_amounts_from_the_router_must_be_whole_wei():
    provider = {"Address": WALLET, "Endpoint": "rig:3333", "Stake": "200000000000000000", "CreatedAt": "1"}
    assert ra.provider_record(provider)["stake"] == 2 * 10**17
    for bad in (Decimal("2e17"), "2e17", -1, True, None):
        with pytest.raises(RouterError) as caught:
            ra.provider_record({**provider, "Stake": bad})
        assert caught.value.kind == "malformed"
    model = {"Id": mid(1), "Name": "tiny", "Fee": 10**30, "Stake": 10**17}
    assert ra.model_record(model)["fee"] == 10**30  # beyond a float's exact range, kept exact


def test_the_client_only_talks_to_loopback(tmp_path):
    with pytest.raises(ValueError):
        AdminClient("10.0.0.5:8082", tmp_path / ".cookie")
    assert AdminClient("0.0.0.0:8082", tmp_path / ".cookie").base == "http://127.0.0.1:8082"
    assert AdminClient("[::]:8082", tmp_path / ".cookie").base == "http://[::1]:8082"
