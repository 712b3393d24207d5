"""GGUF files on a rig's disk: the scan that registers them, the manifest of verified files, safe deletion."""

import hashlib
import os

import pytest

from nodes.agent import downloader, modelfiles
from nodes.agent.modelfiles import Manifest, ModelFileError
from tests.gguf_model import write_tiny_llama

SPLIT = "big-Q4_K_M-{:05d}-of-00003.gguf"


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    path = write_tiny_llama(tmp_path_factory.mktemp("model") / "tiny.gguf", chat_template="{{ bos_token }}")
    return path.read_bytes()


@pytest.fixture
def disk(tmp_path, model_bytes):
    """An agent's models folder with one download, and the seed's own `models/` folder beside it."""
    models = tmp_path / "data" / "models"
    seed = tmp_path / "llama.cpp" / "models"
    (models / "test-org__Tiny-GGUF").mkdir(parents=True)
    seed.mkdir(parents=True)
    (models / "test-org__Tiny-GGUF" / "tiny-Q8_0.gguf").write_bytes(model_bytes)
    (models / "test-org__Tiny-GGUF" / "half-Q4_0.gguf.part").write_bytes(model_bytes[:1000])
    (seed / "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf").write_bytes(model_bytes)
    (seed / "notes.txt").write_text("wget https://huggingface.co/...")
    (seed / ".hidden.gguf").write_bytes(model_bytes)
    (seed / ".cache").mkdir()
    (seed / ".cache" / "cached.gguf").write_bytes(model_bytes)
    (seed / SPLIT.format(1)).write_bytes(model_bytes)
    for part in (2, 3):
        (seed / SPLIT.format(part)).write_bytes(b"tensor data" * 100)
    return {"models": models, "seed": seed, "dirs": [models, seed, tmp_path / "not-there"],
            "manifest": Manifest(tmp_path / "data" / "state")}


def by_name(entries):
    return {os.path.basename(e["path"]): e for e in entries}


def test_it_finds_gguf_models_in_the_agents_folder_and_the_seeds_folder(disk):
    found = by_name(modelfiles.scan(disk["dirs"], disk["manifest"]))
    assert sorted(found) == [SPLIT.format(1), "tiny-Q8_0.gguf", "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"]
    downloaded = found["tiny-Q8_0.gguf"]
    assert downloaded["path"] == str(disk["models"] / "test-org__Tiny-GGUF" / "tiny-Q8_0.gguf")
    assert (downloaded["repo_id"], downloaded["filename"]) == ("test-org/Tiny-GGUF", "tiny-Q8_0.gguf")
    seeded = found["tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"]
    assert seeded["path"] == str(disk["seed"] / "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf")
    assert (seeded["repo_id"], seeded["filename"]) == ("", "")


def test_it_reads_each_models_facts_from_the_local_file(disk, model_bytes):
    found = by_name(modelfiles.scan(disk["dirs"], disk["manifest"]))
    facts = found["tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"]["facts"]
    assert facts["architecture"] == "llama" and facts["layers"] == 2 and facts["has_chat_template"] is True
    assert found["tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"]["size"] == len(model_bytes)
    assert found["tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"]["facts_error"] == ""


def test_it_lists_a_split_model_once_by_its_first_part(disk, model_bytes):
    split = by_name(modelfiles.scan(disk["dirs"], disk["manifest"]))[SPLIT.format(1)]
    assert split["shard_paths"] == [str(disk["seed"] / SPLIT.format(i)) for i in (1, 2, 3)]
    assert split["size"] == len(model_bytes) + 2 * 1100
    assert split["facts"]["architecture"] == "llama" and split["facts_error"] == ""


def test_it_says_when_parts_of_a_split_model_are_missing(disk):
    (disk["seed"] / SPLIT.format(3)).unlink()
    split = by_name(modelfiles.scan(disk["dirs"], disk["manifest"]))[SPLIT.format(1)]
    assert split["facts_error"] == "1 of 3 parts missing"


def test_it_lists_a_broken_gguf_file_with_the_reason(disk):
    (disk["seed"] / "broken.gguf").write_text("<html>Not Found</html>")
    broken = by_name(modelfiles.scan(disk["dirs"], disk["manifest"]))["broken.gguf"]
    assert broken["facts"] == {} and "broken.gguf is not a readable GGUF file" in broken["facts_error"]


def test_it_reports_absolute_paths_for_a_relative_models_folder(disk, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = modelfiles.scan(["data/models"], disk["manifest"])
    assert [e["path"] for e in found] == [str(disk["models"] / "test-org__Tiny-GGUF" / "tiny-Q8_0.gguf")]


def test_it_names_a_downloaded_file_by_the_path_the_download_used(disk, tmp_path):
    # The agent's data folder reached through a symlink: a scan must not report the file under a second name.
    (tmp_path / "link").symlink_to(tmp_path / "data")
    dest = downloader.destination(tmp_path / "link" / "models", "test-org/Tiny-GGUF", "tiny-Q8_0.gguf")
    found = modelfiles.scan([tmp_path / "link" / "models"], disk["manifest"])
    assert [e["path"] for e in found] == [str(dest)]


def test_it_calls_verified_only_files_in_the_manifest_that_have_not_changed(disk, model_bytes):
    path = disk["models"] / "test-org__Tiny-GGUF" / "tiny-Q8_0.gguf"
    seeded = disk["seed"] / "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
    sha = hashlib.sha256(model_bytes).hexdigest()
    disk["manifest"].record(path, sha)

    found = by_name(modelfiles.scan(disk["dirs"], disk["manifest"]))
    assert (found["tiny-Q8_0.gguf"]["verified"], found["tiny-Q8_0.gguf"]["sha256"]) == (True, sha)
    assert (found[seeded.name]["verified"], found[seeded.name]["sha256"]) == (False, "")

    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 60))  # touched since it was verified
    assert not by_name(modelfiles.scan(disk["dirs"], disk["manifest"]))["tiny-Q8_0.gguf"]["verified"]

    disk["manifest"].record(path, sha)
    with open(path, "ab") as fh:
        fh.write(b"!")
    os.utime(path, (stat.st_atime, path.stat().st_mtime))
    assert not by_name(modelfiles.scan(disk["dirs"], disk["manifest"]))["tiny-Q8_0.gguf"]["verified"]


def test_it_calls_a_split_model_verified_only_when_every_part_is(disk):
    shards = [disk["seed"] / SPLIT.format(i) for i in (1, 2, 3)]
    for shard in shards[:2]:
        disk["manifest"].record(shard, "a" * 64)
    assert not by_name(modelfiles.scan(disk["dirs"], disk["manifest"]))[SPLIT.format(1)]["verified"]
    disk["manifest"].record(shards[2], "a" * 64)
    assert by_name(modelfiles.scan(disk["dirs"], disk["manifest"]))[SPLIT.format(1)]["verified"]


def test_it_deletes_a_model_file_and_forgets_it_was_verified(disk):
    path = disk["models"] / "test-org__Tiny-GGUF" / "tiny-Q8_0.gguf"
    disk["manifest"].record(path, "b" * 64)
    assert modelfiles.delete(str(path), disk["dirs"], disk["manifest"]) == [str(path)]
    assert not path.exists()
    assert disk["manifest"].lookup(path) is None and str(path) not in disk["manifest"]._load()
    assert (disk["models"] / "test-org__Tiny-GGUF" / "half-Q4_0.gguf.part").exists()  # nothing else went


def test_it_deletes_every_part_of_a_split_model(disk):
    first = disk["seed"] / SPLIT.format(1)
    removed = modelfiles.delete(str(first), disk["dirs"], disk["manifest"])
    assert removed == [str(disk["seed"] / SPLIT.format(i)) for i in (1, 2, 3)]
    assert (disk["seed"] / "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf").exists()


def test_it_answers_nothing_removed_for_a_file_already_gone(disk):
    assert modelfiles.delete(str(disk["seed"] / "gone.gguf"), disk["dirs"], disk["manifest"]) == []


def test_it_refuses_to_delete_outside_the_model_folders(disk, tmp_path, model_bytes):
    outside = tmp_path / "precious.gguf"
    outside.write_bytes(model_bytes)
    (disk["seed"] / "link.gguf").symlink_to(outside)
    (disk["models"] / "linked-dir").symlink_to(tmp_path)
    for path in (outside, disk["models"] / ".." / ".." / "precious.gguf", disk["seed"] / "link.gguf",
                 disk["models"] / "linked-dir" / "precious.gguf"):
        with pytest.raises(ModelFileError, match="outside the rig's model folders; refusing to delete it"):
            modelfiles.delete(str(path), disk["dirs"], disk["manifest"])
    assert outside.read_bytes() == model_bytes


@pytest.mark.parametrize("path", ["data/models/test-org__Tiny-GGUF/tiny-Q8_0.gguf", "{seed}/notes.txt", "{seed}"])
def test_it_refuses_to_delete_what_is_not_a_gguf_file_path(disk, path):
    path = path.format(seed=disk["seed"])
    with pytest.raises(ModelFileError, match="is not a GGUF file path"):
        modelfiles.delete(path, disk["dirs"], disk["manifest"])
    assert (disk["seed"] / "notes.txt").exists()
