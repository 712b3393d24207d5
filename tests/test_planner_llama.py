"""The fit planner against the real thing: generated GGUF models of several shapes, loaded by the CPU llama-server
built from source, whose load log states every buffer it allocates — and llama.cpp's own `llama-fit-params`
estimate from the same build. The planner must land within 10% of both."""

import re
import subprocess
import threading

import pytest

from models_catalog import planner
from models_catalog.planner import MiB
from nodes.agent import gguf_facts
from tests import llama
from tests.gguf_model import write_tiny_llama
from tests.harness import wait_until
from morpheus_admin.localredis import free_port

# "load_tensors:   CPU_Mapped model buffer size =    16.75 MiB", "llama_kv_cache:        CPU KV buffer size = ...",
# "sched_reserve:        CPU compute buffer size = ...", "llama_context:        CPU  output buffer size = ..."
BUFFER_RE = re.compile(r"(?P<buffer>\S+)\s+(?P<part>model|KV|compute|output) buffer size =\s+(?P<mib>[\d.]+) MiB")
PROJECTED_RE = re.compile(r"projected to use (?P<mib>\d+) MiB of host memory")
CPU_RIG = {"ram_total": 64 << 30, "cpu_cores_physical": 2, "gpus": []}

# name: (writer shape, ctx-size, parallel, flash-attn, cache types)
SHAPES = {
    "f32-mha": (dict(n_layers=4, width=256, heads=4, kv_heads=4, ffn=768, pieces=3000, context=2048),
                2048, 1, "on", ("f16", "f16")),
    "f16-gqa-4-slots-no-flash": (dict(n_layers=6, width=512, heads=8, kv_heads=2, ffn=1536, pieces=6000,
                                      context=1024, weights="F16"), 4096, 4, "off", ("f16", "f16")),
    "f32-gqa-5-padded-slots": (dict(n_layers=4, width=256, heads=8, kv_heads=2, ffn=768, pieces=3000,
                                    context=1024), 3000, 5, "on", ("f16", "f16")),  # 5 × 768 cells, not 3000
    "q8_0-gqa": (dict(n_layers=4, width=512, heads=8, kv_heads=2, ffn=1536, pieces=6000, context=8192,
                      weights="Q8_0"), 8192, 2, "auto", ("f16", "f16")),
    "q8_0-tied-mqa-q8-cache": (dict(n_layers=3, width=768, heads=12, kv_heads=1, ffn=2048, pieces=12000,
                                    context=4096, weights="Q8_0", tied=True), 4096, 1, "on", ("q8_0", "q8_0")),
    "q4_0-wide-heads-no-flash": (dict(n_layers=2, width=256, heads=8, kv_heads=2, head_dim=128, ffn=4096,
                                      pieces=30000, context=2048, weights="Q4_0"), 2048, 1, "off", ("f16", "f16")),
}


@pytest.fixture(scope="module")
def server_binary():
    return llama.server_binary()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planner-models")
    return {name: write_tiny_llama(folder / f"{name}.gguf", name=name, **shape)
            for name, (shape, *_) in SHAPES.items()}


def reported_buffers(binary, model, ctx, parallel, flash, cache_k, cache_v):
    """What llama-server logs while it loads `model`, then stop it: {part: bytes} for model (the mapped file),
    repack, kv, compute, output, and `projected`, what its own fit (on by default) projected for host memory."""
    args = [str(binary), "--model", str(model), "--host", "127.0.0.1", "--port", str(free_port()),
            "--ctx-size", str(ctx), "--parallel", str(parallel), "--n-gpu-layers", "0", "--flash-attn", flash,
            "--cache-type-k", cache_k, "--cache-type-v", cache_v, "--threads", "1", "--no-webui",
            "-lv", "4"]  # level 4 (trace) logs the buffer sizes
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: proc.poll() is not None or any("listening on http" in line for line in lines),
                   timeout=60, message="llama-server to load the model")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        reader.join(timeout=5)
    parts = {}
    for line in lines:
        match = BUFFER_RE.search(line)
        if match:
            # CPU_REPACK: matrices re-laid out for AVX2 kernels, a copy of part of the mapped file
            part = "repack" if match["buffer"] == "CPU_REPACK" else match["part"].lower()
            parts[part] = parts.get(part, 0) + round(float(match["mib"]) * MiB)
        projected = PROJECTED_RE.search(line)
        if projected and "projected" not in parts:
            parts["projected"] = int(projected["mib"]) * MiB
    assert {"model", "kv", "compute", "output", "projected"} <= set(parts), "".join(lines[-40:])
    return parts


def host_estimate(model, ctx, parallel, flash, cache_k, cache_v):
    plan = planner.plan(gguf_facts.read_local(model), CPU_RIG, ctx_size=ctx, parallel=parallel, n_gpu_layers=0,
                        flash_attn=flash, cache_type_k=cache_k, cache_type_v=cache_v)
    (host,) = plan.devices
    return host


@pytest.mark.parametrize("name", SHAPES)
def test_the_estimate_is_within_10_percent_of_what_llama_server_allocates(name, models, server_binary):
    _, ctx, parallel, flash, (cache_k, cache_v) = SHAPES[name]
    model = models[name]
    reported = reported_buffers(server_binary, model, ctx, parallel, flash, cache_k, cache_v)
    host = host_estimate(model, ctx, parallel, flash, cache_k, cache_v)
    print(name, {k: round(v / MiB, 2) for k, v in reported.items()},
          {"model": round(host.weights / MiB, 2), "kv": round(host.kv / MiB, 2),
           "compute": round(host.compute / MiB, 2), "output": round(host.overhead / MiB, 2)})
    assert host.weights == pytest.approx(reported["model"], rel=0.01)  # exact but for the log's 2-decimal MiB
    assert host.kv == pytest.approx(reported["kv"], rel=0.01)
    assert host.compute == pytest.approx(reported["compute"], rel=0.10)
    assert host.overhead == pytest.approx(reported["output"], abs=0.01 * MiB)
    allocated = reported["model"] + reported["kv"] + reported["compute"] + reported["output"]
    assert host.needed == pytest.approx(allocated, rel=0.10)
    # llama-server's own fit counts a repacked matrix once, as the planner does.
    assert host.needed == pytest.approx(reported["projected"], rel=0.10, abs=1 * MiB)
    if "repack" in reported:
        assert reported["repack"] < reported["model"]


@pytest.fixture(scope="module")
def fit_params_binary():
    return llama.fit_params_binary()


def fit_params_estimate(binary, model, ctx, parallel, flash, cache_k, cache_v):
    """llama-fit-params --fit-print on: "Host <model> <context> <compute>" in whole MiB (rounded down).

    Its other mode (fitting -c and -ngl to free device memory) has nothing to fit on a machine without GPUs: it
    prints the arguments back unchanged ("-c 2048 -ngl -1")."""
    proc = subprocess.run([str(binary), "--model", str(model), "--ctx-size", str(ctx), "--parallel", str(parallel),
                           "--n-gpu-layers", "0", "--flash-attn", flash, "--cache-type-k", cache_k,
                           "--cache-type-v", cache_v, "--fit-print", "on"],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"^Host (\d+) (\d+) (\d+)\s*$", proc.stdout, re.MULTILINE)
    assert proc.returncode == 0 and match, proc.stdout + proc.stderr[-2000:]
    return dict(zip(("model", "context", "compute"), (int(v) * MiB for v in match.groups())))


@pytest.mark.parametrize("name", SHAPES)
def test_the_estimate_agrees_with_llama_fit_params_within_10_percent(name, models, fit_params_binary):
    shape, ctx, parallel, flash, (cache_k, cache_v) = SHAPES[name]
    theirs = fit_params_estimate(fit_params_binary, models[name], ctx, parallel, flash, cache_k, cache_v)
    facts = gguf_facts.read_local(models[name])
    # llama-fit-params reserves logits for every token of the micro-batch, llama-server for one per slot.
    (host,) = planner.layout(planner.shape_from_facts(facts), planner.rig_from_hardware(CPU_RIG), ctx, parallel,
                             0, None, cache_k, cache_v, flash != "off", n_outputs=planner.N_UBATCH)
    print(name, {k: v // MiB for k, v in theirs.items()},
          {"model": host.weights / MiB, "context": (host.kv + host.overhead) / MiB, "compute": host.compute / MiB})
    close = {"rel": 0.10, "abs": 1 * MiB}  # its figures are whole MiB, rounded down
    if shape.get("weights") == "Q4_0":
        # Its host model figure leaves out the matrices repacked for the CPU (it would print them as CPU_REPACK
        # in the server's memory breakdown); the planner counts the whole file, as llama-server's load log does.
        assert theirs["model"] < host.weights
    else:
        assert host.weights == pytest.approx(theirs["model"], **close)
    assert host.kv + host.overhead == pytest.approx(theirs["context"], **close)  # KV cache and logits buffer
    assert host.compute == pytest.approx(theirs["compute"], **close)
