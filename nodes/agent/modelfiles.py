"""GGUF files on the rig's disk: scanning the models folders, a manifest of verified files, deleting safely."""

import json
import os
import threading
from pathlib import Path

from . import gguf_facts, validation

_manifest_lock = threading.Lock()


class ModelFileError(Exception):
    pass


class Manifest:
    """path → {size, mtime, sha256}: what this agent downloaded and verified, so a scan can say so without rehashing."""

    def __init__(self, state_dir):
        self.path = Path(state_dir) / "verified.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _load(self):
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def record(self, path, sha256):
        stat = os.stat(path)
        with _manifest_lock:
            data = self._load()
            data[str(path)] = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": sha256}
            self._save(data)

    def forget(self, path):
        with _manifest_lock:
            data = self._load()
            if data.pop(str(path), None) is not None:
                self._save(data)

    def lookup(self, path):
        entry = self._load().get(str(path))
        if entry is None:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        if stat.st_size != entry["size"] or abs(stat.st_mtime - entry["mtime"]) > 1e-3:
            return None  # changed since it was verified
        return entry["sha256"]

    def _save(self, data):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)


def _shards_of(first):
    split = validation.split_info(first.name)
    if not split:
        return [first]
    stem, _part, count = split
    return [first.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def describe(path, manifest, repo_id="", filename=""):
    """One file (or split model, named by its first shard) as a model_files report entry, facts read locally."""
    path = Path(path)
    shards = _shards_of(path)
    present = [s for s in shards if s.exists()]
    entry = {
        "path": str(path),
        "size": sum(s.stat().st_size for s in present),
        "sha256": "",
        "verified": False,
        "repo_id": repo_id,
        "filename": filename,
        "facts": {},
        "facts_error": "",
        "shard_paths": [str(s) for s in shards] if len(shards) > 1 else [],
    }
    if len(present) < len(shards):
        entry["facts_error"] = f"{len(shards) - len(present)} of {len(shards)} parts missing"
    sha = manifest.lookup(path)
    if sha and len(shards) == 1:
        entry.update(sha256=sha, verified=True)
    elif len(shards) > 1 and all(manifest.lookup(s) for s in shards):
        entry["verified"] = True
    try:
        entry["facts"] = gguf_facts.read_local(path)
    except gguf_facts.GGUFFactsError as exc:
        entry["facts_error"] = entry["facts_error"] or str(exc)
    return entry


def scan(model_dirs, manifest):
    """Every GGUF model under the folders; split models once, by their first part; partial downloads skipped."""
    found = []
    for root in model_dirs:
        root = Path(root).resolve()  # the same absolute name a download gives a file (and the manifest keys it by)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.gguf")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            split = validation.split_info(path.name)
            if split and split[1] != 1:
                continue
            repo_id = filename = ""
            relative = path.relative_to(root).parts
            if root.name == "models" and len(relative) >= 2 and "__" in relative[0]:
                repo_id, filename = relative[0].replace("__", "/", 1), "/".join(relative[1:])
            found.append(describe(path, manifest, repo_id, filename))
    return found


def delete(path, model_dirs, manifest):
    """Remove a model file (all parts of a split model); only inside the rig's model folders. Returns what went."""
    target = Path(path)
    if not target.is_absolute() or target.suffix.lower() != ".gguf":
        raise ModelFileError(f"{path} is not a GGUF file path")
    resolved = target.resolve()
    roots = [Path(d).resolve() for d in model_dirs]
    if not any(root in resolved.parents for root in roots):
        raise ModelFileError(f"{path} is outside the rig's model folders; refusing to delete it")
    removed = []
    for shard in _shards_of(resolved):
        if shard.exists():
            shard.unlink()
            removed.append(str(shard))
        manifest.forget(shard)
    return removed
