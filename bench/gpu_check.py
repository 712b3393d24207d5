"""The prepared check for a machine with an NVIDIA GPU: build llama.cpp with CUDA through the agent's builder, probe
the GPUs through real NVML, write a GGUF with Llama 3 8B's shape (random weights: speed does not depend on them),
plan it, host it under the agent's supervisor, run the benchmark sweep, and print tok/s against the decode
roofline (GPU memory bandwidth ÷ bytes of weights).

    .venv/bin/python bench/gpu_check.py --source /path/to/llama.cpp            # a git folder (no network needed)
    .venv/bin/python bench/gpu_check.py --source ~/llama.cpp --ref b6500 --quant q8_0 --parallel 8 --out /tmp/out
    .venv/bin/python bench/gpu_check.py --cpu-smoke                            # this pipeline on a CPU, small model
    .venv/bin/python bench/gpu_check.py --cpu-smoke --full-model --prompt 16 --gen 4   # the 8B file on a CPU

Costs: the CUDA build compiles for the GPUs' own architecture only (minutes on 16 cores; ccache under --work makes
a second run seconds). The 8B model is written block by block: Q4_0 4.7 GB, Q8_0 8.5 GB, in about 10-40 s
(random bytes, then the disk). Nothing is downloaded. Without an NVIDIA GPU (no driver, or no GPU) it stops at
once with the reason, before building anything; --cpu-smoke runs every step on the CPU instead, with the CPU build
the tests use (tests/llama.py) or --source's, and a small model of the same layout and quantisation.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType  # noqa: E402

from nodes.agent import benchmark, builder, gguf_facts  # noqa: E402
from nodes.agent.probe import PowerMeter, probe_hardware  # noqa: E402
from nodes.agent.supervisor import FAILED, HEALTHY, Supervisor  # noqa: E402

# Llama 3 8B (Meta-Llama-3-8B config.json): the tensor shapes decide the bytes read per token, hence the speed.
LLAMA3_8B = {"vocab": 128256, "width": 4096, "layers": 32, "heads": 32, "kv_heads": 8, "ffn": 14336,
             "context": 8192, "rope_theta": 500000.0, "name": "random-llama-3-8b-shape"}
SMOKE = {"vocab": 2048, "width": 256, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 512, "context": 2048,
         "rope_theta": 10000.0, "name": "random-llama-smoke"}
QUANTS = {  # name → (GGML type, LlamaFileType, bytes per 32-value block); block = f16 scale + quants
    "q4_0": (GGMLQuantizationType.Q4_0, LlamaFileType.MOSTLY_Q4_0, 18),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0, 34),
}
SCALE = np.float16(0.002).tobytes()  # small block scales: activations stay finite through 32 random layers


def say(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def tensor_list(shape):
    """(name, rows, columns) of every 2-D weight, in file order; norms are added separately (F32)."""
    w, kv = shape["width"], shape["width"] // shape["heads"] * shape["kv_heads"]
    names = [("token_embd.weight", shape["vocab"], w)]
    for i in range(shape["layers"]):
        names += [(f"blk.{i}.attn_q.weight", w, w), (f"blk.{i}.attn_k.weight", kv, w),
                  (f"blk.{i}.attn_v.weight", kv, w), (f"blk.{i}.attn_output.weight", w, w),
                  (f"blk.{i}.ffn_gate.weight", shape["ffn"], w), (f"blk.{i}.ffn_up.weight", shape["ffn"], w),
                  (f"blk.{i}.ffn_down.weight", w, shape["ffn"])]
    return names + [("output.weight", shape["vocab"], w)]


def write_llama(path, shape, quant="q4_0", seed=0):
    """A llama GGUF of `shape` with random `quant` weights, streamed tensor by tensor (never all in memory)."""
    ggml_type, file_type, block_bytes = QUANTS[quant]
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(shape["name"])
    writer.add_context_length(shape["context"])
    writer.add_embedding_length(shape["width"])
    writer.add_block_count(shape["layers"])
    writer.add_feed_forward_length(shape["ffn"])
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_rope_dimension_count(shape["width"] // shape["heads"])
    writer.add_rope_freq_base(shape["rope_theta"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(file_type)
    pieces = shape["vocab"] - 3 - 256
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
                          + [f"▁w{i}" for i in range(pieces)])
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(pieces)])
    writer.add_token_types([TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
                           + [TokenType.NORMAL] * pieces)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    plan = []  # (name, kind, shape) in file order
    for name, rows, cols in tensor_list(shape):
        plan.append((name, "q", (rows, cols)))
        if name.endswith("attn_q.weight"):
            plan.insert(len(plan) - 1, (name.replace("attn_q", "attn_norm"), "norm", (shape["width"],)))
        if name.endswith("ffn_gate.weight"):
            plan.insert(len(plan) - 1, (name.replace("ffn_gate", "ffn_norm"), "norm", (shape["width"],)))
    plan.insert(len(plan) - 1, ("output_norm.weight", "norm", (shape["width"],)))
    for name, kind, dims in plan:
        if kind == "norm":
            writer.add_tensor_info(name, dims, np.dtype(np.float32), dims[0] * 4)
        else:
            rows, cols = dims
            nbytes = rows * cols // 32 * block_bytes
            writer.add_tensor_info(name, (rows, cols // 32 * block_bytes), np.dtype(np.uint8), nbytes,
                                   raw_dtype=ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, kind, dims in plan:
        if kind == "norm":
            writer.write_tensor_data(np.ones(dims, dtype=np.float32))
            continue
        rows, cols = dims
        blocks = rng.integers(0, 256, size=(rows * cols // 32, block_bytes), dtype=np.uint8)
        blocks[:, :2] = np.frombuffer(SCALE, dtype=np.uint8)
        writer.write_tensor_data(blocks.reshape(rows, cols // 32 * block_bytes))
    writer.close()
    return Path(path)


def gpu_facts(hardware):
    gpus = hardware.get("gpus") or []
    return [f"{g['index']}: {g['name']}, {g['vram_total'] / 2**30:.0f} GiB, compute {g.get('compute_capability')}, "
            f"{g.get('mem_bandwidth_gbs')} GB/s ({g.get('mem_bandwidth_source')})" for g in gpus]


def build_server(args, hardware, work):
    if args.binary:
        say(f"using {args.binary}")
        return args.binary, builder.server_version(args.binary)["version"]
    if args.cpu_smoke and not args.source:
        from tests import llama

        binary = llama.server_binary()
        say(f"using the tests' CPU build {binary}")
        return str(binary), builder.server_version(binary)["version"]
    source = str(Path(args.source).expanduser().resolve())
    ref = args.ref or subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True,
                                     check=True).stdout.strip()
    backend = "cpu" if args.cpu_smoke else "cuda"
    say(f"building llama-server ({backend}) from {source} at {ref} through the agent's builder")
    started = time.monotonic()
    result = builder.Builder(work / "builds", ccache_dir=work / "ccache", jobs=args.jobs).build(
        builder.BuildRequest(build_id=1, source=source, ref=ref, backend=backend), hardware)
    say(f"built {result['version']} ({result.get('cuda_architectures') or 'cpu'}) in {time.monotonic() - started:.0f} s")
    return result["binary"], result["version"]


def plan_flags(facts, hardware, parallel, smoke):
    """models_catalog.planner's flags when that module is there (it is written alongside), else a fixed choice."""
    try:
        from models_catalog import planner
    except ImportError:
        planner = None
    if planner is not None and hasattr(planner, "plan"):
        try:
            plan = planner.plan(facts, hardware, parallel=parallel, flash_attn="on", ctx_size=None)
            say(f"plan: {plan.summary}")
            flags = plan.flags
            return {"ctx_size": min(flags["ctx_size"], 8192 * parallel), "n_gpu_layers": flags["n_gpu_layers"]}
        except Exception as exc:  # the planner is optional here: say why and go on with the fixed flags
            say(f"planner refused ({exc}); using fixed flags")
    else:
        say("models_catalog.planner is not on this branch; using fixed flags")
    return {"ctx_size": 1024 * parallel if smoke else 4096 * parallel, "n_gpu_layers": 0 if smoke else 99}


def roofline(hardware, weight_bytes, n_gpu_layers):
    bandwidths = [g.get("mem_bandwidth_gbs") for g in hardware.get("gpus") or []]
    if not n_gpu_layers or not bandwidths or not all(bandwidths):
        return None
    # llama.cpp's layer split runs the GPUs in turn for each token: with equal cards, the one card's bandwidth.
    seconds = sum(weight_bytes / len(bandwidths) / (gbs * 1e9) for gbs in bandwidths)
    return 1 / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="a llama.cpp git folder (the machine needs no network)")
    parser.add_argument("--ref", help="tag or commit to build (default: the folder's HEAD)")
    parser.add_argument("--binary", help="an existing llama-server instead of building one")
    parser.add_argument("--work", help="working folder (default: a new temporary one); builds, model, servers")
    parser.add_argument("--quant", choices=sorted(QUANTS), default="q4_0")
    parser.add_argument("--parallel", type=int, default=8, help="server slots; the sweep goes 1, 2, 4 … up to it")
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens per stream")
    parser.add_argument("--gen", type=int, default=128, help="generated tokens per stream")
    parser.add_argument("--jobs", type=int, default=None, help="compile jobs (default: every core)")
    parser.add_argument("--out", help="folder for result.json")
    parser.add_argument("--cpu-smoke", action="store_true", help="run the whole pipeline on the CPU, small model")
    parser.add_argument("--full-model", action="store_true", help="with --cpu-smoke: the 8B shape all the same")
    args = parser.parse_args()
    if not args.cpu_smoke and not (args.source or args.binary):
        parser.error("--source (a llama.cpp git folder) or --binary is needed for the GPU check")

    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    hardware = probe_hardware(work / "data")
    say(f"NVML: {len(hardware['gpus'])} GPU(s), driver {hardware['driver_version']}, CUDA {hardware['cuda_version']}"
        + (f" ({hardware['gpu_note']})" if hardware["gpu_note"] else ""))
    for gpu in gpu_facts(hardware):
        say(f"  GPU {gpu}")
    if not args.cpu_smoke:
        if not hardware["gpus"]:
            sys.exit(f"no NVIDIA GPU here: {hardware['gpu_note'] or 'NVML lists none'}. "
                     "Run on a machine with one, or use --cpu-smoke.")
        if not args.binary and not (shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").exists()):
            sys.exit("no CUDA compiler (nvcc) on PATH or in /usr/local/cuda/bin: install the CUDA toolkit, "
                     "or pass --binary")

    binary, version = build_server(args, hardware, work)
    shape = SMOKE if args.cpu_smoke and not args.full_model else LLAMA3_8B
    model = work / f"{shape['name']}-{args.quant.upper()}.gguf"
    started = time.monotonic()
    if not model.exists():
        write_llama(model, shape, args.quant)
    facts = gguf_facts.read_local(model)
    size = model.stat().st_size
    weights, basis = benchmark.bytes_per_token(facts, size)
    say(f"model {model.name}: {facts['parameters'] / 1e6:,.1f} M parameters, {size / 1e9:.2f} GB; "
        f"{weights / 1e9:.2f} GB read per token ({basis}); written in {time.monotonic() - started:.0f} s")

    flags = plan_flags(facts, hardware, args.parallel, args.cpu_smoke)
    spec = {"deployment_id": 1, "binary": str(binary), "model_path": str(model), "port": args_port(),
            "host": "127.0.0.1", "parallel": args.parallel, "flash_attn": "on" if not args.cpu_smoke else "auto",
            "extra_flags": ["--no-webui"], **flags}
    supervisor = Supervisor(work / "state")
    supervisor.start()
    try:
        supervisor.apply(spec)
        server = supervisor.servers[1]
        deadline = time.monotonic() + 600
        while server.state not in (HEALTHY, FAILED) and time.monotonic() < deadline:
            time.sleep(0.2)
        if server.state != HEALTHY:
            sys.exit(f"llama-server did not become healthy ({server.state}): {server.message}\n"
                     f"{(server.log_path.read_text(errors='replace'))[-3000:]}")
        say(f"llama-server healthy: {server.message}; flags {' '.join(server.cmdline[1:])}")
        request = benchmark.check_request({"prompt_tokens": args.prompt, "gen_tokens": args.gen},
                                          args.parallel, spec["ctx_size"])
        result = benchmark.run_sweep(f"http://127.0.0.1:{spec['port']}", "", request, args.parallel,
                                     power_meter=PowerMeter,
                                     on_step=lambda done, total, r: say(f"step {done}/{total}: {line(r['steps'][-1])}"))
    finally:
        supervisor.forget(1)
        supervisor.stop_loop()

    line_tps = roofline(hardware, weights, flags["n_gpu_layers"])
    single = result["steps"][0]["per_stream_tps"]
    best = max(result["steps"], key=lambda s: s["aggregate_tps"])
    print()
    print(f"build          {version} {result['build_info']}")
    print(f"model          {shape['name']} {args.quant.upper()}, {weights / 1e9:.2f} GB of weights read per token")
    print(f"single stream  {single:.1f} tok/s generation, {result['steps'][0]['prompt_tps']:.0f} tok/s prompt, "
          f"{result['steps'][0]['ttft_ms']:.0f} ms to first token")
    print(f"best aggregate {best['aggregate_tps']:.1f} tok/s at {best['concurrency']} streams; "
          f"recommended sessions {result['recommended_sessions']}")
    if line_tps:
        print(f"roofline       {line_tps:.1f} tok/s (memory bandwidth ÷ weight bytes); "
              f"measured / roofline = {single / line_tps:.2f}")
    else:
        print("roofline       none (CPU run, or the GPUs' memory bandwidth is unknown)")
    summary = {"version": version, "hardware": hardware, "quant": args.quant, "shape": shape, "weight_bytes": weights,
               "flags": flags, "result": result, "roofline_tps": line_tps,
               "ratio": single / line_tps if line_tps else None}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "result.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def line(step):
    power = f", {step['power_w']:.0f} W" if step["power_w"] is not None else ""
    return (f"{step['concurrency']:>3} streams: {step['aggregate_tps']:8.1f} tok/s together, "
            f"{step['per_stream_tps']:7.1f} each, TTFT {step['ttft_ms']:6.0f} ms, prompt {step['prompt_tps']:7.0f} "
            f"tok/s{power}")


def args_port():
    from morpheus_admin.localredis import free_port

    return free_port()


if __name__ == "__main__":
    main()
