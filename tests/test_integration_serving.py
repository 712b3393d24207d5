"""Live serving metrics and 'try it' end to end: a real agent, a real llama-server launched through the panel with an
API key, the panel worker applying what the rig reports, and Redis in between."""

import base64
import json
import re
import threading
import urllib.request

import pytest
import redis

from hosting.models import Deployment
from nodes.models import Operation
from tests import llama
from tests.harness import stop_llama_servers_under, wait_until
from tests.helpers import make_node, page

pytestmark = pytest.mark.integration

HTMX = {"HTTP_HX_REQUEST": "true"}
KEY = "sk-live-Secret-7b2f94e1"


@pytest.fixture(scope="session")
def llama_server_binary():
    return llama.server_binary()


@pytest.fixture
def served(rigs, operator_client, llama_server_binary, tmp_path):
    """Rig alpha serving the tiny model behind an API key: (deployment, port, agent process)."""
    node, token = make_node("alpha")
    agent = rigs.start("alpha", token)
    deployment, port = llama.host_tiny_model(operator_client, node, llama_server_binary, tmp_path, ctx_size=512,
                                             parallel=2, api_key=KEY)
    yield deployment, port, agent
    rigs.stop_all()
    stop_llama_servers_under(tmp_path)


def fresh(deployment):
    return Deployment.objects.select_related("node").get(pk=deployment.pk)


def live(deployment):
    """The deployment's live serving metrics, or {} while there are none (not yet, or a report late on a busy CI)."""
    return fresh(deployment).live_serving or {}


def complete(port, n_predict=64, key=KEY):
    body = json.dumps({"prompt": "Once upon a time", "n_predict": n_predict, "ignore_eos": True}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body,
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


class Load:
    """Threads posting /completion to the server back to back until stopped."""

    def __init__(self, port, threads=2):
        self.stop, self.done, self.errors = threading.Event(), [], []
        self.threads = [threading.Thread(target=self._run, args=(port,)) for _ in range(threads)]

    def _run(self, port):
        while not self.stop.is_set():
            try:
                self.done.append(complete(port, n_predict=200)["timings"]["predicted_n"])
            except Exception as exc:  # noqa: BLE001 — reported by the test
                self.errors.append(exc)
                return

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


class BrokerWatch:
    """Everything sent through Redis while it runs (MONITOR with the panel's admin account), to look for a secret in
    it: in clear, and inside the base64 bodies kombu wraps messages in."""

    def __init__(self, url):
        self.client, self.commands = redis.Redis.from_url(url), []
        self.monitor = self.client.monitor()
        self.monitor.__enter__()  # MONITOR is on before the thread starts: nothing sent from now on is missed
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for command in self.monitor.listen():
                self.commands.append(command["command"])
        except Exception:  # noqa: BLE001 — the connection closed at the end
            pass

    def close(self):
        self.monitor.__exit__()
        self.thread.join(timeout=5)

    def texts(self):
        for command in self.commands:
            yield command
            for blob in re.findall(r"[A-Za-z0-9+/]{16,}={0,2}", command):
                try:
                    yield base64.b64decode(blob + "=" * (-len(blob) % 4)).decode("utf-8", errors="replace")
                except ValueError:
                    continue


def test_live_metrics_move_while_requests_run(served, operator_client):
    deployment, port, _ = served
    # Idle: no slot busy, nothing generated yet.
    idle = wait_until(lambda: live(deployment), timeout=20, message="a first reading")
    assert (idle["slots_busy"], idle["slots_total"], idle["tokens_generated"]) == (0, 2, 0)
    assert idle["kv_total"] == 512

    with Load(port) as load:
        busy = wait_until(lambda: (s := live(deployment)) and s["generated_tps"] and s["slots_busy"] > 0
                          and s["requests_processing"] > 0 and s, timeout=20, message="tokens/s and busy slots")
        first = busy["tokens_generated"]
        assert 0 < busy["kv_used"] <= 512
        wait_until(lambda: live(deployment).get("tokens_generated", 0) > first, timeout=20,
                   message="the generated-tokens counter to grow")
        # The deployment's page and the rig's card show it (a reading can fall between two requests: wait for one).
        wait_until(lambda: re.search(r"[1-9][0-9.]* tokens/s.*[12] of 2 busy", page(operator_client.get(
            f"/deployments/{deployment.pk}/", **HTMX)), re.DOTALL), timeout=20, message="the page's live metrics")
        wait_until(lambda: re.search(r"tiny</b><span>[1-9][0-9.]* tok/s · [12]/2 slots busy",
                                     page(operator_client.get("/"))), timeout=20, message="the rig card's serving line")
    assert not load.errors, load.errors
    served_tokens = sum(load.done)
    # Idle again: the rate drops to zero, no slot is busy, and the counter holds what was served.
    after = wait_until(lambda: (s := live(deployment)) and s["generated_tps"] == 0 and s["slots_busy"] == 0 and s,
                       timeout=20, message="back to idle")
    assert after["tokens_generated"] >= served_tokens > first


def test_it_answers_a_prompt_through_the_panel_and_the_key_stays_on_the_rig(served, operator_client, redis_url,
                                                                            panel_processes):
    deployment, _, agent = served
    broker = BrokerWatch(redis_url)
    try:
        response = operator_client.post(f"/deployments/{deployment.pk}/chat/", {
            "chat-prompt": "Say hello", "chat-max_tokens": 48, "chat-temperature": 0}, **HTMX)
        chat = Operation.objects.get(kind=Operation.CHAT)
        assert f"/deployments/{deployment.pk}/chat/{chat.pk}/" in response.content.decode()
        chat = wait_until(lambda: (op := Operation.objects.get(pk=chat.pk)).is_terminal and op, timeout=30,
                          message="the answer")
        seen = len(broker.commands)  # one more report of the rig (its telemetry) passes through the broker
        wait_until(lambda: any("LPUSH panel" in command for command in broker.commands[seen:]), timeout=10,
                   message="another report from the rig")
    finally:
        broker.close()
    assert chat.status == Operation.SUCCEEDED, chat.message
    assert chat.result["text"] and chat.result["timings"]["predicted_n"] > 0
    assert chat.result["usage"]["completion_tokens"] == chat.result["timings"]["predicted_n"]
    assert re.fullmatch(r"\d+ tokens? in [0-9.]+ s \([0-9.]+ tokens/s generated\)", chat.message), chat.message
    answer = operator_client.get(f"/deployments/{deployment.pk}/chat/{chat.pk}/", **HTMX)
    assert answer.status_code == 286 and chat.result["text"].strip()[:20] in page(answer)

    # The key: in no page, operation, log line, or message through the broker.
    pages = [operator_client.get(url).content.decode() for url in (
        f"/deployments/{deployment.pk}/", f"/deployments/{deployment.pk}/?chat={chat.pk}", chat.get_absolute_url(),
        "/", "/operations/", f"/rigs/alpha/deployments/{deployment.pk}/edit/")]
    assert all(KEY not in text for text in pages)
    for op in Operation.objects.all():
        assert KEY not in op.message + op.log_tail + json.dumps(op.result)
    assert KEY not in fresh(deployment).log_tail + json.dumps(fresh(deployment).serving)
    assert KEY not in agent.log() and KEY not in panel_processes["worker"].log()
    assert not [text for text in broker.texts() if KEY in text]
    assert any("Say hello" in text for text in broker.texts())  # the watch does see inside the messages


def test_it_refuses_a_prompt_to_a_stopped_deployment_and_shows_the_servers_error_for_an_overlong_one(
        served, operator_client):
    deployment, port, _ = served
    # The server's own context limit: 512 tokens over 2 slots, 256 each; 1,500 characters of bytes exceed it.
    response = operator_client.post(f"/deployments/{deployment.pk}/chat/", {
        "chat-prompt": "zq" * 750, "chat-max_tokens": 8, "chat-temperature": 0}, **HTMX)
    assert response.status_code == 200
    chat = wait_until(lambda: (op := Operation.objects.filter(kind=Operation.CHAT).first()) and op.is_terminal and op,
                      timeout=30, message="the overlong chat to end")
    assert chat.status == Operation.FAILED
    assert re.fullmatch(r"the server answered HTTP 400: request \(\d+ tokens\) exceeds the available context size "
                        r"\(256 tokens\), try increasing it", chat.message), chat.message
    shown = page(operator_client.get(f"/deployments/{deployment.pk}/chat/{chat.pk}/", **HTMX))
    assert "exceeds the available context size (256 tokens)" in shown

    operator_client.post(f"/deployments/{deployment.pk}/stop/")
    wait_until(lambda: fresh(deployment).actual_state == "stopped", timeout=30, message="stopped")
    response = operator_client.post(f"/deployments/{deployment.pk}/chat/", {
        "chat-prompt": "Hello?", "chat-max_tokens": 8, "chat-temperature": 0}, **HTMX)
    assert "Not sent: tiny is stopped: launch it first" in page(response)
    assert Operation.objects.filter(kind=Operation.CHAT).count() == 1
    assert "Not serving." in page(operator_client.get(f"/deployments/{deployment.pk}/", **HTMX))
