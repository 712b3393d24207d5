"""A proxy-router release fetched from its URL and kept only if its sha256 is the one the provider gave.

Plain Python, no Django: the panel checks a URL and a digest with the same functions before it sends them. A
release is a bare binary, a .zip or a .tar.gz (Morpheus ships zips such as mor-launch-linux-x86_64.zip with the
`proxy-router` binary in a sub-folder); from an archive only that one member is taken. What lands on the rig is
`<router folder>/releases/proxy-router-<sha256[:12]>`, mode 0755, written atomically; a failed install leaves
nothing behind.
"""

import errno
import hashlib
import http.client
import ipaddress
import json
import os
import re
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, unquote, urlsplit

from .downloader import _Tracker, human_size, sha256_of
from .supervisor import write_private
from .validation import InvalidValue

BINARY_NAME = "proxy-router"
URL_MAX = 2048
MAX_RELEASE_BYTES = 512 << 20  # the download, archive or not (the router is ~60 MB; a zip of it less)
MAX_BINARY_BYTES = 512 << 20  # the binary once out of its archive
MAX_MEMBERS = 10000
READ_TIMEOUT = 30.0  # seconds without a byte before the download counts as stalled
CHUNK = 1 << 20
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# Query parameter names that carry a credential: such a URL would put it in the panel's database and pages.
CREDENTIAL_PARAM = re.compile(r"token|key|secret|pass|sig|auth|cred", re.IGNORECASE)


class ReleaseError(Exception):
    """A failed install, its message shown to the provider as is (never the URL's query, never a credential)."""


class ReleaseCancelled(ReleaseError):
    pass


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def release_url(value):
    """The release's URL: https (http only to a loopback host: tests, a mirror on the rig), no credentials in it."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidValue("give the release's URL")
    value = value.strip()
    if len(value) > URL_MAX:
        raise InvalidValue(f"the URL is longer than {URL_MAX} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidValue("the URL has spaces or control characters in it")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise InvalidValue(f"not a valid URL: {exc}") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise InvalidValue("the URL must start with https:// and name a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidValue("the URL must not carry a user name or password: use a public download link")
    if any(CREDENTIAL_PARAM.search(name) for name, _ in parse_qsl(parts.query, keep_blank_values=True)):
        raise InvalidValue("the URL must not carry a token or signature in its query: use a public download link")
    if parts.scheme == "http" and not _is_loopback(host):
        raise InvalidValue("the URL must use https (plain http only to this machine's loopback address)")
    if port == 0:
        raise InvalidValue("the URL's port must not be 0")
    if not release_file_name(value):
        raise InvalidValue("the URL must end with the release's file name")
    return value


def without_credentials(url):
    """The URL with any user name, password and query dropped: what may be shown back after a refusal."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=netloc, query="", fragment="").geturl()
    except ValueError:
        return ""


def release_file_name(url):
    """The file name the URL ends with ("mor-launch-linux-x86_64.zip"), or ""."""
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    return name if name not in ("", ".", "..") and len(name) <= 200 and name.isprintable() else ""


def release_sha256(value):
    """The digest the provider copied from the release page: exactly 64 hex digits (kept lower-case)."""
    if not isinstance(value, str) or not SHA256_RE.match(value.strip()):
        raise InvalidValue("the sha256 must be exactly 64 hexadecimal digits")
    return value.strip().lower()


def installed_name(sha256):
    return f"{BINARY_NAME}-{sha256[:12]}"


# --- download -----------------------------------------------------------------------------------------------
class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect (GitHub sends release downloads to its object store) must obey the same rules as the URL given.
    Only the scheme and host are checked here: a redirect's signed query is the server's, not the provider's."""

    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        parts = urlsplit(newurl)
        host = (parts.hostname or "").lower()
        if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(host)):
            raise ReleaseError(f"the server redirected the download to a {parts.scheme or 'relative'}:// address "
                               "that is not https; refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(url):
    handlers = [_CheckedRedirects()]
    if _is_loopback((urlsplit(url).hostname or "").lower()):
        handlers.append(urllib.request.ProxyHandler({}))  # a rig's http_proxy must not see its own loopback
    return urllib.request.build_opener(*handlers)


def _fetch(url, dest, max_bytes, tracker, cancel, timeout):
    """Stream the URL into `dest` (an open binary file), hashing as it goes; returns (sha256 hex, bytes)."""
    digest = hashlib.sha256()
    name = release_file_name(url)
    request = urllib.request.Request(url, headers={"User-Agent": "morpheus-agent (proxy-router install)"})
    try:
        with _opener(url).open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            declared = int(declared) if declared and declared.isdigit() else None
            if declared is not None and declared > max_bytes:
                raise ReleaseError(f"{name} is {human_size(declared)}, more than the {human_size(max_bytes)} a "
                                   "proxy-router release may be; refused")
            tracker.total = declared or 0
            size = 0
            while True:
                if cancel is not None and cancel.is_set():
                    raise ReleaseCancelled("cancelled by the provider")
                block = response.read1(CHUNK)  # what has arrived: progress and cancel keep up on a slow link
                if not block:
                    break
                size += len(block)
                if size > max_bytes:
                    raise ReleaseError(f"{name} is more than the {human_size(max_bytes)} a proxy-router release "
                                       "may be; download stopped")
                dest.write(block)
                digest.update(block)
                tracker.update(len(block))
            if declared is not None and size != declared:
                raise ReleaseError(f"the download of {name} ended early: {size} of {declared} bytes")
    except urllib.error.HTTPError as exc:
        raise ReleaseError(f"the server answered HTTP {exc.code} for {name}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ReleaseError):
            raise reason from None
        raise ReleaseError(f"could not download {name}: {reason}") from None
    except http.client.IncompleteRead as exc:
        raise ReleaseError(f"the download of {name} ended early after {len(exc.partial)} more bytes") from None
    except (http.client.HTTPException, TimeoutError) as exc:
        raise ReleaseError(f"the download of {name} failed: {type(exc).__name__}: {exc}") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ReleaseError("the rig's disk filled up during the download; nothing was installed") from None
        raise ReleaseError(f"the download of {name} failed: {exc}") from None
    return digest.hexdigest(), size


# --- what is in the file ------------------------------------------------------------------------------------
def _safe_member_name(name):
    """A member path that stays inside the archive's folder: relative, no `..`, no drive or NUL."""
    path = PurePosixPath(name.replace("\\", "/"))
    return not (path.is_absolute() or ".." in path.parts or "\x00" in name or re.match(r"^[A-Za-z]:", name))


def _pick(members, name_of):
    """The one member called proxy-router; refuses an archive with unsafe paths, none or several such members."""
    if len(members) > MAX_MEMBERS:
        raise ReleaseError(f"the archive has {len(members)} entries, more than {MAX_MEMBERS}; refused")
    for member in members:
        if not _safe_member_name(name_of(member)):
            raise ReleaseError(f"the archive has an entry with an unsafe path ({name_of(member)!r}); refused")
    found = [m for m in members if PurePosixPath(name_of(m).replace("\\", "/")).name == BINARY_NAME]
    if not found:
        listed = ", ".join(name_of(m) for m in members[:8]) + (", …" if len(members) > 8 else "")
        raise ReleaseError(f"the archive has no file named {BINARY_NAME} (it has: {listed or 'nothing'})")
    if len(found) > 1:
        raise ReleaseError(f"the archive has {len(found)} files named {BINARY_NAME} "
                           f"({', '.join(name_of(m) for m in found)}); which one to run is unclear")
    return found[0]


def _copy_member(source, dest, declared, max_bytes):
    if declared > max_bytes:
        raise ReleaseError(f"{BINARY_NAME} in the archive is {human_size(declared)}, more than "
                           f"{human_size(max_bytes)}; refused")
    size = 0
    for block in iter(lambda: source.read(CHUNK), b""):
        size += len(block)
        if size > max_bytes or size > declared:
            raise ReleaseError(f"{BINARY_NAME} in the archive unpacks to more than it says; refused")
        dest.write(block)
    return size


def _from_zip(path, dest, max_bytes):
    try:
        with zipfile.ZipFile(path) as archive:
            member = _pick(archive.infolist(), lambda m: m.filename)
            kind = stat.S_IFMT(member.external_attr >> 16)  # 0 when the zip tool stored permissions only
            if member.is_dir() or (kind and kind != stat.S_IFREG):
                raise ReleaseError(f"{member.filename} in the archive is not a plain file (a link or a folder); "
                                   "refused")
            with archive.open(member) as source:
                return _copy_member(source, dest, member.file_size, max_bytes)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise ReleaseError(f"the zip archive is damaged or unsupported: {exc}") from None


def _from_tar(path, dest, max_bytes):
    try:
        with tarfile.open(path, "r:*") as archive:
            member = _pick(archive.getmembers(), lambda m: m.name)
            if not member.isreg():
                raise ReleaseError(f"{member.name} in the archive is not a plain file (a link or a folder); refused")
            source = archive.extractfile(member)
            return _copy_member(source, dest, member.size, max_bytes)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise ReleaseError("the rig's disk filled up unpacking the release; nothing was installed") from None
        raise ReleaseError(f"the tar archive is damaged or unsupported: {exc}") from None


def _shape(path):
    with open(path, "rb") as fh:
        head = fh.read(262 + 8)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar":
        return "tar"
    return "binary"


# --- install ------------------------------------------------------------------------------------------------
def _record_path(releases, sha256):
    return releases / f".{installed_name(sha256)}.json"


def _already(releases, sha256):
    """The result of an earlier install of this very release, if its binary is still intact."""
    binary = releases / installed_name(sha256)
    try:
        record = json.loads(_record_path(releases, sha256).read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(record, dict) or record.get("sha256") != sha256 or not binary.is_file()
            or sha256_of(binary) != record.get("binary_sha256")):
        return None
    return {"binary": str(binary), "sha256": sha256, "bytes": binary.stat().st_size, "already": True}


def install(url, sha256, router_dir, progress=None, cancel=None, max_bytes=MAX_RELEASE_BYTES,
            max_binary_bytes=MAX_BINARY_BYTES, timeout=READ_TIMEOUT):
    """Download, verify and install; returns {"binary", "sha256", "bytes", "already"} or raises ReleaseError
    (InvalidValue for a URL or digest that breaks the rules, before any byte is fetched)."""
    url, sha256 = release_url(url), release_sha256(sha256)
    releases = Path(router_dir) / "releases"
    final = releases / installed_name(sha256)
    partial = staged = None
    try:
        releases.mkdir(parents=True, exist_ok=True)
        done = _already(releases, sha256)
        if done is not None:
            return done
        fd, partial = tempfile.mkstemp(dir=releases, prefix=".partial-")
        with os.fdopen(fd, "wb") as fh:
            got, size = _fetch(url, fh, max_bytes, _Tracker(0, progress), cancel, timeout)
        if got != sha256:
            raise ReleaseError(f"sha256 mismatch: expected {sha256} got {got}; the download was discarded and "
                               "nothing was installed")
        shape = _shape(partial)
        fd, staged = tempfile.mkstemp(dir=releases, prefix=f".{installed_name(sha256)}-")
        with os.fdopen(fd, "wb") as out:
            if shape == "zip":
                written = _from_zip(partial, out, max_binary_bytes)
            elif shape == "tar":
                written = _from_tar(partial, out, max_binary_bytes)
            else:
                with open(partial, "rb") as source:
                    written = _copy_member(source, out, size, max_binary_bytes)
            if written == 0:
                raise ReleaseError(f"the {BINARY_NAME} in this release is an empty file; refused")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(staged, 0o755)
        record = {"sha256": sha256, "binary_sha256": sha256_of(staged), "bytes": written, "shape": shape,
                  "file": release_file_name(url)}
        os.replace(staged, final)
        write_private(_record_path(releases, sha256), json.dumps(record))
        return {"binary": str(final), "sha256": sha256, "bytes": written, "already": False}
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ReleaseError("the rig's disk filled up installing the release; nothing was installed") from None
        raise ReleaseError(f"could not install the release in {releases}: {exc.strerror or exc}") from None
    finally:
        for leftover in (partial, staged):
            if leftover is not None:
                Path(leftover).unlink(missing_ok=True)
