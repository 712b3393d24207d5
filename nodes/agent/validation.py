"""Checks for user values that reach paths and URLs on a rig. Plain Python: the panel and the agent share them."""

import re

REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,199}$")
SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+\-]{0,199}$")
SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


class InvalidValue(ValueError):
    pass


def repo_id(value):
    value = (value or "").strip()
    if not REPO_ID_RE.match(value) or ".." in value:
        raise InvalidValue(f"{value!r} is not a Hugging Face repo id (owner/name)")
    return value


def revision(value):
    value = (value or "main").strip()
    if not REVISION_RE.match(value) or ".." in value or value.endswith("/"):
        raise InvalidValue(f"{value!r} is not a valid revision (a branch, tag or commit)")
    return value


def gguf_filename(value):
    """A relative path inside a repo, made of plain segments, ending in .gguf — no traversal, no absolute path."""
    value = (value or "").strip()
    if not value or value.startswith(("/", "\\")) or "\\" in value or "\x00" in value:
        raise InvalidValue(f"{value!r} is not a file name inside the repository")
    parts = value.split("/")
    if len(parts) > 4 or any(part in ("", ".", "..") or not SEGMENT_RE.match(part) for part in parts):
        raise InvalidValue(f"{value!r} is not a safe file name (no '..', no absolute paths, plain characters only)")
    if not value.lower().endswith(".gguf"):
        raise InvalidValue(f"{value!r} is not a GGUF file (.gguf)")
    return value


def split_info(filename):
    """(stem, part, count) for `name-00001-of-00003.gguf`, else None."""
    match = SPLIT_RE.match(filename.rsplit("/", 1)[-1])
    if not match:
        return None
    return match["stem"], int(match["part"]), int(match["count"])


QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])(I?Q[1-8](?:_[0-9])?(?:_[A-Z]{1,2})*|F16|F32|BF16|FP16|MXFP4)(?![A-Za-z0-9])", re.IGNORECASE
)


def quant_from_name(filename):
    name = filename.rsplit("/", 1)[-1]
    found = QUANT_RE.findall(name.replace(".", "-"))
    return found[-1].upper() if found else ""
