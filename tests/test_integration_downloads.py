"""Downloads to real rig agents from the Hub stand-in, through the panel's views and the panel worker."""

import pytest

from models_catalog.models import CatalogModel, ModelFile, RigFile
from nodes.agent import gguf_facts
from nodes.models import Operation
from tests.helpers import make_node
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


def _download(client, model_file, *nodes):
    before = set(Operation.objects.filter(kind=Operation.DOWNLOAD_MODEL).values_list("pk", flat=True))
    response = client.post(f"/models/files/{model_file.pk}/download/", {"nodes": list(nodes)}, follow=True)
    new = Operation.objects.filter(kind=Operation.DOWNLOAD_MODEL).exclude(pk__in=before).order_by("node__name")
    return response, list(new)


def _finished(op, timeout=90):
    wait_until(lambda: _op(op.pk).is_terminal, timeout=timeout, message=f"operation {op.pk} to end")
    return _op(op.pk)


def test_it_resumes_after_the_connection_is_cut_mid_file(rigs, operator_client, model_on_hub, hub):
    node, token = make_node("alpha")
    rigs.start("alpha", token)
    served = hub.file("test-org/Tiny-GGUF", "tiny-Q8_0.gguf")
    served.cut_after = 20 * MiB
    _, [op] = _download(operator_client, model_on_hub, "alpha")
    op = _finished(op)
    assert op.status == Operation.SUCCEEDED, op.message
    assert served.requests[-1] == f"bytes={20 * MiB}-"  # the second request asked only for the rest
    assert served.served <= model_on_hub.size + 16 * MiB
    assert RigFile.objects.get(node=node).verified


def test_it_resumes_after_the_agent_is_killed_mid_file(rigs, operator_client, model_on_hub, hub):
    node, token = make_node("alpha")
    agent = rigs.start("alpha", token)
    served = hub.file("test-org/Tiny-GGUF", "tiny-Q8_0.gguf")
    served.rate = 16 * MiB
    _, [op] = _download(operator_client, model_on_hub, "alpha")
    wait_until(lambda: (_op(op.pk).progress_done or 0) >= 16 * MiB, timeout=60, message="16 MiB downloaded")
    agent.kill()  # SIGKILL to the agent's process group
    before_restart = served.served
    served.rate = None
    rigs.start("alpha", token)
    op = _finished(op)
    assert op.status == Operation.SUCCEEDED, op.message
    fetched_again = served.served - model_on_hub.size
    assert 0 <= fetched_again <= 16 * MiB, f"{fetched_again / MiB:.1f} MiB fetched again"
    assert before_restart >= 16 * MiB and op.result["resumed_from"] >= 16 * MiB - 2 * MiB
    assert RigFile.objects.get(node=node).verified
    assert "resum" in Operation.objects.get(pk=op.pk).message or op.result["resumed_from"] > 0


def test_it_fails_a_corrupt_download_and_keeps_it_not_ready(rigs, operator_client, model_on_hub, hub):
    node, token = make_node("alpha")
    rigs.start("alpha", token)
    hub.file("test-org/Tiny-GGUF", "tiny-Q8_0.gguf").corrupt = True
    _, [op] = _download(operator_client, model_on_hub, "alpha")
    op = _finished(op)
    assert op.status == Operation.FAILED
    assert "sha256 mismatch" in op.message
    assert not RigFile.objects.filter(node=node).exists()


def test_it_cancels_a_running_download_and_removes_the_partial_file(rigs, operator_client, model_on_hub, hub,
                                                                      tmp_path):
    node, token = make_node("alpha")
    rigs.start("alpha", token)
    hub.file("test-org/Tiny-GGUF", "tiny-Q8_0.gguf").rate = 8 * MiB
    _, [op] = _download(operator_client, model_on_hub, "alpha")
    wait_until(lambda: (_op(op.pk).progress_done or 0) > 0, timeout=60, message="download started")
    response = operator_client.post(f"/operations/{op.pk}/cancel/")
    assert response.status_code == 302
    op = _finished(op)
    assert op.status == Operation.CANCELLED
    parts = list((tmp_path / "alpha" / "data" / "models").rglob("*.part"))
    assert parts == []
    assert not RigFile.objects.filter(node=node).exists()


def test_it_refuses_a_download_that_does_not_fit_on_the_rig_disk(rigs, operator_client, model_on_hub):
    node, token = make_node("alpha")
    # The agent checks for itself: a margin larger than any disk makes every download refuse.
    rigs.start("alpha", token, extra_env={"MORPHEUS_DOWNLOAD_DISK_MARGIN_MB": str(1 << 40)})
    _, [op] = _download(operator_client, model_on_hub, "alpha")
    op = _finished(op)
    assert op.status == Operation.FAILED
    assert "not enough disk space" in op.message


@pytest.mark.parametrize("repo_id, filename, revision, expected", [
    ("test-org/Missing-GGUF", "x.gguf", "main", "repository test-org/Missing-GGUF not found"),
    ("test-org/Tiny-GGUF", "absent-Q4_K_M.gguf", "main", "absent-Q4_K_M.gguf not found"),
    ("test-org/Tiny-GGUF", "tiny-Q8_0.gguf", "v9", "revision 'v9' not found"),
    ("test-org/Gated-GGUF", "tiny-Q8_0.gguf", "main", "gated or private: set a Hugging Face token"),
])
def test_it_explains_hub_errors_on_the_operation(rigs, operator_client, model_on_hub, hub, repo_id, filename,
                                                 revision, expected):
    hub.add_file("test-org/Gated-GGUF", "tiny-Q8_0.gguf", hub.file("test-org/Tiny-GGUF", "tiny-Q8_0.gguf").path)
    hub.add_repo("test-org/Gated-GGUF", gated=True)
    node, token = make_node("alpha")
    rigs.start("alpha", token)
    model, _ = CatalogModel.objects.update_or_create(repo_id=repo_id, defaults={"name": repo_id, "revision": revision})
    model_file, _ = ModelFile.objects.get_or_create(model=model, filename=filename)
    _, [op] = _download(operator_client, model_file, "alpha")
    op = _finished(op)
    assert op.status == Operation.FAILED
    assert expected in op.message
    assert not RigFile.objects.filter(node=node).exists()


def test_it_rejects_path_traversal_on_the_rig_even_from_a_forged_message(rigs, model_on_hub, hub):
    from nodes.agent import protocol
    from nodes.channel import send_command

    node, token = make_node("alpha")
    agent = rigs.start("alpha", token)
    op = Operation.objects.create(node=node, kind=Operation.DOWNLOAD_MODEL, target="x")
    # Signed as the panel signs (the rig checks the contents too, whoever signed them).
    send_command(node, protocol.AGENT_DOWNLOAD_MODEL, operation=op.pk,
                 args={"request": {"repo_id": "test-org/Tiny-GGUF", "files": [{"filename": "../../etc/evil.gguf"}],
                                   "endpoint": hub.url}})
    op = _finished(op)
    assert op.status == Operation.FAILED
    assert "not a safe file name" in op.message
    assert "Task agent.download_model" in agent.log()  # it ran on the rig and the rig refused it


def test_it_registers_gguf_files_already_on_the_rig_and_deletes_one_on_request(rigs, operator_client, tmp_path):
    seed_models = tmp_path / "llama.cpp" / "models"  # where the seed's manual procedure puts them
    seed_models.mkdir(parents=True)
    write_tiny_llama(seed_models / "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", chat_template="{{ bos_token }}")
    (seed_models / "notes.txt").write_text("not a model")
    node, token = make_node("alpha")
    rigs.start("alpha", token, extra_env={"MORPHEUS_AGENT_MODEL_DIRS": str(seed_models)})

    response = operator_client.post("/rigs/alpha/files/scan/")
    scan = _finished(Operation.objects.get(kind=Operation.SCAN_MODELS))
    assert response.status_code == 302 and scan.status == Operation.SUCCEEDED, scan.message
    rig_file = wait_until(lambda: RigFile.objects.filter(node=node).first(), timeout=30, message="scanned file")
    assert rig_file.path == str(seed_models / "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf")
    assert rig_file.facts["architecture"] == "llama" and rig_file.facts["has_chat_template"] is True
    assert rig_file.source == "scan" and not rig_file.verified
    page = operator_client.get("/rigs/alpha/files/").content.decode()
    assert "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf" in page

    confirm = operator_client.get(f"/rigs/alpha/files/{rig_file.pk}/delete/")
    assert "Delete from disk" in confirm.content.decode()
    operator_client.post(f"/rigs/alpha/files/{rig_file.pk}/delete/")
    delete = _finished(Operation.objects.get(kind=Operation.DELETE_MODEL_FILE))
    assert delete.status == Operation.SUCCEEDED, delete.message
    assert not (seed_models / "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf").exists()
    assert (seed_models / "notes.txt").exists()  # nothing else goes
    wait_until(lambda: not RigFile.objects.filter(node=node).exists(), timeout=30, message="row removed")
