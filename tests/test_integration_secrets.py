"""A full flow with secrets (a rig token, a Hub token for a gated repo, a llama-server API key), watched through
Redis MONITOR: no secret appears in clear in the broker's traffic, a log file, a page, or a database column."""

import html
import re
import threading
from pathlib import Path

import pytest
import redis
from django.apps import apps
from django.db import connection

from hosting.models import Deployment
from hosting.services import adopt_build
from models_catalog.models import CatalogModel, HubSettings, ModelFile, RigFile
from nodes.models import Operation
from tests import llama
from tests.gguf_model import write_tiny_llama
from tests.harness import cmdline, llama_servers_under, stop_llama_servers_under, wait_until
from morpheus_admin.localredis import free_port

pytestmark = pytest.mark.integration

HUB_TOKEN = "hf_Sealed_Hub_Token_0123456789"
API_KEY = "sk-sealed-api-key-0123456789"


class Monitor:
    """Every command Redis executes, as MONITOR shows it, collected on a thread."""

    def __init__(self, url):
        self.client = redis.Redis.from_url(url)
        self.lines, self._stop = [], threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with self.client.monitor() as monitor:
            self.ready.set()
            for command in monitor.listen():
                self.lines.append(command["command"])
                if self._stop.is_set():
                    return

    def __enter__(self):
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.client.ping()  # one more command wakes the listener
        self.thread.join(10)


def every_column_value():
    with connection.cursor() as cursor:
        for model in apps.get_models():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(model._meta.db_table)}")
            for row in cursor.fetchall():
                yield from (str(value) for value in row)


def _finished(op, timeout=90):
    wait_until(lambda: Operation.objects.get(pk=op.pk).is_terminal, timeout=timeout, message=f"{op.kind} to end")
    return Operation.objects.get(pk=op.pk)


@pytest.fixture
def gated_model(hub, tmp_path, settings):
    settings.HF_ENDPOINT = hub.url
    if hub.cdn is None:
        hub.start_cdn()
    path = write_tiny_llama(tmp_path / "gated.gguf")
    hub.add_file("test-org/Gated-Tiny", "gated-F32.gguf", path, via_cdn=True)
    hub.add_repo("test-org/Gated-Tiny", gated=True)
    model = CatalogModel.objects.create(repo_id="test-org/Gated-Tiny", name="Gated tiny")
    return ModelFile.objects.create(model=model, filename="gated-F32.gguf", size=path.stat().st_size, quant="F32")


def test_no_secret_travels_or_rests_in_clear_through_a_full_flow(rigs, operator, operator_client, redis_url, hub,
                                                                  gated_model, proc_dir, tmp_path):
    hub_token_before, hub.token = hub.token, HUB_TOKEN
    try:
        with Monitor(redis_url) as monitor:
            page = html.unescape(operator_client.post("/rigs/add/", {"name": "alpha", "notes": ""}).content.decode())
            node_token = re.search(r'MORPHEUS_NODE_TOKEN: "([^"]+)"', page).group(1)
            rigs.start("alpha", node_token, account=False,  # enrolment made its account
                       extra_env={"MORPHEUS_CCACHE_DIR": str(llama.CCACHE_DIR)})
            HubSettings.objects.update_or_create(pk=1, defaults={"token": HUB_TOKEN})

            operator_client.post(f"/models/files/{gated_model.pk}/download/", {"nodes": ["alpha"]})
            download = _finished(Operation.objects.get(kind=Operation.DOWNLOAD_MODEL))
            assert download.status == Operation.SUCCEEDED, download.message
            rig_file = wait_until(lambda: RigFile.objects.filter(node__name="alpha").first(), message="rig file")

            build = adopt_build(rig_file.node, operator, str(llama.server_binary()))
            assert _finished(build.operation).status == Operation.SUCCEEDED
            response = operator_client.post("/rigs/alpha/deployments/new/", llama.tiny_server_form(
                "tiny", rig_file, build, free_port(), api_key=API_KEY))
            assert response.status_code == 302, response.content.decode()[-2000:]
            deployment = Deployment.objects.get(name="tiny")
            launch = _finished(Operation.objects.get(kind=Operation.LAUNCH), timeout=60)
            assert launch.status == Operation.SUCCEEDED, launch.message
            pids = wait_until(lambda: llama_servers_under(Path(rig_file.path).parent), message="llama-server")
            server_environ = b"".join(Path(f"/proc/{pid}/environ").read_bytes() for pid in pids)
            server_cmdline = " ".join(cmdline(pid) for pid in pids)
    finally:
        hub.token = hub_token_before
        rigs.stop_all()
        stop_llama_servers_under(Path(rig_file.path).parent if "rig_file" in locals() else tmp_path)

    secrets = {"rig token": node_token, "Hub token": HUB_TOKEN, "API key": API_KEY}
    # The Hub saw the token; the CDN it redirected to did not.
    assert f"Bearer {HUB_TOKEN}" in hub.authorizations("hub")
    assert not any(hub.authorizations("cdn"))

    traffic = "\n".join(monitor.lines)
    assert "agent.download_model" in traffic and "agent.apply_deployment" in traffic  # it did watch the flow
    for label, secret in secrets.items():
        assert secret not in traffic, f"{label} seen in Redis traffic"

    logs = [path for folder in (proc_dir, tmp_path) for path in Path(folder).rglob("*.log")]
    assert any("agent-alpha" in path.name for path in logs)
    for path in logs:
        text = path.read_text(errors="replace")
        for label, secret in secrets.items():
            assert secret not in text, f"{label} in {path.name}"

    pages = ["/rigs/alpha/", f"/deployments/{deployment.pk}/", f"/rigs/alpha/deployments/{deployment.pk}/edit/",
             "/models/settings/", "/operations/"]
    pages += [f"/operations/{pk}/" for pk in Operation.objects.values_list("pk", flat=True)]
    for url in pages:
        body = operator_client.get(url).content.decode()
        for label, secret in secrets.items():
            assert secret not in body, f"{label} on {url}"

    stored = list(every_column_value())
    for label, secret in secrets.items():
        assert not any(secret in value for value in stored), f"{label} in a database column"

    # The server got its key from a file, and none of the agent's environment.
    assert "--api-key-file" in server_cmdline and API_KEY not in server_cmdline
    assert node_token.encode() not in server_environ and b"MORPHEUS_" not in server_environ
