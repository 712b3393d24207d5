"""Small random-weight llama-architecture GGUF models that llama-server can load (FACTS.md)."""

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType, quants

# Weight types the writer can produce (gguf's numpy quantizers), with the file type the header then says.
WEIGHT_TYPES = {
    "F32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "F16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "Q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "Q4_0": (GGMLQuantizationType.Q4_0, LlamaFileType.MOSTLY_Q4_0),
    "Q5_0": (GGMLQuantizationType.Q5_0, LlamaFileType.MOSTLY_Q5_0),
}


def write_tiny_llama(path, n_layers=2, width=64, heads=4, kv_heads=4, context=256, pieces=200, seed=0,
                     chat_template=None, name="tiny-test-llama", pad_to=None, ffn=None, weights="F32",
                     tied=False, head_dim=None):
    """Write a llama model of about 650 KB; `pad_to` adds an extra tensor so the file reaches that size.

    Shapes for the fit planner's tests: `ffn` (default 2 × width), `pieces` (the vocabulary beyond the 259 fixed
    tokens), `weights` (a WEIGHT_TYPES name for the 2-D matrices; norms stay F32), `tied` (no output.weight: the
    output reuses token_embd), `head_dim` (default width / heads; otherwise Q is heads × head_dim wide)."""
    qtype, file_type = WEIGHT_TYPES[weights]
    ffn = ffn or width * 2
    head_dim = head_dim or width // heads
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(context)
    writer.add_embedding_length(width)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    if head_dim != width // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(file_type)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"▁w{i}" for i in range(pieces)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    types += [TokenType.NORMAL] * pieces
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(pieces)])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    if chat_template:
        writer.add_chat_template(chat_template)
    vocab = len(tokens)

    def tensor(name, *shape):
        data = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if qtype == GGMLQuantizationType.F32:
            writer.add_tensor(name, data)
        elif qtype == GGMLQuantizationType.F16:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, quants.quantize(data, qtype), raw_dtype=qtype)

    tensor("token_embd.weight", vocab, width)
    q_width = head_dim * heads
    kv_width = head_dim * kv_heads
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(width, dtype=np.float32))
        tensor(f"blk.{i}.attn_q.weight", q_width, width)
        tensor(f"blk.{i}.attn_k.weight", kv_width, width)
        tensor(f"blk.{i}.attn_v.weight", kv_width, width)
        tensor(f"blk.{i}.attn_output.weight", width, q_width)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(width, dtype=np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", ffn, width)
        tensor(f"blk.{i}.ffn_up.weight", ffn, width)
        tensor(f"blk.{i}.ffn_down.weight", width, ffn)
    writer.add_tensor("output_norm.weight", np.ones(width, dtype=np.float32))
    if not tied:
        tensor("output.weight", vocab, width)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if pad_to:
        size = path.stat().st_size
        if pad_to > size:
            # Trailing bytes after the tensor data: llama.cpp ignores them; the file gets the wanted size.
            with open(path, "ab") as fh:
                fh.truncate(pad_to)
    return path
