"""Small random-weight llama-architecture GGUF models that llama-server can load (FACTS.md)."""

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType


def write_tiny_llama(path, n_layers=2, width=64, heads=4, kv_heads=4, context=256, pieces=200, seed=0,
                     chat_template=None, name="tiny-test-llama", pad_to=None):
    """Write a llama model of about 650 KB; `pad_to` adds an extra tensor so the file reaches that size."""
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(context)
    writer.add_embedding_length(width)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(width * 2)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(width // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(LlamaFileType.ALL_F32)
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
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("token_embd.weight", vocab, width)
    kv_width = width // heads * kv_heads
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(width, dtype=np.float32))
        tensor(f"blk.{i}.attn_q.weight", width, width)
        tensor(f"blk.{i}.attn_k.weight", kv_width, width)
        tensor(f"blk.{i}.attn_v.weight", kv_width, width)
        tensor(f"blk.{i}.attn_output.weight", width, width)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(width, dtype=np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", width * 2, width)
        tensor(f"blk.{i}.ffn_up.weight", width * 2, width)
        tensor(f"blk.{i}.ffn_down.weight", width, width * 2)
    writer.add_tensor("output_norm.weight", np.ones(width, dtype=np.float32))
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
