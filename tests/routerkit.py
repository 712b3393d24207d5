"""Test kit for the proxy-router: a rig folder for the stand-in (tests/routerstub.py), the stand-in as a process, and
a small OpenAI-style backend standing in for llama-server that records what reaches it."""

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.harness import wait_until

STUB = Path(__file__).resolve().parent / "routerstub.py"
STUB_ARGV = [sys.executable, str(STUB)]
WALLET = "0x" + "12" * 20
COOKIE = "admin:stub-cookie-secret"
MOR = 10**18


def mid(n):
    """A model (or bid, session) id: 0x and 64 hex digits."""
    return "0x" + f"{n:064x}"


# The chain a stand-in starts from (ROUTERSTUB_CHAIN), in the contracts' own shapes: capitalised keys, amounts as the
# router prints them.
def chain_provider(address=WALLET, endpoint="rig.example.com:3333", stake=2 * MOR // 10):
    return {"Address": address, "Endpoint": endpoint, "Stake": str(stake), "CreatedAt": "1", "IsDeleted": False}


def chain_model(model_id, name, owner=WALLET, stake=MOR // 10):
    return {"Id": model_id, "IpfsCID": "0x" + "0" * 64, "Fee": 0, "Stake": stake, "Owner": owner, "Name": name,
            "Tags": ["chat"], "CreatedAt": 1, "IsDeleted": False, "ModelType": "LLM"}


def chain_bid(bid_id, model_id, price, provider=WALLET, deleted_at="0"):
    return {"Id": bid_id, "Provider": provider, "ModelAgentId": model_id, "PricePerSecond": str(price), "Nonce": "1",
            "CreatedAt": "1", "DeletedAt": deleted_at}


def chain_open_session(session_id, model_id, bid_id, price, user="0x" + "77" * 20, provider=WALLET):
    return {"Id": session_id, "User": user, "Provider": provider, "ModelAgentId": model_id, "BidID": bid_id,
            "Stake": str(MOR), "PricePerSecond": str(price), "ProviderWithdrawnAmount": "0", "OpenedAt": "1",
            "EndsAt": "99999999999", "ClosedAt": "0"}


def write_rig_folder(folder, web_port, proxy_port, models=(), extra_env=None, seed=None, cookie=COOKIE):
    """.env (managed-looking keys plus the stub's hooks), models-config.json and an optional chain seed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# written by the test", "WALLET_PRIVATE_KEY=0xprivate-test-key-never-shown",
             f"PROXY_ADDRESS=127.0.0.1:{proxy_port}", f"WEB_ADDRESS=127.0.0.1:{web_port}",
             f"COOKIE_CONTENT={cookie}", f"ROUTERSTUB_WALLET={WALLET}"]
    if seed is not None:
        (folder / "seed.json").write_text(json.dumps(seed))
        lines.append(f"ROUTERSTUB_CHAIN={folder / 'seed.json'}")
    lines += [f"{k}={v}" for k, v in (extra_env or {}).items()]
    (folder / ".env").write_text("\n".join(lines) + "\n")
    (folder / "models-config.json").write_text(json.dumps({"models": list(models)}))
    return folder


def entry(n, api_url, name=None, **more):
    return {"modelId": mid(n), "modelName": name or f"model-{n}", "apiType": "openai", "apiUrl": api_url, **more}


class StubProcess:
    """The stand-in started directly (not through RouterProcess), for tests of the stand-in itself."""

    def __init__(self, folder, web_port, proxy_port):
        self.folder, self.web_port, self.proxy_port = Path(folder), web_port, proxy_port
        self.popen = None

    @property
    def base(self):
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, wait=True):
        log = open(self.folder / "stub.log", "ab")
        self.popen = subprocess.Popen(STUB_ARGV, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        if wait:
            wait_until(lambda: self.answering() or self.popen.poll() is not None, timeout=15,
                       message="the stand-in's /healthcheck")
            assert self.popen.poll() is None, self.log()
        return self

    def answering(self):
        try:
            status, _ = request("GET", self.base + "/healthcheck", auth=None)
        except OSError:
            return False
        return status in (200, 503)

    def log(self):
        return (self.folder / "stub.log").read_text(errors="replace")

    def stop(self):
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def request(method, url, body=None, auth=COOKIE, headers=None, raw=False):
    """(status, JSON body — or the text when it is not JSON or raw=True)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    text = payload.decode(errors="replace")
    if raw:
        return status, text
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class Backend:
    """An OpenAI-style chat endpoint standing in for llama-server; `seen` holds each request's JSON body."""

    def __init__(self):
        self.seen = []
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                backend.seen.append({"path": self.path, "body": body,
                                     "authorization": self.headers.get("Authorization")})
                answer = json.dumps({"object": "chat.completion", "model": body.get("model"), "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}]})
                data = answer.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def seen_by_the_panel(pages=(), broker=None, logs=()):
    """Everything a router credential, wallet key or API key must never reach: the pages a test looked at, the
    router reports and operations the panel stored, the broker's traffic (a BrokerWatch) and the processes' logs."""
    from marketplace.models import Router
    from nodes.models import Operation

    seen = list(pages) + [json.dumps(r.snapshot) for r in Router.objects.all()]
    seen += [f"{o.message} {json.dumps(o.result)}" for o in Operation.objects.all()]
    seen += list(broker.texts()) if broker is not None else []
    seen += [Path(path).read_text(errors="replace") for path in logs if Path(path).exists()]
    return seen


def assert_no_secret(seen, *secrets):
    for secret in secrets:
        assert secret and not [text for text in seen if secret in text], f"{secret!r} leaked"


def confirm_chain_action(client, url, data):
    """Post an on-chain action's form, then confirm it from the page that shows its costs, as a provider does."""
    import html
    import re

    from tests.helpers import page

    text = page(client.post(url, data))
    token = re.search(r'name="confirmed" value="([^"]+)"', text)
    assert token, text[-2000:]
    return client.post(url, {**data, "confirmed": html.unescape(token[1])})
