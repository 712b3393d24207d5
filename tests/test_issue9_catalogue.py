"""Issue 9's rough edges: header facts in the lists, what the header read fetched, human byte units, download
progress that follows bytes, the delete page of a file a deployment uses, curated files' sizes."""

import re
import time
from itertools import count
from types import SimpleNamespace

import pytest

from hosting.models import Build, Deployment
from models_catalog.models import CatalogModel, ModelFile, RigFile
from models_catalog.tasks import read_model_facts
from nodes.agent import protocol
from nodes.agent.downloader import Downloader, DownloadRequest, human_size
from nodes.agent.tasks import models as model_tasks
from tests.gguf_model import write_tiny_llama
from tests.helpers import make_node, page, queued_messages
from tests.hubstub import Hub

MiB = 1024 * 1024
REPO = "test-org/Tiny-GGUF"
SMALL = "tiny-Q8_0.gguf"  # 576,192 bytes, F32 inside whatever its name says: smaller than one range read
LARGE = "padded-Q4_K_M.gguf"  # 4 MiB
_ids = count(1)


@pytest.fixture(scope="module")
def _server(tmp_path_factory):
    server = Hub().start()
    folder = tmp_path_factory.mktemp("hub")
    server.add_file(REPO, SMALL, write_tiny_llama(folder / "small.gguf"))
    server.add_file(REPO, LARGE, write_tiny_llama(folder / "large.gguf", pad_to=4 * MiB))
    server.add_repo(REPO)
    yield server
    server.stop()


@pytest.fixture
def stand_in(_server):
    for name in (SMALL, LARGE):
        _server.file(REPO, name).rate = None
    return _server


@pytest.fixture
def hub(stand_in, settings):
    settings.HF_ENDPOINT = stand_in.url
    return stand_in


def catalogued(filename, **fields):
    model, _ = CatalogModel.objects.get_or_create(repo_id=REPO, defaults={"name": "Tiny"})
    return ModelFile.objects.create(model=model, filename=filename, quant=filename.rsplit("-", 1)[1][:-5], **fields)


def row_cells(content, filename):
    """The text of each cell of the catalogue row that lists `filename`."""
    [row] = [r for r in re.findall(r"<tr>(.*?)</tr>", content, re.S) if f">{filename}</a>" in r]
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def panel_tasks():
    return [(m.task, m.args) for m in queued_messages("panel")]


# --- 1. the lists say what the header says ---------------------------------------------------------------
@pytest.mark.django_db
def test_it_lists_the_quant_and_parameters_the_gguf_header_gives(viewer_client, hub):
    model_file = catalogued(SMALL)
    assert read_model_facts(model_file.pk) == "ok"
    _model, _file, quant, _size, params, *_ = row_cells(page(viewer_client.get("/models/")), SMALL)
    assert (quant, params) == ("F32", "141 K")  # not the file name's Q8_0, nor "–" for a model under 0.01 B
    content = page(viewer_client.get(model_file.get_absolute_url()))
    assert "<dt>File type</dt><dd>F32</dd>" in content and "140,992 (141 K)" in content


@pytest.mark.django_db
def test_it_lists_the_file_names_quant_until_the_header_is_read(viewer_client):
    catalogued(SMALL)
    _model, _file, quant, _size, params, *_ = row_cells(page(viewer_client.get("/models/")), SMALL)
    assert (quant, params) == ("Q8_0", "–")


@pytest.mark.parametrize("parameters, label", [
    (140_992, "141 K"), (410_976, "411 K"), (124_439_808, "124 M"), (1_100_048_384, "1.1 B"),
    (8_030_261_248, "8.0 B"), (70_553_706_496, "70.6 B"), (405_853_388_800, "406 B"), (999, "999"), (None, ""),
])
def test_it_writes_parameter_counts_short(parameters, label):
    assert ModelFile(facts={"parameters": parameters}).parameters_label == label


# --- 2. what reading the header fetched ------------------------------------------------------------------
@pytest.mark.django_db
def test_it_says_the_whole_file_was_fetched_when_it_is_smaller_than_a_range_read(viewer_client, hub):
    model_file = catalogued(SMALL)
    read_model_facts(model_file.pk)
    content = page(viewer_client.get(model_file.get_absolute_url()))
    assert "the whole file (562.7\xa0KB) was fetched: it is smaller than a range read" in content
    assert "not the whole file" not in content


@pytest.mark.django_db
def test_it_says_how_much_of_a_larger_file_reading_the_header_fetched(viewer_client, hub):
    model_file = catalogued(LARGE)
    read_model_facts(model_file.pk)
    content = page(viewer_client.get(model_file.get_absolute_url()))
    assert 'id="header-read">1.0\xa0MB fetched of 4.0\xa0MB<' in content


# --- 3. byte sizes in human units on the rig ---------------------------------------------------------------
@pytest.mark.parametrize("size, text", [
    (0, "0 bytes"), (1, "1 byte"), (1023, "1023 bytes"), (838_688, "819 KB"), (576_192, "563 KB"),
    (1_048_570, "1.0 MB"), (150 * MiB, "150 MB"), (int(4.1 * 1024**3), "4.1 GB"), (1 << 50, "1.0 PB"),
])
def test_it_writes_byte_sizes_in_human_units(size, text):
    assert human_size(size) == text


def fake_agent(tmp_path):
    """Just what tasks/models.py asks of the agent: its config, the claim, reports, and command registration."""
    reports, commands = [], {}

    class Claimed:
        def __init__(self, operation_id):
            pass

        def __enter__(self):
            return True

        def __exit__(self, *exc):
            return False

    def command(name, **options):
        return lambda fn: commands.setdefault(name, fn)

    models_dir = tmp_path / "models"
    cfg = SimpleNamespace(models_dir=models_dir, state_dir=tmp_path / "state", max_downloads=1, disk_margin=0,
                          model_dirs=(models_dir,))
    agent = SimpleNamespace(cfg=cfg, claimed=Claimed, command=command, on_first_connect=[], in_flight=[],
                            cancellers=[], send=lambda *args, **kwargs: None,
                            operation=lambda operation_id, status, message="", *args, **kwargs:
                            reports.append((status, message)))
    model_tasks.register(agent)
    return commands, reports


def test_it_reports_a_small_download_in_kilobytes(tmp_path, stand_in):
    commands, reports = fake_agent(tmp_path)
    request = {"repo_id": REPO, "files": [{"filename": SMALL}], "endpoint": stand_in.url}
    commands[protocol.AGENT_DOWNLOAD_MODEL](next(_ids), request)
    assert reports[-1] == ("succeeded", f"downloaded: {SMALL} (563 KB, sha256 verified)")


# --- 4. download progress follows the bytes ----------------------------------------------------------------
def test_it_reports_progress_of_a_small_slow_download_as_its_bytes_arrive(tmp_path, stand_in):
    served = stand_in.file(REPO, SMALL)
    served.rate = 200 * 1024  # under 1 MiB, about 3 s: the old 1 MiB chunks reported nothing until the end
    rig = Downloader(tmp_path / "models", tmp_path / "state", disk_margin=0)
    updates = []
    request = DownloadRequest(repo_id=REPO, files=[{"filename": SMALL}], endpoint=stand_in.url)
    rig.download(next(_ids), request, progress=lambda update: updates.append((time.monotonic(), update["done"])))
    assert any(0 < done < served.size for _at, done in updates), updates
    gaps = [later - earlier for (earlier, _), (later, _) in zip(updates, updates[1:])]
    assert all(gap > 0.9 for gap in gaps), gaps  # about one report a second, however the bytes arrive


# --- 5. deleting a file a deployment uses -----------------------------------------------------------------
@pytest.fixture
def used_file(db):
    node, _token = make_node("wren")
    build = Build.objects.create(node=node, status=Build.READY, binary_path="/opt/llama-server")
    rig_file = RigFile.objects.create(node=node, path="/models/org__Tiny-GGUF/tiny-Q8_0.gguf", size=576_192)
    return node, build, rig_file


def deploy(used_file, name, port, **state):
    node, build, rig_file = used_file
    return Deployment.objects.create(node=node, name=name, model_file=rig_file, build=build, port=port, **state)


def test_it_asks_to_delete_a_stopped_deployment_and_to_stop_and_delete_a_running_one(operator_client, used_file):
    stopped = deploy(used_file, "wren-beta", 8080, desired_state=Deployment.STOPPED, actual_state="stopped")
    running = deploy(used_file, "wren-gamma", 8081, actual_state="healthy")
    content = page(operator_client.get(f"/rigs/wren/files/{used_file[2].pk}/delete/"))
    assert f'Delete deployment <a href="/deployments/{stopped.pk}/">wren-beta</a> first.' in content
    assert f'Stop and delete deployment <a href="/deployments/{running.pk}/">wren-gamma</a> first.' in content
    assert "stop it first" not in content and f"{used_file[0].pk}/wren-beta" not in content
    assert '<a href="/rigs/wren/files/">Cancel</a>' in content
    assert "Delete from disk" not in content


def test_it_tells_what_to_do_first_when_a_delete_is_posted_anyway(operator_client, used_file):
    deploy(used_file, "wren-beta", 8080, desired_state=Deployment.STOPPED, actual_state="stopped")
    response = operator_client.post(f"/rigs/wren/files/{used_file[2].pk}/delete/", follow=True)
    assert "tiny-Q8_0.gguf is used by deployment(s) wren-beta: delete wren-beta first." in page(response)
    assert RigFile.objects.filter(pk=used_file[2].pk).exists()


# --- 6. sizes of curated files ---------------------------------------------------------------------------
def test_it_says_plainly_that_a_curated_files_size_is_not_known_until_read(viewer_client):
    _model, _file, _quant, size, *_ = row_cells(page(viewer_client.get("/models/")), "Hermes-3-Llama-3.1-8B.Q8_0.gguf")
    assert size == "unknown until read from the Hub"


def test_it_reads_the_size_of_every_file_never_read_on_request(operator_client, hub,
                                                               django_capture_on_commit_callbacks):
    queued_messages("panel")  # start from an empty panel queue
    read = catalogued(LARGE, size=4 * MiB)
    ModelFile.objects.filter(pk=read.pk).update(facts_at="2026-01-01T00:00:00Z")
    unread = set(ModelFile.objects.filter(facts_at__isnull=True).values_list("pk", flat=True))
    assert "Read sizes from the Hub" in page(operator_client.get("/models/"))
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/models/refresh/", follow=True)
    tasks = panel_tasks()
    assert {args[0] for _task, args in tasks} == unread and read.pk not in unread
    assert {task for task, _args in tasks} == {"panel.read_model_facts"}
    assert f"Reading the size and header of {len(unread)} files from the Hub." in page(response)

    small = catalogued(SMALL)
    read_model_facts(small.pk)
    assert row_cells(page(operator_client.get("/models/")), SMALL)[3] == "562.7\xa0KB"


@pytest.mark.parametrize("who, status", [("anonymous", 302), ("viewer", 403), ("operator", 302)])
def test_it_lets_only_operators_ask_for_the_sizes(client, viewer, operator, who, status):
    queued_messages("panel")
    if who != "anonymous":
        client.force_login(viewer if who == "viewer" else operator)
    response = client.post("/models/refresh/")
    assert response.status_code == status
    if who == "anonymous":
        assert response["Location"].startswith("/login/")
    if who == "operator":
        assert response["Location"] == "/models/"
    else:
        assert panel_tasks() == []


def test_opening_a_file_never_read_starts_reading_its_header_once(operator_client, django_capture_on_commit_callbacks,
                                                                 monkeypatch):
    """The page says it is reading the header: it must be (a curated file was never queued), not poll forever."""
    from django.core.cache import cache

    from models_catalog import views

    queued = []
    monkeypatch.setattr(views.read_model_facts, "delay", lambda pk: queued.append(pk))
    model = CatalogModel.objects.create(repo_id="test-org/Never-Read-GGUF", name="Never read")
    never_read = ModelFile.objects.create(model=model, filename="never-Q4_K_M.gguf")
    cache.delete(f"facts-read-{never_read.pk}")
    with django_capture_on_commit_callbacks(execute=True):
        assert "Reading the GGUF header" in operator_client.get(never_read.get_absolute_url()).content.decode()
        operator_client.get(never_read.get_absolute_url(), HTTP_HX_REQUEST="true")  # its poll: not again
    assert queued == [never_read.pk]
