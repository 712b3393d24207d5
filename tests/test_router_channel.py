"""The proxy-router on the rig channel, end to end: the panel's Marketplace page starts it through a real agent, the
stand-in (tests/routerstub.py) plays the router binary, and its state comes back as `router` reports."""

import json
import os
import signal
import sys

import pytest

from marketplace.models import Router
from nodes.models import Operation
from tests.harness import wait_until
from tests.helpers import free_port, make_node, page
from tests.routerkit import COOKIE, MOR, STUB, WALLET, assert_no_secret, seen_by_the_panel
from tests.test_integration_serving import BrokerWatch

pytestmark = pytest.mark.integration

WALLET_KEY = "0xprivate-test-key-never-shown"
COOKIE_PASSWORD = COOKIE.partition(":")[2]
VERSION = "v7.11.0-stub"


def _router_binary(folder):
    """What the provider installed: here a script that execs the stand-in (its own python, no PYTHONPATH needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    binary = folder / "proxy-router"
    binary.write_text(f"#!/bin/sh\nexec {sys.executable} {STUB} \"$@\"\n")
    binary.chmod(0o755)
    return binary


def _provider_env(folder, hooks):
    """The .env as the provider leaves it before the panel touches it: the wallet key and their own settings. The
    stand-in's knobs go here too (the agent's child environment is allow-listed)."""
    folder.mkdir(parents=True, exist_ok=True)
    seed = folder / "seed.json"
    seed.write_text(json.dumps({"balance": {"mor": str(3 * MOR), "eth": str(10**16)}}))
    hooks.write_text("{}")
    (folder / ".env").write_text("\n".join([
        "# mine", f"WALLET_PRIVATE_KEY={WALLET_KEY}", f"COOKIE_CONTENT={COOKIE}", f"ROUTERSTUB_WALLET={WALLET}",
        f"ROUTERSTUB_CHAIN={seed}", f"ROUTERSTUB_HOOKS_FILE={hooks}", f"ROUTERSTUB_VERSION={VERSION}"]) + "\n")


def _stop_router(state_file):
    """The router runs in its own session and outlives the agent (that is the point): stop it after the test."""
    try:
        pid = json.loads(state_file.read_text()).get("pid")
    except (OSError, ValueError):
        return
    if pid:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def _finished(op, timeout=60):
    wait_until(lambda: Operation.objects.get(pk=op.pk).is_terminal, timeout=timeout, message=f"{op.kind} to end")
    return Operation.objects.get(pk=op.pk)


def _snapshot(check, message, timeout=45):
    def ready():
        router = Router.objects.filter(node__name="alpha").first()
        return router if router is not None and check(router.snapshot, router) else None
    return wait_until(ready, timeout=timeout, message=message)


def test_the_panel_starts_follows_and_re_adopts_the_router_and_no_secret_leaves_the_rig(rigs, operator_client,
                                                                                       redis_url, tmp_path):
    node, token = make_node("alpha")
    router_dir, hooks = tmp_path / "router", tmp_path / "hooks.json"
    _provider_env(router_dir, hooks)
    binary = _router_binary(tmp_path / "bin")
    agent = rigs.start("alpha", token, extra_env={"MORPHEUS_AGENT_ROUTER_DIR": str(router_dir)})
    broker = BrokerWatch(redis_url)
    pages = []
    try:
        proxy_port, web_port = free_port(), free_port()
        form = {"binary": str(binary), "network": "testnet", "proxy_port": proxy_port, "web_port": web_port}
        response = operator_client.post("/rigs/alpha/marketplace/", form)
        assert response.status_code == 302, page(response)[-2000:]
        op = _finished(Operation.objects.get(kind=Operation.ROUTER_APPLY))
        assert op.status == Operation.SUCCEEDED, op.message
        assert "healthy" in op.message and VERSION in op.message

        router = _snapshot(lambda s, r: s.get("wallet") and s.get("mor_wei"), "a router report with the wallet")
        assert router.state == "healthy" and router.snapshot["version"] == VERSION
        assert router.snapshot["mor_wei"] == str(3 * MOR) and router.snapshot["open_sessions"] == 0
        assert "WALLET_PRIVATE_KEY" in router.snapshot["unmanaged_keys"]
        text = page(operator_client.get("/rigs/alpha/marketplace/"))
        pages.append(text)
        assert VERSION in text and WALLET in text
        assert f'title="{3 * MOR} wei">3.0000 MOR' in text and f'title="{10**16} wei">0.0100 ETH' in text
        assert "/rigs/alpha/marketplace/" in page(operator_client.get("/rigs/alpha/"))
        # The provider's own lines are kept as they were; the managed ones are the panel's.
        env_text = (router_dir / ".env").read_text()
        assert f"WALLET_PRIVATE_KEY={WALLET_KEY}" in env_text and f"WEB_ADDRESS=127.0.0.1:{web_port}" in env_text
        assert "ETH_NODE_CHAIN_ID=84532" in env_text

        # Killed: the agent restarts it with backoff, and says so.
        first_pid = router.snapshot["pid"]
        os.kill(first_pid, signal.SIGKILL)
        router = _snapshot(lambda s, r: r.state == "healthy" and s.get("pid") not in (None, first_pid),
                           "the router restarted")
        second_pid = router.snapshot["pid"]
        assert router.snapshot["restarts"] >= 1

        # The agent restarts: the router keeps running and is re-adopted (same pid, no restart).
        agent.stop()
        agent = rigs.start("alpha", token, extra_env={"MORPHEUS_AGENT_ROUTER_DIR": str(router_dir)})
        router = _snapshot(lambda s, r: "re-adopted" in (s.get("message") or ""), "the router re-adopted")
        assert router.snapshot["pid"] == second_pid
        router = _snapshot(lambda s, r: r.state == "healthy" and s.get("wallet"), "healthy after re-adoption")
        assert router.snapshot["pid"] == second_pid

        # Applying the same settings again while it runs asks first (open sessions are cut), then restarts it.
        response = operator_client.post("/rigs/alpha/marketplace/", form)
        assert response.status_code == 200 and "cuts its 0 open session(s)" in page(response)
        assert Operation.objects.filter(kind=Operation.ROUTER_APPLY).count() == 1

        # The admin API failing shows plainly: malformed answers, a 401, degraded.
        hooks.write_text(json.dumps({"faults": {"/wallet": "malformed"}}))
        _snapshot(lambda s, r: (s.get("error") or {}).get("kind") == "malformed", "malformed reported")
        text = page(operator_client.get("/rigs/alpha/marketplace/"))
        pages.append(text)
        assert "something that is not its API's JSON" in text
        hooks.write_text(json.dumps({"degraded": True}))
        _snapshot(lambda s, r: r.state == "degraded", "degraded reported")
        text = page(operator_client.get("/rigs/alpha/marketplace/"))
        pages.append(text)
        assert 'id="router-state">degraded' in text
        hooks.write_text("{}")
        (router_dir / ".cookie").write_text("admin:not-the-router-password\n")  # the router keeps its own
        refresh = operator_client.post("/rigs/alpha/marketplace/refresh/")
        assert refresh.status_code == 302
        assert _finished(Operation.objects.get(kind=Operation.ROUTER_REFRESH)).status == Operation.SUCCEEDED
        _snapshot(lambda s, r: (s.get("error") or {}).get("kind") == "unauthorized", "401 reported")
        text = page(operator_client.get("/rigs/alpha/marketplace/"))
        pages.append(text)
        assert "refused the credentials in its cookie file (401)" in text
    finally:
        broker.close()
        _stop_router(tmp_path / "alpha" / "data" / "state" / "router" / "state.json")

    # Nothing secret anywhere the panel or the broker saw.
    assert_no_secret(seen_by_the_panel(pages, broker, rigs.logs()),
                     WALLET_KEY, COOKIE_PASSWORD, "not-the-router-password")
