"""Model facts from a GGUF header — from a local file, or over HTTP range requests without the whole file.

Parsing is the `gguf` package's GGUFReader. It cannot open a truncated file, so a remote header is written
into a sparse file of the full size: the fetched prefix is real, the rest reads as zeros. The parse is
trusted only when the reader's data offset (the end of the header) lies inside the fetched prefix;
otherwise twice as much is fetched and the parse repeated.
"""

import os
import re
import tempfile

from gguf import GGUFReader, LlamaFileType

FIRST_FETCH = 1 << 20  # a 32k-vocab header is ~0.7 MB; a 128k-vocab Llama-3 one ~7.8 MB
MAX_HEADER = 256 << 20


# Bumped when facts gain what the fit planner reads; facts without it were read before and need reading again.
PLANNER_FACTS = 1
_LAYER_TENSOR = re.compile(r"^blk\.(\d{1,5})\.")


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
    return {**_basic_facts(reader, arch, arch_value, parameters, heads, kv_heads, file_type),
            **_planner_facts(reader, arch_value)}


def _basic_facts(reader, arch, arch_value, parameters, heads, kv_heads, file_type):
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


def _int_or_none(value):
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _planner_facts(reader, arch_value):
    """What the fit planner needs beyond the basic facts: exact weight bytes per layer from the tensor infos,
    and the attention shapes that size the KV cache. A few KB at most (one number per layer).

    Where llama.cpp puts them: token_embd stays on the CPU; output.weight and output_norm go with the output
    layer; a file without output.weight ties it to token_embd (llama.cpp then loads a second copy on the
    output layer's device). A split model's first file lists only its own tensors: `tensors_complete` says so.
    """
    layers = _int_or_none(arch_value("block_count")) or 0
    layer_bytes = [0] * layers
    token_embd = output = other = 0
    has_output = False
    for tensor in reader.tensors:
        name, size = tensor.name, int(tensor.n_bytes)
        match = _LAYER_TENSOR.match(name)
        if match and int(match.group(1)) < layers:
            layer_bytes[int(match.group(1))] += size
        elif name == "token_embd.weight":
            token_embd += size
        elif name.startswith(("output.", "output_norm.")):
            output += size
            has_output = has_output or name == "output.weight"
        else:  # rope_freqs, token_embd_norm, position embeddings: small, kept with the output layer
            other += size
    heads = arch_value("attention.head_count")
    kv_heads = arch_value("attention.head_count_kv")
    width = _int_or_none(arch_value("embedding_length"))
    common_heads = max(heads) if isinstance(heads, list) and heads else _int_or_none(heads)
    head_width = width // common_heads if width and common_heads else None
    split_count = _int_or_none(_value(reader, "split.count")) or 1
    return {
        "planner_facts": PLANNER_FACTS,
        "layer_bytes": layer_bytes,
        "token_embd_bytes": token_embd,
        "output_bytes": output,
        "output_tied": not has_output and split_count <= 1,  # a split model's output may sit in another file
        "other_bytes": other,
        "tensors_complete": split_count <= 1,
        "key_length": _int_or_none(arch_value("attention.key_length")) or head_width,
        "value_length": _int_or_none(arch_value("attention.value_length")) or head_width,
        # Per-layer counts only when the header stores an array (0 = a layer without attention, e.g. hybrids).
        "head_count_kv_layers": [int(v) for v in kv_heads] if isinstance(kv_heads, list) else None,
        # MoE: every expert's weights sit in memory (layer_bytes already counts them); only the compute
        # buffer differs a little. The planner warns rather than models it.
        "expert_count": _int_or_none(arch_value("expert_count")),
        "expert_used_count": _int_or_none(arch_value("expert_used_count")),
        "sliding_window": _int_or_none(arch_value("attention.sliding_window")),
        "rope_scaling": _text_or_none(arch_value("rope.scaling.type")),
        "rope_scaling_factor": _float_or_none(arch_value("rope.scaling.factor")),
    }


def _float_or_none(value):
    return float(value) if _int_or_none(value) is not None else None


def _text_or_none(value):
    return value if isinstance(value, str) and value else None


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
