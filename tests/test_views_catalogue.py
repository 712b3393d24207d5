"""The catalogue pages: curated models, Hub search, a repo's files, the token, downloads, cancel, rig files."""


import pytest

from models_catalog.models import CatalogModel, HubSettings, ModelFile, RigFile
from models_catalog.tasks import read_model_facts
from nodes.agent import envelope
from nodes.models import Operation
from tests.helpers import make_node, page, queued_messages, unsealed
from tests.gguf_model import write_tiny_llama
from tests.hubstub import Hub

pytestmark = pytest.mark.django_db

MiB = 1024 * 1024
GiB = 1024 * MiB
REPO = "test-org/Tiny-GGUF"
TOKEN = "hf_views_secret_token_77"
HTMX = {"HTTP_HX_REQUEST": "true"}



def drain(queue):
    """(task name, args, kwargs) of the messages waiting on `queue` in this process's memory:// broker."""
    return [(m.task, m.args, m.kwargs) for m in queued_messages(queue)]


@pytest.fixture(scope="module")
def _server(tmp_path_factory):
    server = Hub(token=TOKEN).start()
    folder = tmp_path_factory.mktemp("hub")
    model = write_tiny_llama(folder / "tiny.gguf", chat_template="{{ bos_token }}", pad_to=4 * MiB)
    blob = folder / "blob"
    blob.write_bytes(b"tensor data" * 100)
    server.add_file(REPO, "tiny-Q8_0.gguf", model)
    for part in (1, 2):
        server.add_file(REPO, f"big-Q4_K_M-0000{part}-of-00002.gguf", model if part == 1 else blob)
    server.add_file(REPO, "huge-Q2_K-00001-of-00003.gguf", blob)  # parts 2 and 3 missing
    server.add_file(REPO, "README.md", blob)
    server.add_repo(REPO, downloads=1234, likes=56)
    server.add_file("test-org/Gated-GGUF", "tiny-Q8_0.gguf", model)
    server.add_repo("test-org/Gated-GGUF", gated=True)
    server.add_file("test-org/Plain-Model", "model.safetensors", blob)
    server.add_repo("test-org/Plain-Model", tags=["transformers"])
    yield server
    server.stop()


@pytest.fixture
def stand_in(_server, settings):
    settings.HF_ENDPOINT = _server.url
    return _server


@pytest.fixture
def alpha():
    node, _token = make_node("alpha")
    drain(node.queue)
    yield node
    drain(node.queue)


@pytest.fixture
def beta():
    node, _token = make_node("beta")
    drain(node.queue)
    yield node
    drain(node.queue)


@pytest.fixture
def panel_queue():
    drain("panel")
    yield
    drain("panel")


@pytest.fixture
def tiny(stand_in):
    model = CatalogModel.objects.create(repo_id=REPO, name="Tiny")
    return ModelFile.objects.create(model=model, filename="tiny-Q8_0.gguf", quant="Q8_0",
                                    size=stand_in.file(REPO, "tiny-Q8_0.gguf").size)


# --- the curated catalogue ------------------------------------------------------------------------
def test_it_ships_the_seeds_models_in_the_catalogue(viewer_client):
    content = page(viewer_client.get("/models/"))
    for text in ("TinyLlama 1.1B Chat v1.0", "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
                 "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", "Hermes 3 Llama 3.1 8B", "Hermes-3-Llama-3.1-8B.Q8_0.gguf",
                 "(2 parts)"):
        assert text in content
    tinyllama = ModelFile.objects.get(model__repo_id="TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF")
    assert tinyllama.quant == "Q4_K_M" and tinyllama.model.curated
    assert ModelFile.objects.get(filename="Hermes-3-Llama-3.1-8B.Q8_0.gguf").quant == "Q8_0"
    assert CatalogModel.objects.filter(curated=True).count() >= 5


def test_it_offers_the_token_page_to_operators(operator_client):
    assert "/models/settings/" in page(operator_client.get("/models/"))


def test_it_hides_the_token_page_from_viewers(viewer_client):
    assert "/models/settings/" not in page(viewer_client.get("/models/"))


def test_it_sends_anonymous_visitors_to_the_login_page(client, tiny):
    for url in ("/models/", "/models/search/?q=tiny", f"/models/hub/{REPO}/", tiny.get_absolute_url(),
                "/models/settings/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), url


# --- search and a repo's files --------------------------------------------------------------------
def test_it_shows_search_results_with_gguf_repos_first(viewer_client, stand_in, tiny):
    content = page(viewer_client.get("/models/search/?q=test-org"))
    assert content.index("test-org/Tiny-GGUF") < content.index("test-org/Plain-Model")
    assert f'href="/models/hub/{REPO}/"' in content
    assert "1,234" in content and "in catalogue" in content and "gated" in content


def test_it_says_when_nothing_matches(viewer_client, stand_in):
    assert "Nothing matches “no-such-model”" in page(viewer_client.get("/models/search/?q=no-such-model"))


def test_it_shows_a_search_error_on_the_page(viewer_client, stand_in):
    response = viewer_client.get("/models/search/", {"q": "x" * 101})
    assert response.status_code == 200
    assert 'id="search-error">search text is too long' in page(response)


def test_it_lists_a_repos_gguf_files_with_add_buttons_for_operators(operator_client, stand_in):
    content = page(operator_client.get(f"/models/hub/{REPO}/"))
    assert "tiny-Q8_0.gguf" in content and "<td>Q8_0</td><td>4.0\xa0MB</td>" in content
    assert "big-Q4_K_M-00001-of-00002.gguf" in content and "+ 1 more part" in content
    assert "big-Q4_K_M-00002-of-00002.gguf" not in content and "README.md" not in content
    assert "parts missing" in content
    assert content.count("Add to catalogue</button>") == 3
    assert content.count("<button disabled>Add to catalogue") == 1  # the incomplete split model


def test_it_shows_a_viewer_a_repos_files_without_add_buttons(viewer_client, stand_in):
    content = page(viewer_client.get(f"/models/hub/{REPO}/"))
    assert "tiny-Q8_0.gguf" in content and "Add to catalogue" not in content


def test_it_marks_files_already_in_the_catalogue(operator_client, tiny):
    content = page(operator_client.get(f"/models/hub/{REPO}/"))
    assert content.count("Add to catalogue</button>") == 2 and "in catalogue" in content


@pytest.mark.parametrize("path, error", [
    ("test-org/Missing-GGUF", "repository test-org/Missing-GGUF not found"),
    ("test-org/Gated-GGUF", "test-org/Gated-GGUF is gated"),
    ("a/b/c", "is not a Hugging Face repo id"),
])
def test_it_explains_why_a_repo_cannot_be_listed(operator_client, stand_in, path, error):
    response = operator_client.get(f"/models/hub/{path}/")
    assert response.status_code == 200
    assert error in page(response) and "Add to catalogue" not in page(response)


# --- adding to the catalogue ---------------------------------------------------------------------
def test_it_adds_a_hub_file_to_the_catalogue_and_queues_reading_its_facts(
        operator_client, operator, stand_in, panel_queue, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/models/hub/add/", {"repo_id": REPO, "filename": "tiny-Q8_0.gguf"})
    model_file = ModelFile.objects.get(model__repo_id=REPO)
    assert response.status_code == 302 and response["Location"] == model_file.get_absolute_url()
    assert (model_file.size, model_file.quant, model_file.shards) == (4 * MiB, "Q8_0", [])
    assert (model_file.model.name, model_file.model.revision, model_file.model.added_by) == ("Tiny-GGUF", "main", operator)
    assert model_file.model.downloads == 1234 and not model_file.model.curated
    assert drain("panel") == [("panel.read_model_facts", [model_file.pk], {})]


def test_it_adds_a_split_model_with_all_its_parts(operator_client, stand_in, panel_queue):
    operator_client.post("/models/hub/add/", {"repo_id": REPO, "filename": "big-Q4_K_M-00001-of-00002.gguf"})
    model_file = ModelFile.objects.get(model__repo_id=REPO)
    assert [s["filename"] for s in model_file.shards] == [f"big-Q4_K_M-0000{i}-of-00002.gguf" for i in (1, 2)]
    assert model_file.size == 4 * MiB + 1100 and model_file.shard_count == 2


@pytest.mark.parametrize("filename, error, target", [
    ("../../etc/evil.gguf", "is not a safe file name", "/models/search/"),
    ("/etc/evil.gguf", "is not a file name inside the repository", "/models/search/"),
    ("README.md", "is not a GGUF file", "/models/search/"),
    ("absent-Q4_0.gguf", "absent-Q4_0.gguf is not a GGUF model in test-org/Tiny-GGUF at main", f"/models/hub/{REPO}/"),
])
def test_it_refuses_to_add_a_file_that_is_unsafe_or_not_there(operator_client, stand_in, panel_queue,
                                                               django_capture_on_commit_callbacks, filename, error, target):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/models/hub/add/", {"repo_id": REPO, "filename": filename})
    assert response.status_code == 302 and response["Location"] == target
    assert error in page(operator_client.get(target))
    assert not CatalogModel.objects.filter(repo_id=REPO).exists() and not ModelFile.objects.filter(filename=filename).exists()
    assert drain("panel") == []


def test_it_refuses_to_add_from_a_repo_the_hub_does_not_have(operator_client, stand_in, panel_queue):
    response = operator_client.post("/models/hub/add/", {"repo_id": "test-org/Missing-GGUF", "filename": "x.gguf"},
                                    follow=True)
    assert "repository test-org/Missing-GGUF not found" in page(response)
    assert not CatalogModel.objects.filter(repo_id="test-org/Missing-GGUF").exists()


def test_it_refuses_a_viewers_add_to_catalogue(viewer_client, stand_in, panel_queue):
    response = viewer_client.post("/models/hub/add/", {"repo_id": REPO, "filename": "tiny-Q8_0.gguf"})
    assert response.status_code == 403
    assert not CatalogModel.objects.filter(repo_id=REPO).exists() and drain("panel") == []


# --- model facts (the panel task, called directly) ------------------------------------------------
def test_it_stores_the_facts_size_and_parts_read_from_the_hub(stand_in, tiny, operator_client):
    model_file = ModelFile.objects.create(model=tiny.model, filename="big-Q4_K_M-00001-of-00002.gguf")
    assert read_model_facts(model_file.pk) == "ok"
    model_file.refresh_from_db()
    assert model_file.facts["architecture"] == "llama" and model_file.facts["has_chat_template"] is True
    assert model_file.facts["header_fetched"] < 4 * MiB
    assert model_file.size == 4 * MiB + 1100 and len(model_file.shards) == 2 and model_file.facts_at
    assert model_file.facts_error == ""

    content = page(operator_client.get(model_file.get_absolute_url()))
    assert 'id="facts"' in content and "llama" in content and "fetched of part 1 (4.0\xa0MB)" in content
    assert operator_client.get(model_file.get_absolute_url(), **HTMX).status_code == 286  # nothing left to poll


def test_it_stores_why_the_facts_could_not_be_read(stand_in, operator_client):
    model = CatalogModel.objects.create(repo_id="test-org/Gated-GGUF", name="Gated")
    model_file = ModelFile.objects.create(model=model, filename="tiny-Q8_0.gguf")
    assert "is gated" in read_model_facts(model_file.pk)
    model_file.refresh_from_db()
    assert "is gated" in model_file.facts_error and model_file.facts == {} and model_file.facts_at
    assert "is gated" in page(operator_client.get(model_file.get_absolute_url()))


def test_it_says_when_a_catalogued_file_left_the_repo(stand_in, tiny):
    gone = ModelFile.objects.create(model=tiny.model, filename="removed-Q4_0.gguf")
    read_model_facts(gone.pk)
    gone.refresh_from_db()
    assert gone.facts_error == f"removed-Q4_0.gguf is not in {REPO} at main"


def test_it_ignores_facts_for_a_file_removed_from_the_catalogue(stand_in):
    assert read_model_facts(10**9) == "gone"


def test_it_keeps_polling_the_file_page_until_the_facts_are_read(operator_client, tiny):
    assert operator_client.get(tiny.get_absolute_url(), **HTMX).status_code == 200
    assert "Reading the GGUF header" in page(operator_client.get(tiny.get_absolute_url()))


def test_it_refuses_a_viewers_request_to_read_the_facts_again(viewer_client, tiny, panel_queue):
    assert viewer_client.post(f"/models/files/{tiny.pk}/facts/").status_code == 403
    assert drain("panel") == []


def test_it_reads_the_facts_again_on_request(operator_client, tiny, panel_queue, django_capture_on_commit_callbacks):
    ModelFile.objects.filter(pk=tiny.pk).update(facts_at="2026-01-01T00:00:00Z")
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post(f"/models/files/{tiny.pk}/facts/")
    tiny.refresh_from_db()
    assert tiny.facts_at is None
    assert drain("panel") == [("panel.read_model_facts", [tiny.pk], {})]


# --- the Hugging Face token -----------------------------------------------------------------------
def test_it_saves_the_token_and_never_shows_it_back(operator_client, operator):
    response = operator_client.post("/models/settings/", {"token": TOKEN})
    assert response.status_code == 302
    assert HubSettings.token_value() == TOKEN and HubSettings.current().updated_by == operator
    response = operator_client.get("/models/settings/")
    content = page(response)
    assert "A token is set." in content and TOKEN not in content
    assert TOKEN not in repr(HubSettings.current()) and TOKEN not in str(response.context["form"]["token"])


def test_it_does_not_echo_a_rejected_token(operator_client):
    rejected = "hf_not a token"
    response = operator_client.post("/models/settings/", {"token": rejected})
    assert response.status_code == 200
    content = page(response)
    assert "does not look like a Hugging Face token" in content and rejected not in content
    assert HubSettings.token_value() is None


def test_it_removes_the_token_on_request(operator_client):
    HubSettings.objects.create(token=TOKEN)
    operator_client.post("/models/settings/", {"clear": "on"})
    assert HubSettings.token_value() is None
    assert "No token is set." in page(operator_client.get("/models/settings/"))


def test_it_keeps_a_set_token_on_a_blank_save_without_showing_it(operator_client):
    HubSettings.objects.create(token=TOKEN)
    content = page(operator_client.get("/models/settings/"))
    assert "set — leave blank to keep" in content and "Remove the token" in content and TOKEN not in content
    assert operator_client.post("/models/settings/", {"token": ""}).status_code == 302
    assert HubSettings.token_value() == TOKEN
    response = operator_client.post("/models/settings/", {"token": "hf_another_token_123", "clear": "on"})
    assert "Type a new token or remove it, not both." in page(response)
    assert HubSettings.token_value() == TOKEN


def test_it_offers_no_remove_box_when_no_token_is_set(operator_client):
    content = page(operator_client.get("/models/settings/"))
    assert "No token is set." in content and "Remove the token" not in content
    assert "leave blank to keep" not in content


def test_it_keeps_the_token_page_from_viewers(viewer_client):
    HubSettings.objects.create(token=TOKEN)
    assert viewer_client.get("/models/settings/").status_code == 403
    assert viewer_client.post("/models/settings/", {"clear": "on"}).status_code == 403
    assert HubSettings.token_value() == TOKEN


# --- downloads to rigs -----------------------------------------------------------------------------
def test_it_starts_one_download_per_rig_chosen(operator_client, operator, tiny, alpha, beta, stand_in,
                                              django_capture_on_commit_callbacks, caplog):
    HubSettings.objects.create(token=TOKEN)
    with caplog.at_level("DEBUG"), django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/models/files/{tiny.pk}/download/", {"nodes": ["alpha", "beta"]})
    assert response.status_code == 302 and response["Location"] == tiny.get_absolute_url()
    ops = list(Operation.objects.filter(kind=Operation.DOWNLOAD_MODEL).order_by("node__name"))
    assert [(op.node.name, op.status, op.target, op.requested_by) for op in ops] == [
        ("alpha", "queued", f"{REPO}:tiny-Q8_0.gguf", operator), ("beta", "queued", f"{REPO}:tiny-Q8_0.gguf", operator)]
    for node, op in ((alpha, ops[0]), (beta, ops[1])):
        [(task, args, kwargs)] = drain(node.queue)
        assert (task, args, kwargs["model_file"]) == ("agent.download_model", [op.pk], tiny.pk)
        assert unsealed(node, kwargs["request"]) == {
            "repo_id": REPO, "revision": "main", "endpoint": stand_in.url, "token": TOKEN,
            "files": [{"filename": "tiny-Q8_0.gguf", "size": 4 * MiB, "sha256": None}]}
        # On the queue the token is sealed for that one rig: readable by no other.
        assert TOKEN not in str(kwargs) and set(kwargs["request"]["token"]) == {"$sealed"}
        with pytest.raises(envelope.EnvelopeRejected):
            unsealed(beta if node is alpha else alpha, kwargs["request"])
        assert TOKEN not in f"{op.target} {op.message} {op.result} {op.log_tail}"  # the row keeps no token
    assert TOKEN not in caplog.text
    content = page(operator_client.get(tiny.get_absolute_url()))
    assert "Download started on alpha, beta." in content
    assert 'data-node="alpha" data-status="queued"' in content and 'data-node="beta" data-status="queued"' in content


def _refuse_because_on_rig(tiny, alpha):
    RigFile.objects.create(node=alpha, model_file=tiny, path="/var/lib/morpheus-agent/models/x/tiny-Q8_0.gguf",
                           size=tiny.size)
    return "alpha already has tiny-Q8_0.gguf"


def _refuse_because_downloading(tiny, alpha):
    op = Operation.objects.create(node=alpha, kind=Operation.DOWNLOAD_MODEL, target=tiny.target,
                                  status=Operation.RUNNING)
    return f"alpha is already downloading tiny-Q8_0.gguf (operation {op.pk})"


def _refuse_because_disk(tiny, alpha):
    ModelFile.objects.filter(pk=tiny.pk).update(size=5 * GiB)
    alpha.host_reading = {"disk_free": 5 * GiB + 512 * MiB}
    alpha.save(update_fields=["host_reading"])
    return "alpha has 5.5\xa0GB free; tiny-Q8_0.gguf needs 5.0\xa0GB plus a 1.0\xa0GB margin"


@pytest.mark.parametrize("setup", [_refuse_because_on_rig, _refuse_because_downloading, _refuse_because_disk])
def test_it_refuses_a_download_that_would_waste_the_rigs_time(operator_client, tiny, alpha, beta, setup,
                                                               django_capture_on_commit_callbacks):
    reason = setup(tiny, alpha)
    before = Operation.objects.count()
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/models/files/{tiny.pk}/download/", {"nodes": ["alpha", "beta"]}, follow=True)
    content = page(response)
    assert f"Not started: {reason}." in content
    assert "Download started on beta." in content  # the other rig is not held back
    assert Operation.objects.count() == before + 1 and drain(alpha.queue) == []
    assert [task for task, _args, _kwargs in drain(beta.queue)] == ["agent.download_model"]


def test_it_asks_for_at_least_one_rig(operator_client, tiny, alpha):
    for data in ({}, {"nodes": ["no-such-rig"]}):
        response = operator_client.post(f"/models/files/{tiny.pk}/download/", data, follow=True)
        assert "Choose at least one rig." in page(response)
    assert not Operation.objects.filter(kind=Operation.DOWNLOAD_MODEL).exists()


def test_it_refuses_a_viewers_download(viewer_client, tiny, alpha, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = viewer_client.post(f"/models/files/{tiny.pk}/download/", {"nodes": ["alpha"]})
    assert response.status_code == 403
    assert not Operation.objects.exists() and drain(alpha.queue) == []
    assert 'id="download-form"' not in page(viewer_client.get(tiny.get_absolute_url()))


# --- cancel -----------------------------------------------------------------------------------------
def _download_op(node, tiny, status):
    return Operation.objects.create(node=node, kind=Operation.DOWNLOAD_MODEL, target=tiny.target, status=status)


def test_it_cancels_a_queued_download_at_once(operator_client, tiny, alpha, django_capture_on_commit_callbacks):
    op = _download_op(alpha, tiny, Operation.QUEUED)
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/operations/{op.pk}/cancel/", follow=True)
    op.refresh_from_db()
    assert (op.status, op.message) == (Operation.CANCELLED, "cancelled before the rig started it") and op.finished
    assert "Cancelled." in page(response)


def test_it_asks_the_rig_to_stop_a_running_download(operator_client, tiny, alpha, django_capture_on_commit_callbacks):
    op = _download_op(alpha, tiny, Operation.RUNNING)
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/operations/{op.pk}/cancel/", follow=True)
    op.refresh_from_db()
    assert op.status == Operation.RUNNING  # until the rig says it stopped
    assert drain(alpha.queue) == [("agent.cancel", [op.pk], {})]
    assert "Cancel sent to the rig." in page(response)


@pytest.mark.parametrize("status", [Operation.SUCCEEDED, Operation.FAILED, Operation.CANCELLED])
def test_it_refuses_to_cancel_a_finished_download(operator_client, tiny, alpha, status,
                                                  django_capture_on_commit_callbacks):
    op = _download_op(alpha, tiny, status)
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/operations/{op.pk}/cancel/", follow=True)
    assert f"Operation {op.pk} cannot be cancelled ({status})." in page(response)
    op.refresh_from_db()
    assert op.status == status and drain(alpha.queue) == []


def test_it_refuses_a_viewers_cancel(viewer_client, tiny, alpha, django_capture_on_commit_callbacks):
    op = _download_op(alpha, tiny, Operation.RUNNING)
    with django_capture_on_commit_callbacks(execute=True):
        assert viewer_client.post(f"/operations/{op.pk}/cancel/").status_code == 403
    op.refresh_from_db()
    assert op.status == Operation.RUNNING and drain(alpha.queue) == []


# --- files on a rig -----------------------------------------------------------------------------------
@pytest.fixture
def rig_file(alpha, tiny):
    return RigFile.objects.create(node=alpha, model_file=tiny, verified=True, size=4 * MiB, sha256="c" * 64,
                                  path="/var/lib/morpheus-agent/models/test-org__Tiny-GGUF/tiny-Q8_0.gguf")


def test_it_lists_the_model_files_on_a_rig(viewer_client, rig_file, alpha):
    RigFile.objects.create(node=alpha, path="/home/p/llama.cpp/models/seed.gguf", size=MiB, source="scan",
                           facts={"architecture": "llama", "file_type": "Q4_K_M"})
    content = page(viewer_client.get("/rigs/alpha/files/"))
    assert rig_file.path in content and "sha256 ok" in content and "Tiny" in content
    assert "/home/p/llama.cpp/models/seed.gguf" in content and "llama · Q4_K_M" in content
    assert "Scan models folder" not in content and "delete…" not in content  # a viewer only looks


def test_it_scans_a_rigs_models_folder_on_request(operator_client, operator, alpha, django_capture_on_commit_callbacks):
    assert "Scan models folder" in page(operator_client.get("/rigs/alpha/files/"))
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/files/scan/")
    op = Operation.objects.get(kind=Operation.SCAN_MODELS)
    assert response["Location"] == op.get_absolute_url() and (op.node, op.requested_by) == (alpha, operator)
    assert drain(alpha.queue) == [("agent.scan_models", [op.pk], {})]


def test_it_asks_before_deleting_a_file_from_a_rig(operator_client, rig_file, alpha):
    response = operator_client.get(f"/rigs/alpha/files/{rig_file.pk}/delete/")
    content = page(response)
    assert "Delete tiny-Q8_0.gguf from alpha?" in content and "Delete from disk" in content
    assert not Operation.objects.exists() and RigFile.objects.filter(pk=rig_file.pk).exists()


def test_it_deletes_a_file_from_a_rig_through_an_operation(operator_client, rig_file, alpha,
                                                           django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/rigs/alpha/files/{rig_file.pk}/delete/")
    op = Operation.objects.get(kind=Operation.DELETE_MODEL_FILE)
    assert response["Location"] == op.get_absolute_url() and op.target == rig_file.path
    assert drain(alpha.queue) == [("agent.delete_model_file", [op.pk], {"path": rig_file.path})]
    assert RigFile.objects.filter(pk=rig_file.pk).exists()  # gone only when the rig reports it gone


def test_it_answers_404_for_a_file_of_another_rig(operator_client, rig_file, beta):
    assert operator_client.get(f"/rigs/beta/files/{rig_file.pk}/delete/").status_code == 404
    assert operator_client.post(f"/rigs/beta/files/{rig_file.pk}/delete/").status_code == 404
    assert not Operation.objects.exists()


def test_it_refuses_a_viewers_scan_and_delete(viewer_client, rig_file, alpha, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        assert viewer_client.post("/rigs/alpha/files/scan/").status_code == 403
        assert viewer_client.get(f"/rigs/alpha/files/{rig_file.pk}/delete/").status_code == 403
        assert viewer_client.post(f"/rigs/alpha/files/{rig_file.pk}/delete/").status_code == 403
    assert not Operation.objects.exists() and drain(alpha.queue) == []
