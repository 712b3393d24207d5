"""The rig-side downloader, as plain Python against the Hugging Face Hub stand-in (no Celery, no panel)."""

import errno
import hashlib
import json
import stat
from concurrent.futures import ThreadPoolExecutor
from itertools import count

import pytest

from nodes.agent import downloader as dl
from nodes.agent.downloader import DownloadCancelled, DownloadError, Downloader, DownloadRequest
from nodes.agent.validation import InvalidValue
from tests.gguf_model import write_tiny_llama
from tests.harness import wait_until
from tests.hubstub import Hub

MiB = 1024 * 1024
REPO = "test-org/Tiny-GGUF"
NAME = "tiny-Q8_0.gguf"
TOKEN = "hf_unit_secret_token_0123"
_ids = count(1)


@pytest.fixture(scope="module")
def _server():
    hub = Hub(token=TOKEN).start()
    yield hub
    hub.stop()


@pytest.fixture
def stand_in(_server):
    _server.repos.clear()  # one server for the module (stopping one costs 0.5 s), fresh repos per test
    _server.seen.clear()
    return _server


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("hub") / "tiny.gguf", pad_to=8 * MiB)


@pytest.fixture
def served(stand_in, model_path):
    return stand_in.add_file(REPO, NAME, model_path)


@pytest.fixture
def rig(tmp_path):
    return Downloader(tmp_path / "models", tmp_path / "state", disk_margin=0, retries=2, backoff=0.05)


def request_for(hub, filename=NAME, repo_id=REPO, **fields):
    return DownloadRequest(repo_id=repo_id, files=[{"filename": filename, **fields}], endpoint=hub.url)


def dest_of(rig, filename=NAME, repo_id=REPO):
    return rig.models_dir / repo_id.replace("/", "__") / filename


def part_of(rig, filename=NAME):
    return dest_of(rig, filename).with_name(filename + ".part")


def leftovers(rig):
    """Every file under the models folder and the download journal."""
    return sorted(str(p.relative_to(rig.models_dir.parent)) for p in rig.models_dir.parent.rglob("*") if p.is_file())


def test_it_downloads_a_file_into_the_repos_folder_and_verifies_its_sha256(rig, stand_in, served):
    updates = []
    result = rig.download(next(_ids), request_for(stand_in), progress=updates.append)
    [item] = result["files"]
    assert item["path"] == str(dest_of(rig).resolve())
    assert item["sha256"] == served.sha256 and item["verified"] and not item["already_present"]
    assert hashlib.sha256(dest_of(rig).read_bytes()).hexdigest() == served.sha256
    assert result["bytes_fetched"] == served.size and result["resumed_from"] == 0
    assert result["commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert updates and updates[0]["total"] == served.size and updates[0]["unit"] == "B"
    assert leftovers(rig) == [f"models/test-org__Tiny-GGUF/{NAME}"]  # no .part, no journal


def test_it_resumes_from_a_partial_file_left_by_an_earlier_run(rig, stand_in, served, model_path):
    have = 3 * MiB + 12345
    part_of(rig).parent.mkdir(parents=True)
    part_of(rig).write_bytes(model_path.read_bytes()[:have])

    result = rig.download(next(_ids), request_for(stand_in))

    assert served.requests == [f"bytes={have}-"]  # one request, for the rest only
    assert served.served == served.size - have
    assert result["resumed_from"] == have and result["bytes_fetched"] == served.size - have
    assert result["files"][0]["verified"]
    assert not part_of(rig).exists()


def test_it_resumes_after_the_connection_is_cut(rig, stand_in, served):
    served.cut_after = 3 * MiB
    result = rig.download(next(_ids), request_for(stand_in))
    assert served.requests == [None, f"bytes={3 * MiB}-"]
    assert served.served == served.size  # nothing fetched twice
    assert result["files"][0]["verified"]


def test_it_times_out_a_stalled_connection_and_resumes(rig, stand_in, served, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)
    served.stall_after, served.stall_seconds = 2 * MiB, 20
    result = rig.download(next(_ids), request_for(stand_in))
    assert result["seconds"] < 10  # the timeout fired, not the end of the stall
    assert served.requests == [None, f"bytes={2 * MiB}-"]
    assert result["files"][0]["verified"]


def test_it_discards_a_file_whose_sha256_does_not_match(rig, stand_in, served):
    served.corrupt = True
    with pytest.raises(DownloadError, match=f"{NAME}: sha256 mismatch — the Hub says {served.sha256}") as caught:
        rig.download(next(_ids), request_for(stand_in))
    assert "not ready" in str(caught.value)
    assert leftovers(rig) == []


def test_it_checks_against_the_catalogues_sha256_too(rig, stand_in, served):
    wrong = "0" * 64
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        rig.download(next(_ids), request_for(stand_in, sha256=wrong))
    assert leftovers(rig) == []


def test_it_refuses_a_file_whose_size_changed_on_the_hub(rig, stand_in, served):
    with pytest.raises(DownloadError, match="the repo changed"):
        rig.download(next(_ids), request_for(stand_in, size=served.size - 1))
    assert served.requests == [] and leftovers(rig) == []


def test_it_removes_the_partial_file_when_cancelled(rig, stand_in, served):
    served.rate = 4 * MiB
    operation = next(_ids)

    def progress(update):
        if update["done"] >= MiB:
            rig.cancel(operation)

    with pytest.raises(DownloadCancelled, match="cancelled by the provider"):
        rig.download(operation, request_for(stand_in), progress=progress)
    assert 0 < served.served < served.size
    assert leftovers(rig) == []


def test_it_removes_the_partial_file_when_cancelled_while_waiting_to_retry(tmp_path, stand_in, served, monkeypatch):
    rig = Downloader(tmp_path / "models", tmp_path / "state", disk_margin=0, retries=3, backoff=60)
    failed = []
    real_write = dl._HashingFile.write

    def write_then_fail_once(self, data):
        if self.tell() >= MiB and not failed:
            failed.append(self.tell())
            raise OSError(errno.EIO, "Input/output error")
        return real_write(self, data)

    monkeypatch.setattr(dl._HashingFile, "write", write_then_fail_once)
    operation = next(_ids)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(rig.download, operation, request_for(stand_in))
        wait_until(lambda: failed, timeout=30, message="the first write error")
        rig.cancel(operation)  # during the 60 s backoff
        with pytest.raises(DownloadCancelled):
            running.result(timeout=30)
    assert leftovers(rig) == []


def test_it_refuses_a_download_that_does_not_fit_and_writes_nothing(tmp_path, stand_in, served):
    rig = Downloader(tmp_path / "models", tmp_path / "state", disk_margin=1 << 50)
    with pytest.raises(DownloadError, match=r"not enough disk space on the rig: 8\.0 MB needed plus a 1\.0 PB margin"):
        rig.download(next(_ids), request_for(stand_in))
    assert served.requests == []
    assert leftovers(rig) == [] and list(rig.models_dir.iterdir()) == []


@pytest.mark.parametrize("have, fits", [(0, False), (12 * MiB, True)])
def test_it_counts_only_the_missing_bytes_against_free_disk(tmp_path, stand_in, monkeypatch, have, fits):
    from collections import namedtuple

    big = write_tiny_llama(tmp_path / "big.gguf", pad_to=16 * MiB)  # sparse: the padding costs no disk
    stand_in.add_file(REPO, NAME, big)
    # A nearly full disk: 10 MiB free. Other sessions write to the real one, so its free space is not stable.
    usage = namedtuple("usage", "total used free")(1 << 40, (1 << 40) - 10 * MiB, 10 * MiB)
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: usage)
    rig = Downloader(tmp_path / "models", tmp_path / "state", disk_margin=4 * MiB)
    part_of(rig).parent.mkdir(parents=True)
    with open(part_of(rig), "wb") as fh:
        fh.write(big.read_bytes()[:have])  # the padding is zeros, so a prefix of the real file
    if fits:
        assert rig.download(next(_ids), request_for(stand_in))["files"][0]["verified"]
    else:
        with pytest.raises(DownloadError, match="not enough disk space"):
            rig.download(next(_ids), request_for(stand_in))


def test_it_does_not_fetch_a_file_that_is_already_there(rig, stand_in, served):
    rig.download(next(_ids), request_for(stand_in))
    served.requests.clear()
    served.served = 0
    result = rig.download(next(_ids), request_for(stand_in))
    assert result["files"][0]["already_present"] and result["files"][0]["verified"]
    assert served.requests == [] and served.served == 0 and result["bytes_fetched"] == 0


def test_it_fetches_again_a_damaged_copy_of_the_same_size(rig, stand_in, served, model_path):
    dest_of(rig).parent.mkdir(parents=True)
    dest_of(rig).write_bytes(b"\0" * served.size)
    result = rig.download(next(_ids), request_for(stand_in))
    assert not result["files"][0]["already_present"] and result["files"][0]["verified"]
    assert dest_of(rig).read_bytes() == model_path.read_bytes()


def test_it_downloads_every_shard_of_a_split_model(rig, stand_in, tmp_path):
    shards = []
    for i in (1, 2):
        path = write_tiny_llama(tmp_path / f"shard{i}.gguf", seed=i)
        shards.append(stand_in.add_file(REPO, f"Q4_K_M/big-Q4_K_M-0000{i}-of-00002.gguf", path))
    request = DownloadRequest(repo_id=REPO, endpoint=stand_in.url,
                              files=[{"filename": f"Q4_K_M/big-Q4_K_M-0000{i}-of-00002.gguf"} for i in (1, 2)])
    result = rig.download(next(_ids), request)
    assert [f["sha256"] for f in result["files"]] == [s.sha256 for s in shards]
    assert all(f["verified"] for f in result["files"])
    assert result["bytes_fetched"] == sum(s.size for s in shards)
    assert (rig.models_dir / "test-org__Tiny-GGUF" / "Q4_K_M" / "big-Q4_K_M-00002-of-00002.gguf").exists()


def test_it_journals_the_request_with_its_token_privately_while_in_flight(rig, stand_in, served):
    stand_in.add_repo(REPO, gated=True)
    operation = next(_ids)
    seen = []

    def progress(update):
        if not seen:
            path = rig.journal_dir / f"{operation}.json"
            seen.append((json.loads(path.read_text()), stat.S_IMODE(path.stat().st_mode), rig.in_flight()))

    request = request_for(stand_in)
    request.token = TOKEN
    rig.download(operation, request, progress=progress, extra={"model_file": 7})
    [(entry, mode, in_flight)] = seen
    assert entry["request"]["token"] == TOKEN and entry["request"]["repo_id"] == REPO
    assert entry["extra"] == {"model_file": 7} and entry["operation"] == operation
    assert mode == 0o600
    assert [e["operation"] for e in in_flight] == [operation]
    assert rig.in_flight() == [] and not (rig.journal_dir / f"{operation}.json").exists()


def test_it_drops_the_journal_when_a_download_fails_for_good(rig, stand_in, served):
    served.corrupt = True
    operation = next(_ids)
    with pytest.raises(DownloadError):
        rig.download(operation, request_for(stand_in), progress=lambda update: None)
    assert rig.in_flight() == []


def test_it_refuses_a_second_download_of_a_file_already_being_downloaded(rig, stand_in, served):
    served.rate = 16 * MiB
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(rig.download, next(_ids), request_for(stand_in))
        wait_until(lambda: part_of(rig).exists() and part_of(rig).stat().st_size > 0, timeout=30,
                   message="the first download to write")
        second = next(_ids)
        with pytest.raises(DownloadError, match=f"{NAME} is already being downloaded on this rig"):
            rig.download(second, request_for(stand_in))
        assert not (rig.journal_dir / f"{second}.json").exists()
        assert first.result(timeout=30)["files"][0]["verified"]  # the first was not disturbed
    assert len([r for r in served.requests if r is None]) == 1


def test_it_makes_a_download_wait_for_a_free_slot(tmp_path, stand_in, served, model_path):
    rig = Downloader(tmp_path / "models", tmp_path / "state", max_concurrent=1, disk_margin=0)
    other = stand_in.add_file(REPO, "other-Q4_0.gguf", model_path)
    served.rate = 16 * MiB
    waited = []
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(rig.download, next(_ids), request_for(stand_in))
        wait_until(lambda: served.served > 0, timeout=30, message="the first download to start")
        second = rig.download(next(_ids), request_for(stand_in, "other-Q4_0.gguf"),
                              on_wait=lambda: waited.append((first.done(), list(other.requests))))
        assert first.done()
    assert waited == [(False, [])]  # told to wait while the first ran, before fetching anything
    assert second["files"][0]["verified"] and first.result()["files"][0]["verified"]


def test_it_cancels_a_download_waiting_for_a_slot(tmp_path, stand_in, served, model_path):
    rig = Downloader(tmp_path / "models", tmp_path / "state", max_concurrent=1, disk_margin=0)
    other = stand_in.add_file(REPO, "other-Q4_0.gguf", model_path)
    served.rate = 4 * MiB  # the first holds the slot for 2 s: longer than one 0.5 s look at the cancel flag
    running, waiting = next(_ids), next(_ids)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(rig.download, running, request_for(stand_in))
        wait_until(lambda: served.served > 0, timeout=30, message="the first download to start")
        with pytest.raises(DownloadCancelled, match="waiting for a download slot"):
            rig.download(waiting, request_for(stand_in, "other-Q4_0.gguf"), on_wait=lambda: rig.cancel(waiting))
        assert not (rig.journal_dir / f"{waiting}.json").exists() and other.requests == []
        rig.cancel(running)
        with pytest.raises(DownloadCancelled):
            first.result(timeout=30)


def test_it_fails_cleanly_when_the_disk_fills_up(rig, stand_in, served, monkeypatch):
    neighbour = rig.models_dir / "other__Repo" / "keep-Q4_0.gguf"
    neighbour.parent.mkdir(parents=True)
    neighbour.write_bytes(b"GGUF model that must survive")
    real_write = dl._HashingFile.write

    def write_until_full(self, data):
        if self.tell() >= 2 * MiB:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(dl._HashingFile, "write", write_until_full)
    with pytest.raises(DownloadError, match=f"disk filled up while writing {NAME}; the partial file was removed"):
        rig.download(next(_ids), request_for(stand_in))
    assert leftovers(rig) == ["models/other__Repo/keep-Q4_0.gguf"]
    assert neighbour.read_bytes() == b"GGUF model that must survive"


def test_it_downloads_from_a_gated_repo_with_the_right_token(rig, stand_in, served):
    stand_in.add_repo(REPO, gated=True)
    request = request_for(stand_in)
    request.token = TOKEN
    assert rig.download(next(_ids), request)["files"][0]["verified"]


def test_it_sends_the_token_to_the_hub_but_not_to_the_cdn_it_redirects_to(rig, stand_in, model_path):
    if stand_in.cdn is None:
        stand_in.start_cdn()
    stand_in.add_repo(REPO, gated=True)
    served = stand_in.add_file(REPO, NAME, model_path, via_cdn=True, cut_after=3 * MiB)  # and a resume, on the CDN
    request = request_for(stand_in)
    request.token = TOKEN
    result = rig.download(next(_ids), request)
    assert result["files"][0]["verified"] and result["files"][0]["sha256"] == served.sha256
    assert served.requests == [None, "bytes=3145728-"]  # both GETs went to the CDN
    hub_auth, cdn_auth = stand_in.authorizations("hub"), stand_in.authorizations("cdn")
    assert hub_auth and all(auth == f"Bearer {TOKEN}" for auth in hub_auth)
    assert len(cdn_auth) == 2 and cdn_auth == [None, None]


@pytest.mark.parametrize("url, endpoint, sent", [
    ("https://huggingface.co/org/repo/resolve/main/x.gguf", "https://huggingface.co", True),
    ("https://HuggingFace.co:443/org/repo/resolve/main/x.gguf", "https://huggingface.co/", True),
    ("https://cdn-lfs.hf.co/repos/ab/cd/x?X-Amz-Signature=1", "https://huggingface.co", False),
    ("http://huggingface.co/org/repo/resolve/main/x.gguf", "https://huggingface.co", False),
    ("http://127.0.0.1:9001/cdn/x.gguf", "http://127.0.0.1:9000", False),
    ("https://huggingface.co.evil.example/x.gguf", "https://huggingface.co", False),
])
def test_it_sends_the_token_only_to_the_hub_endpoints_own_scheme_host_and_port(url, endpoint, sent):
    assert dl.token_for(url, endpoint, TOKEN) == (TOKEN if sent else False)
    assert dl.token_for(url, endpoint, None) is False


@pytest.mark.parametrize("token, status", [(None, 401), ("hf_wrong_secret_token_999", 403)])
def test_it_explains_a_gated_repo_without_leaking_the_token(rig, stand_in, served, caplog, token, status):
    stand_in.add_repo(REPO, gated=True)
    request = request_for(stand_in)
    request.token = token
    with caplog.at_level("DEBUG"), pytest.raises(DownloadError, match=f"gated or private.*{status}") as caught:
        rig.download(next(_ids), request)
    if token:
        assert token not in str(caught.value) and token not in repr(caught.value)
        assert token not in caplog.text
    assert leftovers(rig) == []


def test_it_keeps_the_token_out_of_the_public_request_and_its_repr(stand_in):
    request = DownloadRequest(repo_id=REPO, files=[{"filename": NAME}], endpoint=stand_in.url, token=TOKEN)
    assert "token" not in request.public()
    assert TOKEN not in json.dumps(request.public()) and TOKEN not in repr(request)


def test_it_keeps_the_token_out_of_a_failure_after_retries(tmp_path, stand_in, served, monkeypatch):
    rig = Downloader(tmp_path / "models", tmp_path / "state", disk_margin=0, retries=1, backoff=0.01)

    def always_fail(self, data):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(dl._HashingFile, "write", always_fail)
    request = request_for(stand_in)
    request.token = TOKEN
    with pytest.raises(DownloadError, match="kept failing after 2 tries") as caught:
        rig.download(next(_ids), request)
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize("fields, reason", [
    ({"repo_id": "../etc", "files": [{"filename": NAME}]}, "not a Hugging Face repo id"),
    ({"repo_id": REPO, "files": [{"filename": "../../etc/evil.gguf"}]}, "not a safe file name"),
    ({"repo_id": REPO, "files": [{"filename": "/etc/evil.gguf"}]}, "not a file name inside the repository"),
    ({"repo_id": REPO, "files": [{"filename": "config.json"}]}, "not a GGUF file"),
    ({"repo_id": REPO, "files": []}, "no file to download"),
    ({"repo_id": REPO, "files": [{"filename": NAME, "sha256": "abc"}]}, "is not a sha256"),
    ({"repo_id": REPO, "revision": "../main", "files": [{"filename": NAME}]}, "not a valid revision"),
])
def test_it_refuses_a_request_that_could_write_outside_the_models_folder(fields, reason):
    with pytest.raises(InvalidValue, match=reason):
        DownloadRequest(**fields)
