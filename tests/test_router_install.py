"""Installing a proxy-router release by URL and sha256: the rules on both sides, the rig's download and unpacking
against a real HTTP server on loopback, the panel's section and form, and one install end to end through a real
agent whose binary then runs as the rig's router."""

import hashlib
import io
import json
import os
import re
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import Client

from marketplace.install_forms import ReleaseForm
from marketplace.models import Router
from nodes.agent import protocol, routerrelease
from nodes.agent.routerrelease import ReleaseError, install, release_sha256, release_url
from nodes.agent.validation import InvalidValue
from nodes.models import Operation
from tests.harness import wait_until
from tests.helpers import make_node, page, queued_messages, report
from tests.routerkit import assert_no_secret, seen_by_the_panel

BODY = b"\x7fELF" + os.urandom(3000)  # a "binary": the rig does not run it in these tests


def sha(data):
    return hashlib.sha256(data).hexdigest()


def zipped(members):
    """A zip of (name, data, mode) members; a mode with S_IFLNK makes a symlink entry, as `zip -y` stores it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def tarred(members):
    """A .tar.gz of (name, data, kind) members, kind "file" or "symlink" (data is then the link target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                archive.addfile(info)
            else:
                info.size, info.mode = len(data), 0o755
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class ReleaseServer:
    """A real HTTP server on 127.0.0.1 serving `files` (path → bytes); `/short/<path>` promises more bytes than it
    sends, `/slow/<path>` sends 1 KB every 50 ms, `/away` redirects to plain http on another host. Counts the
    requests per path."""

    def __init__(self, files):
        self.files, self.hits = dict(files), {}
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path == "/away":
                    self.send_response(302)
                    self.send_header("Location", "http://downloads.example.com/proxy-router")
                    self.end_headers()
                    return
                short, slow = self.path.startswith("/short/"), self.path.startswith("/slow/")
                data = server.files.get(self.path.removeprefix("/short").removeprefix("/slow"))
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) + (1000 if short else 0)))
                self.end_headers()
                self.close_connection = True
                if not slow:
                    self.wfile.write(data)
                    return
                for start in range(0, len(data), 1024):
                    if server.closing.wait(0.05):
                        return
                    try:
                        self.wfile.write(data[start:start + 1024])
                        self.wfile.flush()
                    except OSError:  # the client hung up (a cancelled install)
                        return

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def close(self):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    files = {
        "/proxy-router": BODY,
        "/mor-launch-linux-x86_64.zip": zipped([("mor-launch/bin/", b"", 0o40755),
                                                ("mor-launch/bin/proxy-router", BODY, 0o100755),
                                                ("mor-launch/README.md", b"hello", 0o100644)]),
        "/release.tar.gz": tarred([("bin/proxy-router", BODY, "file"), ("bin/.env.example", b"X=1", "file")]),
        "/permissions-only.zip": zipped([("proxy-router", BODY, 0o755)]),  # no file type bits, as some tools write
        "/traversal.zip": zipped([("../proxy-router", BODY, 0o100755)]),
        "/link.zip": zipped([("bin/proxy-router", b"/bin/sh", stat.S_IFLNK | 0o777)]),
        "/link.tar.gz": tarred([("bin/proxy-router", b"/bin/sh", "symlink")]),
        "/twice.zip": zipped([("a/proxy-router", BODY, 0o100755), ("b/proxy-router", BODY, 0o100755)]),
        "/empty-handed.zip": zipped([("mor-launch/README.md", b"hello", 0o100644)]),
        "/blank": b"",
    }
    running = ReleaseServer(files)
    yield running
    running.close()


def leftovers(router_dir):
    releases = router_dir / "releases"
    return sorted(p.name for p in releases.iterdir()) if releases.exists() else []


# --- the rules, on the rig and on the panel --------------------------------------------------------------------------
GOOD_URLS = [
    "https://github.com/MorpheusAIs/Morpheus-Lumerin-Node/releases/download/v7.11.0/mor-launch-linux-x86_64.zip",
    "http://127.0.0.1:8000/proxy-router", "http://localhost/r/proxy-router.tar.gz", "http://[::1]:9/proxy-router",
    "https://mirror.example.com/proxy-router?download=1",
]
BAD_URLS = [
    ("", "give the release's URL"),
    ("ftp://example.com/proxy-router", "must start with https://"),
    ("http://downloads.example.com/proxy-router", "must use https"),
    ("https://user:hunter2@example.com/proxy-router", "must not carry a user name or password"),
    ("https://tok@example.com/proxy-router", "must not carry a user name or password"),
    ("https://example.com/proxy-router?access_token=hunter2", "must not carry a token"),
    ("https://example.com/r.zip?X-Amz-Signature=abc", "must not carry a token"),
    ("https://example.com/", "must end with the release's file name"),
    ("https://example.com/a b", "spaces or control characters"),
    ("https://example.com:99999/proxy-router", "not a valid URL"),
    ("https://example.com/" + "a" * 2100, "longer than 2048"),
    ("https:///proxy-router", "name a host"),
]
GOOD_SHA = "ab" * 32
BAD_SHAS = ["", "ab" * 31, "ab" * 33, "zz" * 32, "0x" + "ab" * 31, 12]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_a_public_https_or_loopback_url_is_accepted_on_both_sides(url):
    assert release_url(url) == url
    form = ReleaseForm({"url": url, "sha256": GOOD_SHA.upper()})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["sha256"] == GOOD_SHA


@pytest.mark.parametrize("url, why", BAD_URLS)
def test_a_bad_url_is_refused_with_the_reason_on_both_sides(url, why):
    with pytest.raises(InvalidValue, match=re.escape(why)):
        release_url(url)
    form = ReleaseForm({"url": url, "sha256": GOOD_SHA})
    assert not form.is_valid()
    if len(url) <= routerrelease.URL_MAX and url:
        assert why in form.errors["url"][0]


@pytest.mark.parametrize("digest", BAD_SHAS)
def test_a_digest_that_is_not_64_hex_is_refused_on_both_sides(digest):
    with pytest.raises(InvalidValue, match="exactly 64 hexadecimal digits"):
        release_sha256(digest)
    form = ReleaseForm({"url": GOOD_URLS[0], "sha256": digest})
    assert not form.is_valid() and "sha256" in form.errors


def test_the_rig_refuses_bad_input_before_fetching_anything(server, tmp_path):
    with pytest.raises(InvalidValue):
        install(server.url("/proxy-router").replace("http://", "http://u:p@"), sha(BODY), tmp_path)
    with pytest.raises(InvalidValue):
        install(server.url("/proxy-router"), "nope", tmp_path)
    assert server.hits == {} and leftovers(tmp_path) == []


# --- the rig: download, check, unpack --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/proxy-router", "/mor-launch-linux-x86_64.zip", "/release.tar.gz",
                                  "/permissions-only.zip"])
def test_each_release_shape_installs_the_binary_alone(server, tmp_path, path):
    digest = sha(server.files[path])
    seen = []
    result = install(server.url(path), digest, tmp_path, progress=seen.append)
    binary = tmp_path / "releases" / f"proxy-router-{digest[:12]}"
    assert result == {"binary": str(binary), "sha256": digest, "bytes": len(BODY), "already": False}
    assert binary.read_bytes() == BODY and stat.S_IMODE(binary.stat().st_mode) == 0o755
    assert leftovers(tmp_path) == [f".proxy-router-{digest[:12]}.json", f"proxy-router-{digest[:12]}"]
    assert seen and seen[0]["unit"] == "B"


def test_the_same_release_again_is_a_quick_success_and_a_damaged_copy_is_fetched_again(server, tmp_path):
    digest = sha(server.files["/release.tar.gz"])
    first = install(server.url("/release.tar.gz"), digest, tmp_path)
    again = install(server.url("/release.tar.gz"), digest.upper(), tmp_path)
    assert again == {**first, "already": True} and server.hits["/release.tar.gz"] == 1
    with open(first["binary"], "ab") as fh:
        fh.write(b"tampered")
    assert install(server.url("/release.tar.gz"), digest, tmp_path)["already"] is False
    assert server.hits["/release.tar.gz"] == 2 and open(first["binary"], "rb").read() == BODY


@pytest.mark.parametrize("path, why", [
    ("/traversal.zip", "an entry with an unsafe path ('../proxy-router')"),
    ("/link.zip", "is not a plain file (a link or a folder)"),
    ("/link.tar.gz", "is not a plain file (a link or a folder)"),
    ("/twice.zip", "2 files named proxy-router"),
    ("/empty-handed.zip", "no file named proxy-router (it has: mor-launch/README.md)"),
    ("/blank", "an empty file"),
])
def test_an_archive_that_is_unsafe_or_has_no_single_binary_is_refused_and_nothing_is_left(server, tmp_path, path,
                                                                                          why):
    with pytest.raises(ReleaseError, match=re.escape(why)):
        install(server.url(path), sha(server.files[path]), tmp_path)
    assert leftovers(tmp_path) == []


def test_a_wrong_digest_is_a_mismatch_and_nothing_is_installed(server, tmp_path):
    wrong = sha(b"something else")
    with pytest.raises(ReleaseError) as caught:
        install(server.url("/mor-launch-linux-x86_64.zip"), wrong, tmp_path)
    actual = sha(server.files["/mor-launch-linux-x86_64.zip"])
    assert str(caught.value).startswith(f"sha256 mismatch: expected {wrong} got {actual}")
    assert leftovers(tmp_path) == []


def test_a_truncated_download_fails_and_leaves_nothing(server, tmp_path):
    with pytest.raises(ReleaseError, match="ended early"):
        install(server.url("/short/proxy-router"), sha(BODY), tmp_path)
    assert leftovers(tmp_path) == []


def test_an_oversized_release_or_binary_is_refused_and_leaves_nothing(server, tmp_path):
    with pytest.raises(ReleaseError, match="more than the 1.0 KB a proxy-router release may be"):
        install(server.url("/proxy-router"), sha(BODY), tmp_path, max_bytes=1024)
    digest = sha(server.files["/release.tar.gz"])
    with pytest.raises(ReleaseError, match="proxy-router in the archive is 2.9 KB, more than 1.0 KB"):
        install(server.url("/release.tar.gz"), digest, tmp_path, max_binary_bytes=1024)
    assert leftovers(tmp_path) == []


def test_a_missing_file_or_a_redirect_to_plain_http_is_a_clear_failure(server, tmp_path):
    with pytest.raises(ReleaseError, match="the server answered HTTP 404 for nothing-here"):
        install(server.url("/nothing-here"), sha(BODY), tmp_path)
    with pytest.raises(ReleaseError, match="redirected the download to a http:// address that is not https"):
        install(server.url("/away"), sha(BODY), tmp_path)
    assert leftovers(tmp_path) == []


def test_a_router_folder_the_agent_cannot_write_is_a_clear_failure(server, tmp_path):
    (tmp_path / "releases").write_text("a file where the folder should be")
    with pytest.raises(ReleaseError, match="could not install the release in"):
        install(server.url("/proxy-router"), sha(BODY), tmp_path)
    assert server.hits == {}


def test_a_cancelled_install_stops_and_leaves_nothing(server, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(routerrelease.ReleaseCancelled):
        install(server.url("/proxy-router"), sha(BODY), tmp_path, cancel=cancel)
    assert leftovers(tmp_path) == []


# --- the panel --------------------------------------------------------------------------------------------------------
RELEASE = GOOD_URLS[0]


@pytest.fixture
def alpha(db):
    return make_node("alpha")


def sent_installs(node):
    return [m for m in queued_messages(node.queue) if m.task == protocol.AGENT_ROUTER_INSTALL]


def test_who_may_see_and_install(viewer_client, alpha):
    node, _ = alpha
    response = Client().get("/rigs/alpha/marketplace/install/")
    assert response.status_code == 302 and "/login/" in response["Location"]
    text = page(viewer_client.get("/rigs/alpha/marketplace/"))
    assert "Install a release" in text and 'id="install-form"' not in text
    assert viewer_client.post("/rigs/alpha/marketplace/install/", {"url": RELEASE, "sha256": GOOD_SHA}).status_code == 403
    assert not Operation.objects.exists() and sent_installs(node) == []


def test_an_operator_installs_a_release_and_the_rig_gets_the_url_and_digest(operator_client, alpha,
                                                                              django_capture_on_commit_callbacks):
    node, _ = alpha
    assert 'id="install-form"' in page(operator_client.get("/rigs/alpha/marketplace/"))
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/marketplace/install/", {"url": RELEASE, "sha256": GOOD_SHA.upper()})
    assert response.status_code == 302 and response["Location"] == "/rigs/alpha/marketplace/"
    operation = Operation.objects.get(kind=Operation.ROUTER_INSTALL)
    assert operation.target == "mor-launch-linux-x86_64.zip" and operation.is_cancellable
    [message] = sent_installs(node)
    assert message.args == [operation.pk] and message.kwargs == {"url": RELEASE, "sha256": GOOD_SHA}


def test_installing_new_code_asks_for_the_password_again(client, operator, alpha):
    client.force_login(operator)
    response = client.post("/rigs/alpha/marketplace/install/", {"url": RELEASE, "sha256": GOOD_SHA})
    assert response.status_code == 403 and "Confirm your password" in page(response)
    assert not Operation.objects.exists()


def test_bad_input_comes_back_with_the_reason_and_the_values_without_the_password(operator_client, alpha):
    url = "https://user:hunter2@example.com/releases/proxy-router"
    response = operator_client.post("/rigs/alpha/marketplace/install/", {"url": url, "sha256": "abc"})
    text = page(response)
    assert response.status_code == 400
    assert "must not carry a user name or password" in text and "exactly 64 hexadecimal digits" in text
    assert 'value="https://example.com/releases/proxy-router"' in text and 'value="abc"' in text
    assert "hunter2" not in text and not Operation.objects.exists()


def _finish(node_name, token, operation, status, message, result=None):
    assert report(node_name, token, protocol.OPERATION, {"operation": operation.pk, "status": status,
                                                          "message": message, "result": result or {}}) is None


def test_recent_installs_show_their_outcome_and_a_good_one_can_be_started(operator_client, alpha):
    node, token = alpha
    digest = sha(b"release")
    good = Operation.objects.create(node=node, kind=Operation.ROUTER_INSTALL, target="mor-launch.zip")
    binary = f"/var/lib/morpheus/proxy-router/releases/proxy-router-{digest[:12]}"
    _finish("alpha", token, good, "succeeded", f"installed: {binary}",
            {"binary": binary, "sha256": digest, "bytes": 10, "already": False})
    bad = Operation.objects.create(node=node, kind=Operation.ROUTER_INSTALL, target="other.zip")
    _finish("alpha", token, bad, "failed", f"sha256 mismatch: expected {digest} got {GOOD_SHA}")
    forged = Operation.objects.create(node=node, kind=Operation.ROUTER_INSTALL, target="forged.zip")
    _finish("alpha", token, forged, "succeeded", "installed", {"binary": "/bin/sh", "sha256": digest})
    text = page(operator_client.get("/rigs/alpha/marketplace/"))
    assert "sha256 mismatch: expected" in text and f'<span class="install-binary">{binary}</span>' in text
    starts = re.findall(r'<form method="post" action="/rigs/alpha/marketplace/" class="inline install-start">(.*?)</form>',
                        text, re.S)
    assert len(starts) == 1 and f'name="binary" value="{binary}"' in starts[0]
    assert 'name="proxy_port" value="3333"' in starts[0] and "Start the router with it" in starts[0]
    assert '<select name="network"' in starts[0]  # no router yet: the provider picks the network
    assert "/bin/sh" not in text  # a report that does not hold together offers nothing to run

    # Once it runs that binary, the row says so; a router running another binary offers a restart (confirmed).
    Router.objects.create(node=node, binary_path=binary, state="healthy", network="testnet", proxy_port=4444)
    assert "install-start" not in page(operator_client.get("/rigs/alpha/marketplace/"))
    Router.objects.filter(node=node).update(binary_path="/opt/old/proxy-router")
    text = page(operator_client.get("/rigs/alpha/marketplace/"))
    assert "Restart the router with it" in text and 'name="network" value="testnet"' in text
    assert 'name="proxy_port" value="4444"' in text
    response = operator_client.post("/rigs/alpha/marketplace/", {"binary": binary, "network": "testnet",
                                                                 "proxy_port": 4444, "web_port": 8082})
    assert response.status_code == 200 and "Tick the box to go ahead" in page(response)
    assert not Operation.objects.filter(kind=Operation.ROUTER_APPLY).exists()


# --- end to end: a release served on loopback, installed by a real agent, then run as the rig's router ---------------
def _start_fields(text):
    [form] = re.findall(r'class="inline install-start">(.*?)</form>', text, re.S)
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form))


@pytest.mark.integration
def test_a_release_installed_through_the_panel_runs_as_the_rigs_router(rigs, operator_client, redis_url, tmp_path):
    from tests import test_router_channel as channel
    from tests.helpers import free_port
    from tests.test_integration_serving import BrokerWatch

    node, token = make_node("alpha")
    router_dir, hooks = tmp_path / "router", tmp_path / "hooks.json"
    channel._provider_env(router_dir, hooks)
    old = channel._router_binary(tmp_path / "bin")
    script = old.read_bytes()  # the release's binary: a script that execs the router stand-in
    release = zipped([("mor-launch/", b"", 0o40755), ("mor-launch/proxy-router", script, 0o100755)])
    big = os.urandom(400 * 1024)
    served = ReleaseServer({"/mor-launch-linux-x86_64.zip": release, "/big/proxy-router": big})
    rigs.start("alpha", token, extra_env={"MORPHEUS_AGENT_ROUTER_DIR": str(router_dir)})
    broker = BrokerWatch(redis_url)
    pages = []
    try:
        # The provider already runs a router; the new release replaces it.
        form = {"binary": str(old), "network": "testnet", "proxy_port": free_port(), "web_port": free_port()}
        assert operator_client.post("/rigs/alpha/marketplace/", form).status_code == 302
        first = channel._finished(Operation.objects.get(kind=Operation.ROUTER_APPLY))
        assert first.status == Operation.SUCCEEDED, first.message
        old_pid = channel._snapshot(lambda s, r: r.state == "healthy" and s.get("wallet"),
                                    "the old router healthy").snapshot["pid"]

        url = served.url("/mor-launch-linux-x86_64.zip")
        response = operator_client.post("/rigs/alpha/marketplace/install/", {"url": url, "sha256": sha(release)})
        assert response.status_code == 302, page(response)[-2000:]
        op = channel._finished(Operation.objects.get(kind=Operation.ROUTER_INSTALL))
        binary = router_dir / "releases" / f"proxy-router-{sha(release)[:12]}"
        assert op.status == Operation.SUCCEEDED, op.message
        assert op.result["binary"] == str(binary) and op.result["sha256"] == sha(release)
        assert str(binary) in op.message and binary.read_bytes() == script
        assert op.target == "mor-launch-linux-x86_64.zip" and op.progress_done == len(script)

        text = page(operator_client.get("/rigs/alpha/marketplace/"))
        pages.append(text)
        fields = _start_fields(text)
        assert fields["binary"] == str(binary)
        asked = operator_client.post("/rigs/alpha/marketplace/", fields)
        pages.append(page(asked))
        assert asked.status_code == 200 and "Tick the box to go ahead" in page(asked)
        assert operator_client.post("/rigs/alpha/marketplace/", {**fields, "confirm_restart": "on"}).status_code == 302
        second = channel._finished(Operation.objects.filter(kind=Operation.ROUTER_APPLY).order_by("-pk").first())
        assert second.status == Operation.SUCCEEDED and "healthy" in second.message, second.message
        router = channel._snapshot(lambda s, r: r.state == "healthy" and s.get("binary") == str(binary)
                                   and s.get("wallet"), "the router healthy on the installed binary")
        assert router.binary_path == str(binary) and router.snapshot["pid"] != old_pid
        state = json.loads((tmp_path / "alpha" / "data" / "state" / "router" / "state.json").read_text())
        assert state["argv"] == [str(binary)] and state["pid"] == router.snapshot["pid"]
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)  # the old binary let go of its ports before the new one started
        text = page(operator_client.get("/rigs/alpha/marketplace/"))
        pages.append(text)
        assert "install-start" not in text  # it runs that binary now

        # The same release again: a quick success, nothing fetched.
        assert operator_client.post("/rigs/alpha/marketplace/install/",
                                    {"url": url, "sha256": sha(release)}).status_code == 302
        again = channel._finished(Operation.objects.filter(kind=Operation.ROUTER_INSTALL).order_by("-pk").first())
        assert again.status == Operation.SUCCEEDED and again.message.startswith("already installed")
        assert served.hits == {"/mor-launch-linux-x86_64.zip": 1}

        # A slow download shows its progress and stops when cancelled, leaving nothing behind.
        response = operator_client.post("/rigs/alpha/marketplace/install/",
                                        {"url": served.url("/slow/big/proxy-router"), "sha256": sha(big)})
        assert response.status_code == 302
        slow = Operation.objects.filter(kind=Operation.ROUTER_INSTALL).order_by("-pk").first()
        wait_until(lambda: (Operation.objects.get(pk=slow.pk).progress_done or 0) > 0, timeout=30,
                   message="progress from the slow download")
        assert Operation.objects.get(pk=slow.pk).progress_total == len(big)
        assert operator_client.post(f"/operations/{slow.pk}/cancel/").status_code == 302
        slow = channel._finished(slow)
        assert slow.status == Operation.CANCELLED and "cancelled by the provider" in slow.message
        assert sorted(p.name for p in (router_dir / "releases").iterdir()) == sorted(
            [binary.name, f".{binary.name}.json"])
    finally:
        broker.close()
        served.close()
        channel._stop_router(tmp_path / "alpha" / "data" / "state" / "router" / "state.json")

    assert_no_secret(seen_by_the_panel(pages, broker, rigs.logs()),
                     channel.WALLET_KEY, channel.COOKIE_PASSWORD)
