"""The fit planner on published model shapes (built from their tensor shapes and ggml's block sizes), on the seed's
rigs, and the combinations it refuses. Calibration against a real llama-server: tests/test_planner_llama.py."""

import json
import re

import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from models_catalog import planner
from models_catalog.planner import GiB, MiB, HeaderNeedsReading, PlanRefused
from nodes.agent import gguf_facts
from nodes.agent.serverspec import ServerSpec
from tests.gguf_model import write_tiny_llama


def _bytes(qtype, elements):
    block, size = GGML_QUANT_SIZES[qtype]
    return elements // block * size


def published_facts(layers, width, heads, kv_heads, ffn, vocab, context, scheme):
    """Header facts of a llama-shaped model as llama.cpp quantizes it: Q8_0 everywhere, or Q4_K_M (Q4_K, with
    attn_v and ffn_down in Q6_K on the first and last eighth of the layers and every third between, and a Q6_K
    output; llama-quant.cpp use_more_bits)."""
    kv_width = width // heads * kv_heads

    def more_bits(i):
        return i < layers // 8 or i >= 7 * layers // 8 or (i - layers // 8) % 3 == 2

    base = Q.Q8_0 if scheme == "Q8_0" else Q.Q4_K
    layer_bytes = []
    for i in range(layers):
        high = Q.Q8_0 if scheme == "Q8_0" else (Q.Q6_K if more_bits(i) else Q.Q4_K)
        layer = 2 * width * 4  # attn_norm, ffn_norm (F32)
        layer += 2 * _bytes(base, width * width) + _bytes(base, kv_width * width) + _bytes(high, kv_width * width)
        layer += 2 * _bytes(base, ffn * width) + _bytes(high, ffn * width)
        layer_bytes.append(layer)
    return {
        "planner_facts": 1, "architecture": "llama", "layers": layers, "embedding_length": width,
        "head_count": heads, "head_count_kv": kv_heads, "feed_forward_length": ffn, "vocab_size": vocab,
        "context_length": context, "file_type": scheme, "layer_bytes": layer_bytes,
        "token_embd_bytes": _bytes(base, vocab * width),
        "output_bytes": _bytes(Q.Q8_0 if scheme == "Q8_0" else Q.Q6_K, vocab * width) + width * 4,
        "other_bytes": width // heads // 2 * 4,  # rope_freqs (Llama 3.1's rope scaling factors)
        "output_tied": False, "tensors_complete": True, "key_length": width // heads,
        "value_length": width // heads, "head_count_kv_layers": None,
    }


def llama_8b(scheme):  # Llama-3.1-8B: 32 layers, width 4096, 32 heads, 8 KV heads
    return published_facts(32, 4096, 32, 8, 14336, 128256, 131072, scheme)


def llama_70b(scheme="Q4_K_M"):
    return published_facts(80, 8192, 64, 8, 28672, 128256, 131072, scheme)


def tinyllama():  # TinyLlama-1.1B-Chat-v1.0, the seed's model: 22 layers, width 2048, 32 heads, 4 KV heads
    return published_facts(22, 2048, 32, 4, 5632, 32000, 2048, "Q4_K_M")


def weights(facts):
    return sum(facts["layer_bytes"]) + facts["token_embd_bytes"] + facts["output_bytes"] + facts["other_bytes"]


def rig(*vram_gib, name="NVIDIA GeForce RTX 3090", ram_gib=64, cores=16, threads=None):
    return {"ram_total": ram_gib * GiB, "cpu_cores_physical": cores, "cpu_cores_logical": threads or cores * 2,
            "gpus": [{"index": i, "name": name, "vram_total": int(v * GiB)} for i, v in enumerate(vram_gib)]}


SEED_RIG = rig(24, 24, cores=16, threads=24)  # the seed build: 2× RTX 3090, 64 GB RAM, i7-13700K (8P + 8E cores)
CPU_RIG = rig(ram_gib=32, cores=8)
SEED_SINGLE = {"ctx_size": 8192, "n_gpu_layers": 99, "parallel": 4, "flash_attn": "auto"}
SEED_DUAL = {"ctx_size": 8192, "n_gpu_layers": 99, "parallel": 22, "flash_attn": "auto", "tensor_split": "1,1"}


def spare_in(summary):
    return float(re.search(r"with ([\d.]+) GB to spare", summary).group(1))


def test_the_synthetic_llama_8b_files_weigh_what_the_published_ones_do():
    # bartowski/Meta-Llama-3.1-8B-Instruct-GGUF: Q8_0 8.54 GB, Q4_K_M 4.92 GB
    assert weights(llama_8b("Q8_0")) == pytest.approx(8.54e9, rel=0.005)
    assert weights(llama_8b("Q4_K_M")) == pytest.approx(4.92e9, rel=0.005)
    assert weights(llama_70b()) == pytest.approx(42.5e9, rel=0.01)


def test_it_sizes_the_kv_cache_from_layers_context_kv_width_and_cache_type():
    facts = llama_8b("Q8_0")
    plan = planner.plan(facts, rig(80), ctx_size=8192, parallel=1)
    assert sum(d.kv for d in plan.devices) == 32 * 8192 * 2 * (8 * 128) * 2  # exactly 1 GiB
    q8 = planner.plan(facts, rig(80), ctx_size=8192, parallel=1, cache_type_k="q8_0", cache_type_v="q8_0")
    assert sum(d.kv for d in q8.devices) == 32 * 8192 * 2 * (8 * 128) * 34 // 32
    mixed = planner.plan(facts, rig(80), ctx_size=8192, parallel=1, cache_type_k="q4_0", cache_type_v="f16")
    assert sum(d.kv for d in mixed.devices) == 32 * 8192 * (8 * 128) * (18 / 32 + 2)


def test_grouped_query_attention_shrinks_the_kv_cache_by_the_head_ratio():
    gqa, mha = llama_8b("Q8_0"), {**llama_8b("Q8_0"), "head_count_kv": 32}
    kv = [sum(d.kv for d in planner.plan(f, rig(80), ctx_size=4096, parallel=1).devices) for f in (gqa, mha)]
    assert kv[1] == 4 * kv[0]


def test_each_slot_gets_its_own_kv_stream_padded_to_256_cells():
    assert planner.kv_cells(8192, 4) == (8192, 2048)
    assert planner.kv_cells(1000, 3) == (1536, 512)  # pad(1000)=1024, /3=341 -> 512 per slot
    assert planner.kv_cells(8192, 22) == (22 * 512, 512)  # the seed's dual-GPU preset: 372 tokens -> 512 cells


def test_llama_8b_q8_0_fits_one_rtx_3090_with_the_seed_flags():
    plan = planner.plan(llama_8b("Q8_0"), rig(24), **SEED_SINGLE)
    assert plan.fits
    gpu, host = plan.devices
    assert (gpu.layers, gpu.output) == (32, True)
    assert gpu.weights == weights(llama_8b("Q8_0")) - llama_8b("Q8_0")["token_embd_bytes"]
    assert host.weights == llama_8b("Q8_0")["token_embd_bytes"]  # llama.cpp keeps the input embedding on the CPU
    assert gpu.kv == 1 * GiB
    # With flash attention the feed-forward phase peaks: 512 tokens × (4 × 4096 + 3 × 14336) f32, and the inputs.
    assert 116 * MiB < gpu.compute < 125 * MiB
    assert gpu.overhead == planner.CUDA_OVERHEAD
    assert re.fullmatch(r"fits on RTX 3090 with [\d.]+ GB to spare", plan.summary)
    assert spare_in(plan.summary) == pytest.approx(plan.spare / GiB, abs=0.05)
    assert 14 < spare_in(plan.summary) < 15.5
    assert plan.flags == {"n_gpu_layers": 99, "tensor_split": "", "ctx_size": 8192, "parallel": 4, "threads": 16,
                          "flash_attn": "auto", "cache_type_k": "f16", "cache_type_v": "f16"}


def test_q4_k_m_leaves_more_room_than_q8_0_and_takes_a_larger_context():
    q8, q4 = (planner.plan(llama_8b(s), rig(24), parallel=4) for s in ("Q8_0", "Q4_K_M"))
    assert q8.fits and q4.fits
    assert q4.max_ctx_size > q8.max_ctx_size
    assert q4.flags["ctx_size"] == q4.max_ctx_size  # left to the planner: the largest that fits
    assert q4.flags["ctx_size"] % (256 * 4) == 0
    # The largest leaves HEADROOM on the GPU; one more 256-token step per slot would not.
    at_most = planner.plan(llama_8b("Q4_K_M"), rig(24), ctx_size=q4.max_ctx_size, parallel=4)
    one_more = planner.plan(llama_8b("Q4_K_M"), rig(24), ctx_size=q4.max_ctx_size + 1024, parallel=4)
    assert at_most.devices[0].spare >= planner.HEADROOM > one_more.devices[0].spare


def test_without_flash_attention_the_kq_matrix_grows_the_compute_buffer():
    on = planner.plan(llama_8b("Q8_0"), rig(24), ctx_size=8192, parallel=1, flash_attn="on").devices[0]
    off = planner.plan(llama_8b("Q8_0"), rig(24), ctx_size=8192, parallel=1, flash_attn="off").devices[0]
    assert off.compute > 8192 * 512 * 32 * 4 > 4 * on.compute  # 512 MiB of KQ scores


def test_the_seed_dual_3090_rig_splits_llama_8b_over_both_gpus():
    plan = planner.plan(llama_8b("Q4_K_M"), SEED_RIG, **SEED_DUAL)
    assert plan.fits
    first, second, host = plan.devices
    assert first.layers + second.layers == 32 and abs(first.layers - second.layers) <= 2
    assert second.output and not first.output  # the output layer goes last, on the last GPU
    assert first.kv > 0 and second.kv > 0
    assert sum(g.kv for g in (first, second)) == 32 * 22 * 512 * 2 * 1024 * 2
    assert plan.summary.startswith("fits on 2× RTX 3090 with ")
    assert 38 < spare_in(plan.summary) < 44
    assert plan.flags["tensor_split"] == "1,1" and plan.flags["parallel"] == 22


def test_the_seed_dual_command_for_tinyllama_asks_more_per_slot_than_it_was_trained_on():
    # ctx-size 135168 over 22 slots is 6144 tokens each; TinyLlama was trained on 2048
    with pytest.raises(PlanRefused, match=r"6144 tokens, above the 2048 .* use ctx-size 45056 or less"):
        planner.plan(tinyllama(), SEED_RIG, ctx_size=135168, parallel=22, n_gpu_layers=99, tensor_split="1,1")
    plan = planner.plan(tinyllama(), SEED_RIG, ctx_size=135168, parallel=22, n_gpu_layers=99, tensor_split="1,1",
                        rope_scaling=True)
    assert plan.fits


def test_a_70b_does_not_fit_one_24_gb_gpu_and_the_plan_says_what_would():
    siblings = [("IQ1_S", 16_751_195_936), ("Q2_K", 26_375_108_192), ("Q4_K_M", 42_520_395_584)]
    plan = planner.plan(llama_70b(), rig(24), ctx_size=8192, parallel=4, siblings=siblings, this_quant="Q4_K_M")
    assert not plan.fits
    needed = float(re.match(r"needs ([\d.]+) GB, rig has 24 GB — try IQ1_S, or n-gpu-layers (\d+) \(the rest on "
                            r"the CPU, slower\)$", plan.summary).group(1))
    assert 41 < needed < 44
    # The flags still run: the most layers that fit, the rest on the CPU.
    assert 40 < plan.flags["n_gpu_layers"] < 50
    assert all(d.fits for d in plan.devices)
    assert any("run on the CPU" in w for w in plan.warnings)


def test_a_70b_fits_the_seed_dual_3090_rig_at_8k():
    plan = planner.plan(llama_70b(), SEED_RIG, ctx_size=8192, parallel=1)
    assert plan.fits and plan.flags["n_gpu_layers"] == 81
    assert plan.summary.startswith("fits on 2× RTX 3090 with ")


def test_a_smaller_context_is_suggested_when_that_is_what_fits():
    plan = planner.plan(llama_8b("Q8_0"), rig(12), ctx_size=65536, parallel=1, n_gpu_layers=99)
    assert not plan.fits
    match = re.match(r"needs [\d.]+ GB, rig has 12 GB — try ctx-size (\d+)$", plan.summary)
    suggested = int(match.group(1))
    assert planner.plan(llama_8b("Q8_0"), rig(12), ctx_size=suggested, parallel=1, n_gpu_layers=99).fits


def test_a_cpu_only_rig_plans_everything_in_ram():
    plan = planner.plan(llama_8b("Q4_K_M"), CPU_RIG, ctx_size=8192, parallel=1)
    assert plan.fits and len(plan.devices) == 1
    host = plan.devices[0]
    assert host.weights == weights(llama_8b("Q4_K_M"))
    assert host.kv == 1 * GiB and host.overhead < 10 * MiB  # no CUDA context, only the logits buffer
    assert plan.flags["n_gpu_layers"] == 0 and plan.flags["threads"] == 8 and plan.flags["tensor_split"] == ""
    assert re.match(r"runs on the CPU only \(no GPU\): needs [\d.]+ GB of 32 GB RAM, [\d.]+ GB to spare$", plan.summary)
    small = planner.plan(llama_8b("Q4_K_M"), rig(ram_gib=4), ctx_size=8192, parallel=1)
    assert not small.fits and re.match(r"needs [\d.]+ GB of RAM, rig has 4 GB", small.summary)


def test_layers_split_in_proportion_to_vram_or_to_the_tensor_split():
    facts = llama_8b("Q4_K_M")
    uneven = planner.plan(facts, rig(24, 12), ctx_size=4096, parallel=1)
    big, small = uneven.devices[:2]
    assert big.layers + small.layers == 32 and big.layers == pytest.approx(2 * small.layers, abs=2)
    forced = planner.plan(facts, rig(24, 24), ctx_size=4096, parallel=1, tensor_split="1,3")
    assert forced.devices[0].layers == pytest.approx(33 / 4, abs=1)


def test_the_output_layer_counts_as_one_more_layer_to_offload():
    facts = llama_8b("Q4_K_M")
    all_but_output = planner.plan(facts, rig(24), ctx_size=4096, parallel=1, n_gpu_layers=32)
    gpu, host = all_but_output.devices
    assert gpu.output and gpu.layers == 31 and host.layers == 1  # llama.cpp offloads from the last layer down
    only_output = planner.plan(facts, rig(24), ctx_size=4096, parallel=1, n_gpu_layers=1).devices
    assert only_output[0].output and only_output[0].layers == 0 and only_output[1].layers == 32


@pytest.mark.parametrize("changes, reason", [
    ({"ctx_size": 140000, "parallel": 1}, r"140000 tokens, above the 131072 the model was trained on"),
    ({"parallel": 0}, r"parallel must be between 1 and 256 \(got 0\)"),
    ({"tensor_split": "1,1,1"}, r"3 share\(s\) for the rig's 2 GPU\(s\)"),
    ({"tensor_split": "0,0"}, r"at least one GPU a share"),
    ({"tensor_split": "a,b"}, r"must be numbers"),
    ({"n_gpu_layers": 40}, r"n-gpu-layers 40 is more than the model's 32 layers .* use 33 or 99"),
    ({"cache_type_v": "q8_0", "flash_attn": "off"}, r"needs flash attention"),
    ({"cache_type_k": "q9"}, r"cache-type-k must be one of"),
    ({"ctx_size": 100}, r"ctx-size must be between 256"),
])
def test_it_refuses_combinations_llama_server_cannot_run(changes, reason):
    with pytest.raises(PlanRefused, match=reason):
        planner.plan(llama_8b("Q4_K_M"), SEED_RIG, **changes)


def test_it_accepts_the_usual_spellings_of_all_layers_and_a_rope_setting():
    for ngl in (33, 99, 999):
        assert planner.plan(llama_8b("Q4_K_M"), SEED_RIG, ctx_size=8192, n_gpu_layers=ngl).devices[1].output
    assert planner.plan(llama_8b("Q4_K_M"), SEED_RIG, ctx_size=140000, parallel=1, rope_scaling=True).max_ctx_size


def test_it_refuses_gpu_flags_on_a_rig_without_gpus():
    with pytest.raises(PlanRefused, match="without GPUs: use 0"):
        planner.plan(llama_8b("Q4_K_M"), CPU_RIG, n_gpu_layers=99)
    with pytest.raises(PlanRefused, match="tensor split on a rig without GPUs"):
        planner.plan(llama_8b("Q4_K_M"), CPU_RIG, tensor_split="1,1")


def test_facts_read_before_the_planner_ask_for_the_header_again():
    old = {k: v for k, v in llama_8b("Q8_0").items() if k != "planner_facts"}
    with pytest.raises(HeaderNeedsReading, match="read it again"):
        planner.plan(old, SEED_RIG)
    with pytest.raises(HeaderNeedsReading, match="not been read"):
        planner.plan({}, SEED_RIG)
    with pytest.raises(PlanRefused, match="not reported its hardware"):
        planner.plan(llama_8b("Q8_0"), {})


@pytest.mark.parametrize("bad", [
    {"layer_bytes": [1, 2]}, {"layer_bytes": ["x"] * 32}, {"layer_bytes": [-1] * 32}, {"layers": True},
    {"head_count": 0}, {"token_embd_bytes": "1"}, {"head_count_kv_layers": [8] * 3}, {"context_length": None},
])
def test_malformed_facts_from_a_rig_are_refused_not_trusted(bad):
    with pytest.raises(PlanRefused):
        planner.plan({**llama_8b("Q8_0"), **bad}, SEED_RIG)


def test_a_split_model_is_planned_from_its_whole_size():
    facts = {**llama_8b("Q8_0"), "tensors_complete": False, "layer_bytes": [0] * 32}
    with pytest.raises(PlanRefused, match="split model's size"):
        planner.plan(facts, SEED_RIG)
    plan = planner.plan(facts, SEED_RIG, ctx_size=8192, model_bytes=weights(llama_8b("Q8_0")))
    whole = planner.plan(llama_8b("Q8_0"), SEED_RIG, ctx_size=8192)
    assert sum(d.weights for d in plan.devices) == pytest.approx(sum(d.weights for d in whole.devices), rel=0.001)


def test_the_max_context_note_says_how_far_a_quantized_cache_goes():
    plan = planner.plan(llama_8b("Q4_K_M"), rig(24), ctx_size=8192, parallel=1)
    assert plan.max_ctx_size == 131072  # the trained context caps it: one slot, no rope setting
    plan = planner.plan(llama_8b("Q8_0"), rig(16), ctx_size=8192, parallel=4)
    note = re.search(r"; (\d+) with --cache-type-k q8_0 --cache-type-v q8_0$", plan.max_ctx_note)
    assert plan.max_ctx_note.startswith("every layer on the GPUs, f16/f16 KV cache, 4 slot(s)")
    assert int(note.group(1)) > plan.max_ctx_size


def test_facts_from_a_real_header_carry_the_planner_keys_and_stay_small(tmp_path):
    path = write_tiny_llama(tmp_path / "deep.gguf", n_layers=128, width=64, heads=4, kv_heads=2, tied=True)
    facts = gguf_facts.read_local(path)
    assert facts["planner_facts"] == gguf_facts.PLANNER_FACTS
    assert len(facts["layer_bytes"]) == 128 and len(set(facts["layer_bytes"])) == 1
    assert facts["output_tied"] is True and facts["output_bytes"] == 64 * 4  # output_norm only
    assert (facts["key_length"], facts["value_length"]) == (16, 16)
    assert len(json.dumps(facts)) < 4096
    total = sum(facts["layer_bytes"]) + facts["token_embd_bytes"] + facts["output_bytes"] + facts["other_bytes"]
    assert total == path.stat().st_size - facts["header_bytes"]
    plan = planner.plan(facts, rig(24), ctx_size=256, parallel=1)
    # Tied: the output layer on the GPU gets its own copy of the embeddings.
    assert plan.devices[0].weights == sum(facts["layer_bytes"]) + facts["output_bytes"] + facts["token_embd_bytes"]


def test_every_layer_on_two_gpus_pipelines_and_keeps_four_copies_of_each_split_input():
    facts = llama_8b("Q4_K_M")
    piped = planner.plan(facts, SEED_RIG, ctx_size=8192, parallel=4, n_gpu_layers=33).devices
    plain = planner.plan(facts, SEED_RIG, ctx_size=8192, parallel=4, n_gpu_layers=32).devices
    residual_and_mask = 512 * 4096 * 4 + 2048 * 512 * 2
    assert piped[0].compute - plain[0].compute > 3 * residual_and_mask
    single = planner.plan(facts, rig(48), ctx_size=8192, parallel=4, n_gpu_layers=33).devices
    assert single[0].compute < piped[0].compute  # one GPU: nothing to pipeline


def test_check_refuses_from_facts_and_hardware_as_a_form_would_call_it():
    planner.check(llama_8b("Q4_K_M"), SEED_RIG, ctx_size=8192, parallel=4, n_gpu_layers=99, tensor_split="1,1")
    with pytest.raises(PlanRefused, match="2 share"):
        planner.check(llama_8b("Q4_K_M"), rig(24), tensor_split="1,1")


def test_threads_are_the_performance_cores():
    assert planner.plan(llama_8b("Q4_K_M"), SEED_RIG, ctx_size=8192).flags["threads"] == 8  # the seed's --threads 8
    assert planner.math_cores(16, 32) == 16  # every core with two threads
    assert planner.math_cores(2, 2) == 2  # no SMT
    assert planner.math_cores(None, 8) is None and planner.math_cores(True, 8) is None


@pytest.mark.parametrize("facts, hardware", [
    (llama_8b("Q4_K_M"), SEED_RIG), (llama_70b(), rig(24)), (llama_8b("Q8_0"), CPU_RIG), (tinyllama(), SEED_RIG),
])
def test_the_recommended_flags_make_a_valid_server_spec(facts, hardware):
    flags = planner.plan(facts, hardware).flags
    ServerSpec(deployment_id=1, binary="/opt/llama-server", model_path="/models/m.gguf", port=8080, **flags)


def test_per_layer_kv_heads_size_each_layers_cache_and_say_what_is_not_counted():
    facts = {**llama_8b("Q8_0"), "head_count_kv_layers": [8, 0] * 16}  # a hybrid: every other layer recurrent
    plan = planner.plan(facts, rig(80), ctx_size=8192, parallel=1)
    assert sum(d.kv for d in plan.devices) == 16 * 8192 * 2 * (8 * 128) * 2
    assert any("no attention" in w for w in plan.warnings)
