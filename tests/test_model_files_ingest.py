"""Applying an agent's `model_files` report: which GGUF files sit on a rig's disk."""

import pytest

from models_catalog.models import CatalogModel, ModelFile, RigFile
from tests.helpers import report as handle_report
from tests.helpers import make_node

pytestmark = pytest.mark.django_db

MiB = 1024 * 1024
MODELS = "/var/lib/morpheus-agent/models"
TINY = f"{MODELS}/test-org__Tiny-GGUF/tiny-Q8_0.gguf"
SEED = "/home/provider/llama.cpp/models/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
SHA = "ab" * 32


@pytest.fixture
def alpha():
    return make_node("alpha")


@pytest.fixture
def tiny():
    model = CatalogModel.objects.create(repo_id="test-org/Tiny-GGUF", name="Tiny")
    return ModelFile.objects.create(model=model, filename="tiny-Q8_0.gguf", size=4 * MiB)


def entry(path, size=4 * MiB, **fields):
    return {"path": path, "size": size, "sha256": "", "verified": False, "repo_id": "", "filename": "",
            "facts": {"architecture": "llama", "layers": 2}, "facts_error": "", "shard_paths": [], **fields}


def report(rig, mode, *files, model_file=None):
    node, token = rig
    return handle_report(node.name, token, "model_files", {"mode": mode, "files": list(files), "model_file": model_file})


def rows(node):
    return {f.path: f for f in RigFile.objects.filter(node=node)}


def test_it_records_a_downloaded_file_as_verified_and_linked_to_the_catalogue(alpha, tiny):
    assert report(alpha, "upsert", entry(TINY, sha256=SHA, verified=True, repo_id="test-org/Tiny-GGUF",
                                         filename="tiny-Q8_0.gguf"), model_file=tiny.pk) is None
    [row] = RigFile.objects.filter(node=alpha[0])
    assert (row.path, row.size, row.sha256, row.verified, row.source) == (TINY, 4 * MiB, SHA, True, "download")
    assert row.model_file == tiny and row.facts["architecture"] == "llama"
    assert list(tiny.copies.all()) == [row]
    alpha[0].refresh_from_db()
    assert alpha[0].last_seen is not None


def test_it_links_a_file_to_the_catalogue_by_repo_and_name(alpha, tiny):
    report(alpha, "upsert", entry(TINY, repo_id="test-org/Tiny-GGUF", filename="tiny-Q8_0.gguf"))
    assert rows(alpha[0])[TINY].model_file == tiny


def test_it_leaves_a_file_unlinked_when_its_catalogue_entry_is_gone(alpha, tiny):
    report(alpha, "upsert", entry(TINY), model_file=tiny.pk + 1000)
    assert rows(alpha[0])[TINY].model_file is None


def test_it_turns_a_scanned_file_into_a_verified_download(alpha, tiny):
    report(alpha, "replace", entry(TINY))
    report(alpha, "upsert", entry(TINY, sha256=SHA, verified=True), model_file=tiny.pk)
    row = rows(alpha[0])[TINY]
    assert (row.verified, row.sha256, row.source, row.model_file) == (True, SHA, "download", tiny)


def test_it_replaces_the_list_with_what_a_scan_found(alpha):
    report(alpha, "upsert", entry(f"{MODELS}/old/deleted-by-hand.gguf"))
    report(alpha, "replace", entry(SEED, size=MiB), entry(TINY))
    found = rows(alpha[0])
    assert sorted(found) == sorted([SEED, TINY])
    assert found[SEED].source == "scan" and not found[SEED].verified and found[SEED].size == MiB


def test_it_keeps_what_it_knew_about_files_a_scan_found_unchanged(alpha, tiny):
    report(alpha, "upsert", entry(TINY, sha256=SHA, verified=True), model_file=tiny.pk)
    # A scan does not hash: the agent's manifest vouches for a file it verified that has not changed since.
    report(alpha, "replace", entry(TINY, sha256=SHA, verified=True, facts={"architecture": "llama", "layers": 3}))
    row = rows(alpha[0])[TINY]
    assert (row.verified, row.sha256, row.source, row.model_file) == (True, SHA, "download", tiny)
    assert row.facts["layers"] == 3


def test_it_drops_the_verified_mark_when_the_agent_no_longer_vouches_for_the_file(alpha, tiny):
    report(alpha, "upsert", entry(TINY, sha256=SHA, verified=True), model_file=tiny.pk)
    report(alpha, "replace", entry(TINY))  # same size, but touched since (the manifest's mtime differs)
    row = rows(alpha[0])[TINY]
    assert (row.verified, row.sha256, row.model_file) == (False, "", tiny)


def test_it_drops_the_verified_mark_of_a_file_whose_size_changed(alpha, tiny):
    report(alpha, "upsert", entry(TINY, sha256=SHA, verified=True), model_file=tiny.pk)
    report(alpha, "replace", entry(TINY, size=4 * MiB + 1))
    row = rows(alpha[0])[TINY]
    assert (row.verified, row.sha256, row.size) == (False, "", 4 * MiB + 1)


def test_it_empties_the_list_when_a_scan_finds_nothing(alpha):
    report(alpha, "replace", entry(SEED), entry(TINY))
    report(alpha, "replace")
    assert rows(alpha[0]) == {}


def test_it_removes_only_the_deleted_files(alpha):
    report(alpha, "replace", entry(SEED), entry(TINY))
    assert report(alpha, "remove", {"path": TINY}) is None
    assert sorted(rows(alpha[0])) == [SEED]


def test_it_leaves_other_rigs_files_alone(alpha):
    beta = make_node("beta")
    report(beta, "upsert", entry(TINY, verified=True, sha256=SHA))
    report(alpha, "replace", entry(SEED))
    report(alpha, "remove", {"path": TINY})
    assert sorted(rows(beta[0])) == [TINY] and rows(beta[0])[TINY].verified


@pytest.mark.parametrize("files, reason", [
    ([entry("models/tiny.gguf")], "path 'models/tiny.gguf' is not an absolute path"),
    ([entry(f"{MODELS}/../../etc/x.gguf")], "is not an absolute path"),
    ([entry(f"{MODELS}/x.gguf\x00")], "path contains a NUL character"),
    ([entry(TINY, sha256="AB" * 32)], "sha256 must be 64 hex characters"),
    ([entry(TINY, sha256="abc")], "sha256 must be 64 hex characters"),
    ([entry(TINY, size=-1)], "size=-1 is outside"),
    ([entry(TINY, facts=["llama"])], "facts must be an object"),
    ([entry(TINY, facts={"layer_bytes": [1] * 20000})], "are more than 16384 bytes"),  # a rig filling the table
    ([entry(TINY, shard_paths="/a.gguf")], "shard_paths must be a list of paths"),
    ([{"path": TINY}], "size is missing"),
])
def test_it_rejects_a_malformed_report_and_writes_nothing(alpha, files, reason):
    report(alpha, "replace", entry(SEED))
    result = report(alpha, "replace", *files)
    assert result.startswith("malformed model_files report:") and reason in result
    assert sorted(rows(alpha[0])) == [SEED]


def test_a_file_whose_header_facts_hold_a_nul_is_kept_without_them(alpha):
    report(alpha, "replace", entry(TINY, facts={"name": "odd\x00name", "layers": 2}))
    row = RigFile.objects.get(node=alpha[0], path=TINY)
    assert row.facts == {} and row.facts_error == "its header holds a NUL character; facts not kept"


def test_it_rejects_an_unknown_mode(alpha):
    assert "mode 'wipe' is not replace, upsert or remove" in report(alpha, "wipe", entry(TINY))
    assert rows(alpha[0]) == {}


def test_it_rejects_a_report_with_a_wrong_token(alpha):
    node, _token = alpha
    result = handle_report(node.name, "not-the-token-of-this-rig-at-all", "model_files", {"mode": "replace", "files": [entry(TINY)]})
    assert "bad report signature" in result and rows(node) == {}
