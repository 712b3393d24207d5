"""Downloading GGUF files from the Hugging Face Hub (or a mirror at HF_ENDPOINT) into a rig's models folder.

huggingface_hub does the HTTP (its metadata HEAD, its authenticated, retrying `http_get`), but this module
owns the partial file so a download resumes across process restarts: `<dest>.part` is appended to from its
current size with a Range request, and hashed as it grows so the sha256 check costs no second read.
"""

import errno
import fcntl
import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import tqdm

from . import validation

log = logging.getLogger("morpheus.agent.download")

HASH_BLOCK = 8 << 20
# huggingface_hub reads in 10 MiB chunks (httpx buffers each one whole before handing it over), so a small or slow
# download showed 0% until its end, and a killed agent lost what it had read but not written. None: every piece is
# written (and counted for progress) as it arrives from the network; against the local Hub stand-in this cost no
# throughput and no more CPU.
READ_CHUNK = None


class DownloadError(Exception):
    """A failure whose message is shown to the provider as is; `discard` drops the partial file too."""

    def __init__(self, message, discard=False):
        super().__init__(message)
        self.discard = discard


class DownloadCancelled(DownloadError):
    pass


@dataclass
class FileSpec:
    filename: str
    size: int | None = None
    sha256: str | None = None


@dataclass
class DownloadRequest:
    repo_id: str
    files: list  # of FileSpec (dicts accepted)
    revision: str = "main"
    endpoint: str | None = None
    token: str | None = field(default=None, repr=False)

    def __post_init__(self):
        self.repo_id = validation.repo_id(self.repo_id)
        self.revision = validation.revision(self.revision)
        self.files = [f if isinstance(f, FileSpec) else FileSpec(**f) for f in self.files]
        if not self.files:
            raise validation.InvalidValue("no file to download")
        for spec in self.files:
            spec.filename = validation.gguf_filename(spec.filename)
            if spec.sha256 is not None and (len(spec.sha256) != 64 or not all(c in "0123456789abcdef" for c in spec.sha256)):
                raise validation.InvalidValue(f"{spec.sha256!r} is not a sha256")

    def public(self):
        """The request without its token, for journals and reports."""
        data = asdict(self)
        data.pop("token")
        return data


def _origin(url):
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def token_for(url, endpoint, token):
    """The token only for the Hub itself: a download the Hub redirects to a CDN or a bucket gets none."""
    return token if token and _origin(url) == _origin(endpoint) else False


def repo_folder(repo_id):
    return repo_id.replace("/", "__")


def destination(models_dir, repo_id, filename):
    dest = (Path(models_dir) / repo_folder(repo_id) / filename).resolve()
    root = Path(models_dir).resolve()
    if root not in dest.parents:  # validation makes this impossible; a second lock on the door
        raise DownloadError(f"{filename} would land outside the models folder")
    return dest


class _Progress(tqdm.tqdm):
    """Built by http_get as `cls(unit=..., total=..., initial=..., desc=...)`; forwards to our callback."""

    on_update = None

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = False
        kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
        super().__init__(*args, **kwargs)

    def update(self, n=1):
        result = super().update(n)
        if self.on_update is not None:
            self.on_update(n)
        return result

    def close(self):
        fp = self.fp
        super().close()
        try:
            fp.close()
        except Exception:
            pass


def _start_writeback():
    """sync_file_range(SYNC_FILE_RANGE_WRITE) from libc, or None: starts writing a range to disk without waiting."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        return fn
    except (OSError, AttributeError):
        return None


_sync_file_range = _start_writeback()
SYNC_FILE_RANGE_WRITE = 2


class _HashingFile:
    """Appends to the partial file and keeps a running sha256; supports what http_get asks of a file.

    Writes are synchronous (what `tell()` says is on disk is what a restart resumes from); hashing runs on a
    thread of its own (hashlib releases the GIL), so verifying costs almost no download time. The same thread
    starts the disk writeback of every WRITEBACK_EVERY bytes without waiting for it, so the final fsync (the file
    is durable before it is called ready) has only the tail left to wait for.
    """

    WRITEBACK_EVERY = 32 << 20

    def __init__(self, fh):
        self.fh = fh
        self._queue = queue.Queue(maxsize=64)
        self._sha = hashlib.sha256()
        self._hashed = 0
        self._written_back = 0
        self._thread = threading.Thread(target=self._hash_loop, name="sha256", daemon=True)
        self._thread.start()
        self._rehash_existing()

    def _hash_loop(self):
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if isinstance(item, tuple):  # ("reset", event): start over, then say so
                    self._sha = hashlib.sha256()
                    self._hashed = self._written_back = 0
                    item[1].set()
                else:
                    self._sha.update(item)
                    self._hashed += len(item)
                    if _sync_file_range is not None and self._hashed - self._written_back >= self.WRITEBACK_EVERY:
                        _sync_file_range(self.fh.fileno(), self._written_back, self._hashed - self._written_back,
                                         SYNC_FILE_RANGE_WRITE)
                        self._written_back = self._hashed
            finally:
                self._queue.task_done()

    def _rehash_existing(self):
        self.fh.seek(0)
        for block in iter(lambda: self.fh.read(HASH_BLOCK), b""):
            self._queue.put(block)
        self.fh.seek(0, os.SEEK_END)

    def write(self, data):
        self.fh.write(data)
        self._queue.put(bytes(data))
        return len(data)

    def tell(self):
        return self.fh.tell()

    def seek(self, offset, whence=os.SEEK_SET):
        return self.fh.seek(offset, whence)

    def truncate(self, size=None):
        # The server ignored our Range and is sending the whole file again: start the hash over.
        result = self.fh.truncate(size)
        done = threading.Event()
        self._queue.put(("reset", done))
        done.wait()
        self._rehash_existing()
        return result

    def flush(self):
        self.fh.flush()

    def hexdigest(self):
        self._queue.join()
        return self._sha.hexdigest()

    def close(self):
        self._queue.put(None)
        self._thread.join(timeout=10)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _hub_error(exc, request, filename):
    from huggingface_hub import errors

    name = f"{request.repo_id}/{filename}"
    if isinstance(exc, errors.GatedRepoError):
        return DownloadError(f"{request.repo_id} is gated or private: set a Hugging Face token with access to it "
                             f"(the Hub answered {getattr(exc.response, 'status_code', '401/403')})")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return DownloadError(f"repository {request.repo_id} not found (or it is private and no valid token is set)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return DownloadError(f"revision {request.revision!r} not found in {request.repo_id}")
    if isinstance(exc, (errors.RemoteEntryNotFoundError, errors.EntryNotFoundError)):
        return DownloadError(f"{filename} not found in {request.repo_id} at {request.revision}")
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(exc.response, "status_code", "?")
        if status in (401, 403):
            return DownloadError(f"{name}: access denied (HTTP {status}); check the Hugging Face token")
        return DownloadError(f"{name}: the Hub answered HTTP {status}")
    return None


class Downloader:
    """One rig's downloads: a slot limit, a journal of what is in flight, cancel flags."""

    def __init__(self, models_dir, state_dir, max_concurrent=2, disk_margin=1 << 30, retries=4, backoff=2.0):
        self.models_dir = Path(models_dir)
        self.journal_dir = Path(state_dir) / "downloads"
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.disk_margin = disk_margin
        self.retries = retries
        self.backoff = backoff
        self._cancel = {}
        self._lock = threading.Lock()
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.journal_dir.mkdir(parents=True, exist_ok=True)

    # --- journal: what to resume after a restart ----------------------------------------------
    def _journal_path(self, operation_id):
        return self.journal_dir / f"{int(operation_id)}.json"

    def journal(self, operation_id, request, extra=None):
        """Written before the first byte; removed when the download ends either way.

        The token is kept in clear here, so a restarted agent can resume a gated download: hence 0600, in the
        agent's own state folder, and gone as soon as the download ends.
        """
        path = self._journal_path(operation_id)
        tmp = path.with_suffix(".tmp")
        entry = {"operation": operation_id, "request": {**request.public(), "token": request.token},
                 "extra": extra or {}, "since": time.time()}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(entry, fh)
        os.replace(tmp, path)

    def forget(self, operation_id):
        self._journal_path(operation_id).unlink(missing_ok=True)

    def in_flight(self):
        """Journal entries left by a previous run of the agent (it was killed mid-download)."""
        entries = []
        for path in sorted(self.journal_dir.glob("*.json")):
            try:
                entries.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                log.warning("unreadable download journal %s; removing it", path)
                path.unlink(missing_ok=True)
        return entries

    # --- cancel ---------------------------------------------------------------------------------
    def cancel_event(self, operation_id):
        with self._lock:
            return self._cancel.setdefault(int(operation_id), threading.Event())

    def cancel(self, operation_id):
        self.cancel_event(operation_id).set()

    def _done_with(self, operation_id):
        with self._lock:
            self._cancel.pop(int(operation_id), None)

    # --- the work ---------------------------------------------------------------------------------
    def download(self, operation_id, request, progress=None, on_wait=None, extra=None):
        """Fetch every file of the request; returns a result dict. Raises DownloadError with a clear message."""
        cancel = self.cancel_event(operation_id)
        try:
            if cancel.is_set():
                raise DownloadCancelled("cancelled before it started")
            self.journal(operation_id, request, extra)
            if not self.slots.acquire(blocking=False):
                if on_wait:
                    on_wait()
                while not self.slots.acquire(timeout=0.5):
                    if cancel.is_set():
                        raise DownloadCancelled("cancelled while waiting for a download slot")
            try:
                return self._download_all(operation_id, request, progress, cancel)
            finally:
                self.slots.release()
        except DownloadError:
            # A final answer (bad repo, mismatch, cancel, full disk): nothing to resume after a restart.
            self.forget(operation_id)
            raise
        finally:
            self._done_with(operation_id)

    def _download_all(self, operation_id, request, progress, cancel):
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        plans = []
        for spec in request.files:
            url = hf_hub_url(request.repo_id, spec.filename, revision=request.revision, endpoint=request.endpoint)
            try:
                meta = get_hf_file_metadata(url, token=request.token or False)
            except Exception as exc:
                raise (_hub_error(exc, request, spec.filename) or DownloadError(f"{spec.filename}: {exc}")) from None
            size = meta.size if meta.size is not None else spec.size
            if spec.size is not None and size != spec.size:
                raise DownloadError(f"{spec.filename} is {size} bytes on the Hub, {spec.size} expected: "
                                    "the repo changed; refresh it in the catalogue")
            expected = spec.sha256 or (meta.etag if meta.etag and len(meta.etag) == 64 else None)
            dest = destination(self.models_dir, request.repo_id, spec.filename)
            plans.append((spec, meta, size, expected, dest))

        total = sum(p[2] or 0 for p in plans)
        partial_sizes = [self._partial_size(p[4]) for p in plans]
        needed = sum((size or 0) - have for (_, _, size, _, dest), have in zip(plans, partial_sizes)
                     if not dest.exists())
        free = shutil.disk_usage(self.models_dir).free
        if needed + self.disk_margin > free:
            raise DownloadError(f"not enough disk space on the rig: {human_size(needed)} needed plus a "
                                f"{human_size(self.disk_margin)} margin, {human_size(free)} free in {self.models_dir}")

        tracker = _Tracker(total, progress)
        results = []
        for spec, meta, size, expected, dest in plans:
            results.append(self._download_one(request, spec, meta, size, expected, dest, tracker, cancel))
        self.forget(operation_id)
        return {
            "repo_id": request.repo_id,
            "revision": request.revision,
            "commit": plans[0][1].commit_hash,
            "files": results,
            "bytes_fetched": tracker.fetched,
            "resumed_from": tracker.resumed_from,
            "seconds": round(time.monotonic() - tracker.started, 3),
        }

    @staticmethod
    def _partial_size(dest):
        part = dest.with_name(dest.name + ".part")
        return part.stat().st_size if part.exists() else 0

    def _download_one(self, request, spec, meta, size, expected, dest, tracker, cancel):
        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers

        constants.DOWNLOAD_CHUNK_SIZE = READ_CHUNK

        if dest.exists() and (size is None or dest.stat().st_size == size):
            digest = sha256_of(dest)
            if expected is None or digest == expected:
                tracker.skip(dest.stat().st_size)
                return _file_result(dest, spec.filename, digest, expected, already=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        token = token_for(meta.location, request.endpoint or constants.ENDPOINT, request.token)
        headers = build_hf_headers(token=token)
        with open(part, "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DownloadError(f"{spec.filename} is already being downloaded on this rig") from None
            if size is not None and os.fstat(fh.fileno()).st_size > size:
                fh.truncate(0)
            writer = _HashingFile(fh)
            try:
                digest = self._fetch(request, spec, meta, size, writer, tracker, cancel, headers)
            except (DownloadCancelled, DownloadError) as exc:
                if isinstance(exc, DownloadCancelled) or exc.discard:
                    fh.truncate(0)
                    part.unlink(missing_ok=True)
                raise
            finally:
                writer.close()
            if expected is not None and digest != expected:
                fh.truncate(0)
                part.unlink(missing_ok=True)
                raise DownloadError(f"{spec.filename}: sha256 mismatch — the Hub says {expected}, the downloaded file "
                                    f"is {digest}; the file was discarded and is not ready")
            os.replace(part, dest)
        return _file_result(dest, spec.filename, digest, expected, already=False)

    def _fetch(self, request, spec, meta, size, writer, tracker, cancel, headers):
        """Append the rest of the file through http_get, retrying with backoff; returns the sha256."""
        from huggingface_hub.file_download import http_get

        tracker.start_file(writer.tell())

        def on_update(n):
            tracker.update(n)
            if cancel.is_set():
                raise DownloadCancelled("cancelled by the provider")

        progress_cls = type("Progress", (_Progress,), {"on_update": staticmethod(on_update)})
        attempt = 0
        while True:
            try:
                http_get(meta.location, writer, resume_size=writer.tell(), expected_size=size, headers=headers,
                         displayed_filename=spec.filename, tqdm_class=progress_cls)
                break
            except DownloadCancelled:
                raise
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DownloadError(f"the rig's disk filled up while writing {spec.filename}; "
                                        "the partial file was removed", discard=True) from None
                error = exc
            except Exception as exc:
                hub = _hub_error(exc, request, spec.filename)
                if hub is not None:
                    raise hub from None
                error = exc
            attempt += 1
            if attempt > self.retries:
                raise DownloadError(f"{spec.filename}: download kept failing after {attempt} tries: {error}")
            wait = self.backoff * 2 ** (attempt - 1)
            log.warning("%s: %s; retrying from byte %d in %.0fs", spec.filename, error, writer.tell(), wait)
            if cancel.wait(wait):
                raise DownloadCancelled("cancelled by the provider")
        writer.flush()
        # Durable before it is called ready: a power cut must not leave a "verified" file half on disk.
        os.fsync(writer.fh.fileno())
        return writer.hexdigest()


def _file_result(dest, filename, digest, expected, already):
    return {"filename": filename, "path": str(dest), "size": dest.stat().st_size, "sha256": digest,
            "verified": expected is not None and digest == expected, "already_present": already}


def human_size(n):
    """A byte count as a provider reads it: "819 KB", "4.1 GB" (units of 1024, named as the panel's pages name them)."""
    if abs(n) < 1024:
        return "1 byte" if n == 1 else f"{n} bytes"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB", "PB"):
        value /= 1024
        if round(abs(value)) < 1024:
            break
    return f"{value:.1f} {unit}" if abs(value) < 99.95 else f"{value:.0f} {unit}"


class _Tracker:
    """Adds up bytes across files and hands the callback done/total/rate/ETA at most once a second."""

    def __init__(self, total, callback, every=1.0):
        self.total, self.callback, self.every = total, callback, every
        self.done = 0
        self.fetched = 0
        self.resumed_from = 0
        self.started = time.monotonic()
        self._last = 0.0

    def skip(self, n):
        self.done += n
        self._emit(force=True)

    def start_file(self, already):
        self.resumed_from += already
        self.done += already
        self._emit(force=True)

    def update(self, n):
        self.done += n
        self.fetched += n
        self._emit()

    def _emit(self, force=False):
        now = time.monotonic()
        if self.callback is None or (not force and now - self._last < self.every):
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        rate = self.fetched / elapsed
        eta = (self.total - self.done) / rate if rate > 0 and self.total else None
        self.callback({"done": self.done, "total": self.total, "unit": "B", "rate": round(rate),
                       "eta": round(eta, 1) if eta is not None else None})
