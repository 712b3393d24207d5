"""The panel's side of the Hub (models_catalog/hub.py) against the Hugging Face Hub stand-in, through huggingface_hub."""

import pytest

from models_catalog import hub
from models_catalog.hub import HubError
from models_catalog.models import HubSettings
from nodes.agent import gguf_facts
from nodes.agent.validation import InvalidValue
from tests.gguf_model import write_tiny_llama
from tests.hubstub import COMMIT, Hub

pytestmark = pytest.mark.django_db

MiB = 1024 * 1024
TOKEN = "hf_panel_secret_token_42"


@pytest.fixture(scope="module")
def _server():
    server = Hub(token=TOKEN).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hubfiles")
    model = write_tiny_llama(folder / "tiny.gguf", chat_template="{{ bos_token }}", pad_to=16 * MiB)
    blobs = {}
    for name, size in (("a", 3000), ("b", 2000), ("c", 1000), ("d", 500)):
        blobs[name] = folder / name
        blobs[name].write_bytes(b"x" * size)
    return model, blobs


@pytest.fixture
def stand_in(_server, settings, files):
    """Fresh repos per test on one server: a GGUF repo with a single file, split files, and files to skip."""
    _server.repos.clear()
    settings.HF_ENDPOINT = _server.url
    model, blobs = files
    repo = "test-org/Tiny-GGUF"
    _server.add_file(repo, "tiny-Q8_0.gguf", model)
    for part, blob in ((1, "a"), (2, "b"), (3, "c")):
        _server.add_file(repo, f"Q4_K_M/big-Q4_K_M-0000{part}-of-00003.gguf", blobs[blob])
    _server.add_file(repo, "huge-Q2_K-00001-of-00002.gguf", blobs["d"])  # its second part is missing
    _server.add_file(repo, "README.md", blobs["d"])
    _server.add_file(repo, ".hidden-Q4_0.gguf", blobs["d"])
    _server.add_repo(repo, downloads=1234, likes=56)
    return _server


def gate(server, repo="test-org/Tiny-GGUF"):
    server.add_repo(repo, gated=True)


# --- search -------------------------------------------------------------------------------------
def test_it_lists_gguf_repos_first_then_other_matches(stand_in, files):
    model, _ = files
    stand_in.add_file("meta-llama/Llama-3.1-8B-Instruct", "model.safetensors", model)
    stand_in.add_repo("meta-llama/Llama-3.1-8B-Instruct", tags=["transformers"], downloads=10**6, likes=900)
    stand_in.add_file("bartowski/Llama-3.1-8B-Instruct-GGUF", "x-Q4_K_M.gguf", model)
    stand_in.add_repo("bartowski/Llama-3.1-8B-Instruct-GGUF", downloads=50, likes=3)
    stand_in.add_file("other/Llama-3.1-8B-Instruct-GGUF", "x-Q8_0.gguf", model)
    stand_in.add_repo("other/Llama-3.1-8B-Instruct-GGUF", downloads=500, likes=7, gated=True)

    results = hub.search("llama-3.1-8b")
    assert [(r["repo_id"], r["gguf"]) for r in results] == [
        ("other/Llama-3.1-8B-Instruct-GGUF", True),
        ("bartowski/Llama-3.1-8B-Instruct-GGUF", True),
        ("meta-llama/Llama-3.1-8B-Instruct", False),
    ]
    assert (results[0]["downloads"], results[0]["likes"], results[0]["gated"]) == (500, 7, True)
    assert results[2]["downloads"] == 10**6 and not results[1]["gated"]


def test_it_answers_an_empty_search_without_asking_the_hub(stand_in):
    assert hub.search("   ") == []


def test_it_refuses_an_overlong_search(stand_in):
    with pytest.raises(HubError, match="search text is too long"):
        hub.search("x" * 101)


# --- a repo's GGUF files ----------------------------------------------------------------------------
def test_it_lists_a_repos_gguf_files_with_split_files_as_one_model(stand_in, files):
    model, _ = files
    listing = hub.repo_gguf_files("test-org/Tiny-GGUF")
    assert (listing["repo_id"], listing["sha"], listing["downloads"], listing["likes"]) == (
        "test-org/Tiny-GGUF", COMMIT, 1234, 56)
    entries = {f["filename"]: f for f in listing["files"]}
    assert sorted(entries) == ["Q4_K_M/big-Q4_K_M-00001-of-00003.gguf", "huge-Q2_K-00001-of-00002.gguf",
                               "tiny-Q8_0.gguf"]  # no README, no hidden file, one entry per split model

    big = entries["Q4_K_M/big-Q4_K_M-00001-of-00003.gguf"]
    assert (big["size"], big["quant"], big["complete"]) == (6000, "Q4_K_M", True)
    assert [s["filename"] for s in big["shards"]] == [f"Q4_K_M/big-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert [s["size"] for s in big["shards"]] == [3000, 2000, 1000]
    assert big["shards"][1]["sha256"] == stand_in.file("test-org/Tiny-GGUF", big["shards"][1]["filename"]).sha256

    huge = entries["huge-Q2_K-00001-of-00002.gguf"]
    assert (huge["complete"], huge["size"], len(huge["shards"])) == (False, 500, 1)

    tiny = entries["tiny-Q8_0.gguf"]
    assert (tiny["size"], tiny["quant"], tiny["shards"], tiny["complete"]) == (16 * MiB, "Q8_0", [], True)
    assert tiny["sha256"] == stand_in.file("test-org/Tiny-GGUF", "tiny-Q8_0.gguf").sha256
    assert [f["size"] for f in listing["files"]] == sorted(f["size"] for f in listing["files"])


@pytest.mark.parametrize("repo_id, revision, message", [
    ("test-org/Missing-GGUF", "main", "repository test-org/Missing-GGUF not found"),
    ("test-org/Tiny-GGUF", "v9", "revision 'v9' not found in test-org/Tiny-GGUF"),
])
def test_it_explains_a_missing_repo_or_revision(stand_in, repo_id, revision, message):
    with pytest.raises(HubError, match=message):
        hub.repo_gguf_files(repo_id, revision)


def test_it_explains_a_gated_repo_without_a_token(stand_in):
    gate(stand_in)
    with pytest.raises(HubError, match=r"test-org/Tiny-GGUF is gated: .* set a token .* answered 401"):
        hub.repo_gguf_files("test-org/Tiny-GGUF")


def test_it_explains_a_gated_repo_with_a_wrong_token_without_showing_it(stand_in):
    gate(stand_in)
    HubSettings.objects.create(token="hf_wrong_token_not_shown")
    with pytest.raises(HubError, match="answered 403") as caught:
        hub.repo_gguf_files("test-org/Tiny-GGUF")
    assert "hf_wrong_token_not_shown" not in str(caught.value)


def test_it_sends_the_panels_token_for_a_gated_repo(stand_in):
    gate(stand_in)
    HubSettings.objects.create(token=TOKEN)
    assert len(hub.repo_gguf_files("test-org/Tiny-GGUF")["files"]) == 3
    assert hub.remote_facts("test-org/Tiny-GGUF", "tiny-Q8_0.gguf")["architecture"] == "llama"


@pytest.mark.parametrize("repo_id, revision", [("../etc", "main"), ("a/b/c", "main"), ("test-org/Tiny-GGUF", "../x")])
def test_it_refuses_bad_repo_ids_and_revisions_before_asking_the_hub(stand_in, repo_id, revision):
    with pytest.raises(InvalidValue):
        hub.repo_gguf_files(repo_id, revision)


# --- facts from the header ----------------------------------------------------------------------------
def test_it_reads_facts_from_the_hub_equal_to_the_local_file_without_fetching_it(stand_in, files):
    model, _ = files
    served = stand_in.file("test-org/Tiny-GGUF", "tiny-Q8_0.gguf")
    facts = hub.remote_facts("test-org/Tiny-GGUF", "tiny-Q8_0.gguf")
    fetched = facts.pop("header_fetched")
    assert facts == gguf_facts.read_local(model)
    assert served.served == fetched <= 16 * MiB // 16
    assert served.requests == [f"bytes=0-{fetched - 1}"]


def test_it_explains_facts_of_a_file_that_is_not_a_model(stand_in):
    with pytest.raises(HubError, match="not a GGUF file"):
        hub.remote_facts("test-org/Tiny-GGUF", "Q4_K_M/big-Q4_K_M-00001-of-00003.gguf")


def test_it_explains_facts_of_a_missing_file(stand_in):
    with pytest.raises(HubError, match="file not found in test-org/Tiny-GGUF"):
        hub.remote_facts("test-org/Tiny-GGUF", "absent-Q4_0.gguf")


def test_it_explains_facts_of_a_gated_file_without_a_token(stand_in):
    gate(stand_in)
    with pytest.raises(HubError, match="gated"):
        hub.remote_facts("test-org/Tiny-GGUF", "tiny-Q8_0.gguf", size=16 * MiB)
