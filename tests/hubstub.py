"""A local stand-in for the Hugging Face Hub that `huggingface_hub` itself talks to.

Serves real files from memory/disk with the headers the library needs (X-Repo-Commit, ETag, Range), the
model API (`/api/models`, `/api/models/{repo}[/revision/{rev}]`), and the error codes it maps to its own
exceptions. Knobs (per file) let a test cut the connection, stall, throttle, serve corrupt bytes, or make a
repo gated; every byte served is counted so tests can assert how much was fetched again. `start_cdn()` adds a
second server on another port, and a file with `via_cdn` is then redirected there, as the Hub does with LFS files;
`seen` records each request's server, method, path and Authorization header.
"""

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    path: Path
    size: int
    sha256: str
    cut_after: int | None = None  # drop the connection once after serving this many bytes of the file
    stall_after: int | None = None  # stop sending (keep the socket open) after this many bytes, once
    stall_seconds: float = 30.0
    corrupt: bool = False  # serve flipped bytes (the metadata keeps the true sha256)
    rate: float | None = None  # bytes per second
    via_cdn: bool = False  # /resolve answers 302 to the CDN stand-in (start_cdn()), with the X-Linked-* headers
    served: int = 0  # body bytes sent, all requests together
    requests: list = field(default_factory=list)  # Range headers seen


@dataclass
class HubRepo:
    repo_id: str
    files: dict = field(default_factory=dict)
    gated: bool = False
    downloads: int = 0
    likes: int = 0
    tags: list = field(default_factory=lambda: ["gguf"])


class Hub:
    def __init__(self, token="hf_test_token"):
        self.repos = {}
        self.token = token
        self.lock = threading.Lock()
        self.server = None
        self.thread = None
        self.cdn = None
        self.seen = []  # (server, method, path, Authorization or None)

    # --- content --------------------------------------------------------------------------------
    def add_file(self, repo_id, filename, path, **knobs):
        repo = self.repos.setdefault(repo_id, HubRepo(repo_id))
        path = Path(path)
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        repo.files[filename] = HubFile(path=path, size=path.stat().st_size, sha256=digest.hexdigest(), **knobs)
        return repo.files[filename]

    def add_repo(self, repo_id, **fields):
        repo = self.repos.setdefault(repo_id, HubRepo(repo_id))
        for key, value in fields.items():
            setattr(repo, key, value)
        return repo

    def file(self, repo_id, filename):
        return self.repos[repo_id].files[filename]

    # --- server ---------------------------------------------------------------------------------
    def _serve(self, handler, host, port):
        handler.hub = self
        server = ThreadingHTTPServer((host, port), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def start(self, host="127.0.0.1", port=0):
        self.server = self._serve(type("Handler", (_Handler,), {}), host, port)
        return self

    def start_cdn(self, host="127.0.0.1", port=0):
        """The "CDN" that `via_cdn` files are redirected to: another origin, serving without any token."""
        self.cdn = self._serve(type("CdnHandler", (_CdnHandler,), {}), host, port)
        return self

    @property
    def url(self):
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn_url(self):
        host, port = self.cdn.server_address[:2]
        return f"http://{host}:{port}"

    def authorizations(self, server):
        """The Authorization header of every request `server` ("hub" or "cdn") received (None when absent)."""
        return [auth for name, _, _, auth in self.seen if name == server]

    def stop(self):
        for server in (self.server, self.cdn):
            if server:
                server.shutdown()
                server.server_close()


RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
CDN_FILE = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<file>.+)$")
API_MODEL = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?/?$")


class _Handler(BaseHTTPRequestHandler):
    hub: Hub
    role = "hub"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    # --- helpers -----------------------------------------------------------------------------
    def _send_json(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status, code, message):
        self._send_json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _authorised(self, repo):
        if not repo.gated:
            return True
        auth = self.headers.get("Authorization", "")
        if not auth:
            self._error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must be authenticated.")
            return False
        if auth != f"Bearer {self.hub.token}":
            self._error(403, "GatedRepo", f"Access to model {repo.repo_id} is restricted and you are not in the authorized list.")
            return False
        return True

    def _repo(self, repo_id):
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
        return repo

    # --- routes ------------------------------------------------------------------------------
    def _record(self, path):
        with self.hub.lock:
            self.hub.seen.append((self.role, self.command, path, self.headers.get("Authorization")))

    def do_GET(self):
        url = urlparse(self.path)
        path = unquote(url.path)
        self._record(path)
        if path == "/api/models":
            return self._search(parse_qs(url.query))
        match = API_MODEL.match(path)
        if match:
            return self._model_info(match["repo"], match["rev"])
        match = RESOLVE.match(path)
        if match:
            return self._resolve(match["repo"], match["rev"], match["file"])
        self._error(404, "EntryNotFound", "not found")

    do_HEAD = do_GET

    def _search(self, query):
        term = (query.get("search") or [""])[0].lower()
        limit = int((query.get("limit") or ["50"])[0])
        wanted = query.get("filter") or []
        repos = [r for r in self.hub.repos.values() if term in r.repo_id.lower() and all(t in r.tags for t in wanted)]
        repos.sort(key=lambda r: r.downloads, reverse=True)
        body = [
            {"_id": r.repo_id, "id": r.repo_id, "modelId": r.repo_id, "downloads": r.downloads, "likes": r.likes,
             "tags": r.tags, "private": False, "gated": r.gated, "lastModified": "2026-10-01T00:00:00.000Z"}
            for r in repos[:limit]
        ]
        self._send_json(200, body)

    def _model_info(self, repo_id, rev):
        repo = self._repo(repo_id)
        if repo is None or not self._authorised(repo):
            return
        if rev not in (None, "main", COMMIT):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        siblings = [
            {"rfilename": name, "size": f.size, "blobId": f.sha256[:40],
             "lfs": {"size": f.size, "sha256": f.sha256, "pointerSize": 134}}
            for name, f in sorted(repo.files.items())
        ]
        self._send_json(200, {"_id": repo.repo_id, "id": repo.repo_id, "modelId": repo.repo_id, "sha": COMMIT,
                              "siblings": siblings, "downloads": repo.downloads, "likes": repo.likes,
                              "tags": repo.tags, "private": False, "gated": "manual" if repo.gated else False,
                              "lastModified": "2026-10-01T00:00:00.000Z"})

    def _resolve(self, repo_id, rev, filename):
        repo = self._repo(repo_id)
        if repo is None or not self._authorised(repo):
            return
        if rev not in ("main", COMMIT):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        hub_file = repo.files.get(filename)
        if hub_file is None:
            return self._error(404, "EntryNotFound", f"{filename} does not exist on {rev}")
        if hub_file.via_cdn:
            self.send_response(302)
            self.send_header("Location", f"{self.hub.cdn_url}/cdn/{repo_id}/{filename}?signature=stand-in")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{hub_file.sha256}"')
            self.send_header("X-Linked-Size", str(hub_file.size))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_file(hub_file)

    def _send_file(self, hub_file):
        start, end = 0, hub_file.size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            match = re.match(r"bytes=(\d+)-(\d*)$", range_header.strip())
            if not match or int(match[1]) >= hub_file.size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{hub_file.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(match[1])
            end = min(int(match[2]), hub_file.size - 1) if match[2] else hub_file.size - 1
            status = 206
        if self.command == "GET":
            hub_file.requests.append(range_header)
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hub_file.sha256}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{hub_file.size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        self._stream(hub_file, start, end)

    def _stream(self, hub_file, start, end):
        if not (hub_file.cut_after or hub_file.stall_after or hub_file.corrupt or hub_file.rate):
            # No knob in play: let the kernel send it (zero copy), so the server costs like a real CDN's would.
            self.wfile.flush()
            with open(hub_file.path, "rb") as fh:
                try:
                    sent = self.connection.sendfile(fh, offset=start, count=end - start + 1)
                except (BrokenPipeError, ConnectionResetError):
                    return
            with self.hub.lock:
                hub_file.served += sent
            return
        position = start
        began = time.monotonic()
        sent = 0
        with open(hub_file.path, "rb") as fh:
            fh.seek(start)
            while position <= end:
                chunk = fh.read(min(256 * 1024, end - position + 1))
                if not chunk:
                    break
                for limit_name in ("cut_after", "stall_after"):
                    limit = getattr(hub_file, limit_name)
                    if limit is not None and position + len(chunk) > limit:
                        chunk = chunk[: max(0, limit - position)]
                if hub_file.corrupt:
                    chunk = bytes(b ^ 0xFF for b in chunk[:16]) + chunk[16:]
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                position += len(chunk)
                sent += len(chunk)
                with self.hub.lock:
                    hub_file.served += len(chunk)
                if hub_file.cut_after is not None and position >= hub_file.cut_after:
                    hub_file.cut_after = None  # once
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if hub_file.stall_after is not None and position >= hub_file.stall_after:
                    hub_file.stall_after = None  # once
                    time.sleep(hub_file.stall_seconds)
                    self.close_connection = True
                    return
                if hub_file.rate:
                    ahead = sent / hub_file.rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)


class _CdnHandler(_Handler):
    """Serves /cdn/<repo>/<file> to anyone (a signed URL stands in for the signature): no token is needed here."""

    role = "cdn"

    def do_GET(self):
        path = unquote(urlparse(self.path).path)
        self._record(path)
        match = CDN_FILE.match(path)
        repo = self.hub.repos.get(match["repo"]) if match else None
        hub_file = repo.files.get(match["file"]) if repo else None
        if hub_file is None:
            return self._error(404, "EntryNotFound", "not found")
        self._send_file(hub_file)

    do_HEAD = do_GET
