"""The panel's side of the Hugging Face Hub: search, repo listings and GGUF facts over range requests.

Every call goes through huggingface_hub (it honours HF_ENDPOINT, proxies, retries) and the panel's token;
errors come back as HubError with a message fit for the page. The token never appears in a message.
"""

import logging

from django.conf import settings

from models_catalog.models import HubSettings
from nodes.agent import gguf_facts, validation

log = logging.getLogger("morpheus.hub")


class HubError(Exception):
    pass


def _api():
    from huggingface_hub import HfApi

    return HfApi(endpoint=settings.HF_ENDPOINT, token=HubSettings.token_value() or False)


def _explain(exc, repo_id=None, revision=None):
    from huggingface_hub import errors

    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, errors.GatedRepoError):
        return HubError(f"{repo_id} is gated: accept its terms on Hugging Face and set a token with access "
                        f"(Models → Hub token). The Hub answered {exc.response.status_code}.")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(f"repository {repo_id} not found (or it is private and no valid token is set)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(f"revision {revision!r} not found in {repo_id}")
    if isinstance(exc, (errors.RemoteEntryNotFoundError, errors.EntryNotFoundError)):
        return HubError(f"file not found in {repo_id}")
    if isinstance(exc, errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            return HubError(f"the Hub refused access to {repo_id or 'the request'} (HTTP {status}): check the token")
        return HubError(f"the Hub answered HTTP {status}")
    log.warning("Hugging Face request failed: %s", type(exc).__name__)
    return HubError(f"could not reach Hugging Face at {settings.HF_ENDPOINT} ({type(exc).__name__})")


def search(query, limit=30):
    """GGUF repos first (the ones a rig can host), then other matches."""
    query = (query or "").strip()
    if not query:
        return []
    if len(query) > 100:
        raise HubError("search text is too long (100 characters at most)")
    api = _api()
    try:
        gguf = list(api.list_models(search=query, filter="gguf", sort="downloads", limit=limit))
        others = list(api.list_models(search=query, sort="downloads", limit=limit)) if len(gguf) < limit else []
    except Exception as exc:
        raise _explain(exc) from None
    seen, results = set(), []
    for info, is_gguf in [(m, True) for m in gguf] + [(m, False) for m in others]:
        if info.id in seen:
            continue
        seen.add(info.id)
        results.append({"repo_id": info.id, "downloads": info.downloads or 0, "likes": info.likes or 0,
                        "gguf": is_gguf or "gguf" in (info.tags or []), "gated": bool(getattr(info, "gated", False))})
    return results[:limit]


def repo_gguf_files(repo_id, revision="main"):
    """The repo's GGUF models: single files, and split files grouped as one entry with their shards."""
    repo_id = validation.repo_id(repo_id)
    revision = validation.revision(revision)
    try:
        info = _api().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:
        raise _explain(exc, repo_id, revision) from None
    groups = {}
    for sibling in info.siblings or []:
        name = sibling.rfilename
        if not name.lower().endswith(".gguf"):
            continue
        try:
            validation.gguf_filename(name)
        except validation.InvalidValue:
            continue  # a name we would refuse to write on a rig is not offered
        shard = {"filename": name, "size": sibling.size,
                 "sha256": sibling.lfs.sha256 if sibling.lfs else None}
        split = validation.split_info(name)
        key = (name.rsplit("/", 1)[0] + "/" if "/" in name else "") + split[0] if split else name
        entry = groups.setdefault(key, {"shards": [], "split": bool(split), "count": split[2] if split else 1})
        entry["shards"].append(shard)
    files = []
    for entry in groups.values():
        shards = sorted(entry["shards"], key=lambda s: s["filename"])
        sizes = [s["size"] for s in shards]
        files.append({
            "filename": shards[0]["filename"],
            "shards": shards if entry["split"] else [],
            "complete": len(shards) == entry["count"],
            "size": sum(sizes) if None not in sizes else None,
            "quant": validation.quant_from_name(shards[0]["filename"]),
            "sha256": shards[0]["sha256"],
        })
    files.sort(key=lambda f: (f["size"] is None, f["size"] or 0))
    return {"repo_id": info.id, "sha": info.sha, "downloads": getattr(info, "downloads", None),
            "likes": getattr(info, "likes", None), "files": files}


def remote_facts(repo_id, filename, revision="main", size=None):
    """Facts from the header of a file on the Hub, fetched with range requests (never the whole file)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    token = HubSettings.token_value() or False
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=settings.HF_ENDPOINT)
    try:
        if size is None:
            size = get_hf_file_metadata(url, token=token).size
        return gguf_facts.read_remote(gguf_facts.http_fetcher(url, build_hf_headers(token=token)), size)
    except gguf_facts.GGUFFactsError as exc:
        raise HubError(str(exc)) from None
    except Exception as exc:
        raise _explain(exc, repo_id, revision) from None
