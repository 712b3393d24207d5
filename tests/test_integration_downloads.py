"""Downloads to real rig agents from the Hub stand-in, through the panel's views and the panel worker."""

import pytest

from models_catalog.models import CatalogModel, ModelFile, RigFile
from nodes.agent import gguf_facts
from nodes.models import Operation
from tests.conftest import make_node
from tests.gguf_model import write_tiny_llama
from tests.harness import wait_until

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture
def model_on_hub(hub, tmp_path, settings):
    settings.HF_ENDPOINT = hub.url
    path = write_tiny_llama(tmp_path / "tiny.gguf", chat_template="{{ bos_token }}", pad_to=48 * MiB)
    hub.add_file("test-org/Tiny-GGUF", "tiny-Q8_0.gguf", path)
    hub.add_repo("test-org/Tiny-GGUF", downloads=42)
    model = CatalogModel.objects.create(repo_id="test-org/Tiny-GGUF", name="Tiny")
    return ModelFile.objects.create(model=model, filename="tiny-Q8_0.gguf", size=path.stat().st_size, quant="Q8_0")


def _op(pk):
    return Operation.objects.get(pk=pk)


def test_it_downloads_one_file_to_two_rigs_at_once_and_verifies_it(rigs, operator_client, model_on_hub, hub):
    alpha, alpha_token = make_node("alpha")
    beta, beta_token = make_node("beta")
    rigs.start("alpha", alpha_token)
    rigs.start("beta", beta_token)
    hub.file("test-org/Tiny-GGUF", "tiny-Q8_0.gguf").rate = 24 * MiB  # slow enough to watch it move

    response = operator_client.post(f"/models/files/{model_on_hub.pk}/download/", {"nodes": ["alpha", "beta"]})
    assert response.status_code == 302
    ops = list(Operation.objects.filter(kind=Operation.DOWNLOAD_MODEL).order_by("node__name"))
    assert [op.node.name for op in ops] == ["alpha", "beta"]

    # Progress arrives while it runs: bytes, a total, a rate.
    running = wait_until(lambda: [_op(op.pk) for op in ops if 0 < (_op(op.pk).progress_done or 0) < model_on_hub.size],
                         timeout=60, message="a download in progress")
    assert running[0].progress_total == model_on_hub.size and running[0].progress_rate > 0

    for op in ops:
        wait_until(lambda: _op(op.pk).is_terminal, timeout=90, message=f"download on {op.node.name} to end")
        assert _op(op.pk).status == Operation.SUCCEEDED, _op(op.pk).message
    files = wait_until(lambda: list(RigFile.objects.filter(model_file=model_on_hub).order_by("node__name")) or None,
                       timeout=30, message="rig files reported")
    assert [(f.node.name, f.verified, f.size) for f in files] == [
        ("alpha", True, model_on_hub.size), ("beta", True, model_on_hub.size)]
    assert files[0].sha256 == hub.file("test-org/Tiny-GGUF", "tiny-Q8_0.gguf").sha256

    # The facts read on the rig from the local file equal the ones read remotely over range requests.
    url = f"{hub.url}/test-org/Tiny-GGUF/resolve/main/tiny-Q8_0.gguf"
    remote = gguf_facts.read_remote(gguf_facts.http_fetcher(url), model_on_hub.size)
    local = files[0].facts
    for key in ("architecture", "parameters", "layers", "context_length", "embedding_length", "head_count",
                "head_count_kv", "file_type", "has_chat_template"):
        assert local[key] == remote[key], key

    # Asking again for a file that is there starts nothing.
    response = operator_client.post(f"/models/files/{model_on_hub.pk}/download/", {"nodes": ["alpha"]}, follow=True)
    assert "already has" in response.content.decode()
    assert Operation.objects.filter(kind=Operation.DOWNLOAD_MODEL).count() == 2
