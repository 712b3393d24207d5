"""Model facts from a GGUF header — from a local file, or over HTTP range requests without the whole file.

Parsing is the `gguf` package's GGUFReader. It cannot open a truncated file, so a remote header is written
into a sparse file of the full size: the fetched prefix is real, the rest reads as zeros. The parse is
trusted only when the reader's data offset (the end of the header) lies inside the fetched prefix;
otherwise twice as much is fetched and the parse repeated.
"""

import os
import tempfile

from gguf import GGUFReader, LlamaFileType

FIRST_FETCH = 1 << 20  # a 32k-vocab header is ~0.7 MB; a 128k-vocab Llama-3 one ~7.8 MB
MAX_HEADER = 256 << 20


class GGUFFactsError(ValueError):
    pass


def _value(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    try:
        return field.contents()
    except Exception:  # an unexpected type in a third-party file: not worth failing the whole read
        return default


def file_type_name(value):
    try:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):
        return None


def facts_from_reader(reader):
    arch = _value(reader, "general.architecture")
    if not arch:
        raise GGUFFactsError("not a model file: general.architecture is missing")

    def arch_value(suffix):
        return _value(reader, f"{arch}.{suffix}")

    parameters = _value(reader, "general.parameter_count")
    if parameters is None:
        parameters = sum(int(t.n_elements) for t in reader.tensors)
    heads = arch_value("attention.head_count")
    kv_heads = arch_value("attention.head_count_kv")
    # Some models store per-layer head counts as arrays; the planner needs the common value.
    if isinstance(heads, list):
        heads = max(heads) if heads else None
    if isinstance(kv_heads, list):
        kv_heads = max(kv_heads) if kv_heads else None
    file_type = _value(reader, "general.file_type")
    return {
        "architecture": arch,
        "name": _value(reader, "general.name") or "",
        "parameters": int(parameters),
        "layers": arch_value("block_count"),
        "context_length": arch_value("context_length"),
        "embedding_length": arch_value("embedding_length"),
        "feed_forward_length": arch_value("feed_forward_length") if not isinstance(arch_value("feed_forward_length"), list) else None,
        "head_count": heads,
        "head_count_kv": kv_heads if kv_heads is not None else heads,
        "file_type": file_type_name(file_type),
        "has_chat_template": bool(_value(reader, "tokenizer.chat_template")),
        "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else None,
        "tensor_count": len(reader.tensors),
        "split_count": _value(reader, "split.count"),
        "header_bytes": int(reader.data_offset),
    }


def read_local(path):
    try:
        return facts_from_reader(GGUFReader(str(path)))
    except GGUFFactsError:
        raise
    except Exception as exc:
        raise GGUFFactsError(f"{os.path.basename(str(path))} is not a readable GGUF file: {exc}") from None


def read_remote(fetch, size, first=FIRST_FETCH):
    """`fetch(start, end)` returns bytes start..end inclusive (an HTTP range request); `size` is the file's size."""
    want = min(first, size)
    with tempfile.TemporaryDirectory(prefix="gguf-head-") as tmp:
        sparse = os.path.join(tmp, "head.gguf")
        prefix = b""
        while True:
            if want > len(prefix):
                prefix += fetch(len(prefix), want - 1)
            if prefix[:4] != b"GGUF":  # without this, a non-GGUF file is fetched up to MAX_HEADER before giving up
                raise GGUFFactsError("not a GGUF file: it does not start with the GGUF magic")
            with open(sparse, "wb") as fh:
                fh.write(prefix)
                fh.truncate(size)
            try:
                reader = GGUFReader(sparse)
                if reader.data_offset <= len(prefix):
                    return {**facts_from_reader(reader), "header_fetched": len(prefix)}
            except GGUFFactsError:
                raise
            except Exception as exc:
                if len(prefix) >= size:
                    raise GGUFFactsError(f"not a readable GGUF file: {exc}") from None
            if len(prefix) >= min(size, MAX_HEADER):
                raise GGUFFactsError(f"GGUF header larger than {MAX_HEADER >> 20} MiB, or not a GGUF file")
            want = min(size, len(prefix) * 2, MAX_HEADER)


def http_fetcher(url, headers=None):
    """A range fetcher through huggingface_hub's HTTP client (retries with backoff, its proxies and TLS)."""
    from huggingface_hub.utils import http_backoff, hf_raise_for_status

    def fetch(start, end):
        response = http_backoff("GET", url, headers={**(headers or {}), "Range": f"bytes={start}-{end}"},
                                follow_redirects=True)
        hf_raise_for_status(response)
        data = response.content
        if response.status_code == 200:  # the server ignored Range: keep only what was asked for
            data = data[start : end + 1]
        return data

    return fetch
