"""Generation speed with the fit planner's flags vs the seed's hand flags, same rig, same model, same run.

    .venv/bin/python bench/planner.py                       # a ~70 MB Q8_0 model, 3 rounds × 5 requests each way
    .venv/bin/python bench/planner.py --rounds 2 --reps 3 --layers 6 --width 768

The model is generated (tests/gguf_model.py, random weights: the text is gibberish, the arithmetic is real) and
the rig is this machine as the agent probes it (nodes/agent/probe.py). The planner gets the header facts and the
hardware report and chooses every flag; the seed's flags are the "seed-single-gpu" preset plus the seed guide's
`--threads 8`. Both command lines come from serverspec.launch_args, as the agent builds them. Both servers run
at once; requests (POST /completion, `--tokens` tokens, ignore_eos) go one at a time, alternating between them
(ABBA order), so a neighbour's load on a shared machine falls on both alike. The figure is the median of
timings.predicted_per_second over rounds × reps requests each; the ratio is planner ÷ seed (target ≥ 1.0).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models_catalog import planner  # noqa: E402
from morpheus_admin.localredis import free_port  # noqa: E402
from nodes.agent import gguf_facts, probe, serverspec  # noqa: E402
from tests import llama  # noqa: E402
from tests.gguf_model import write_tiny_llama  # noqa: E402

BODY = {"prompt": "The provider's rig answers prompts for the marketplace, and", "ignore_eos": True,
        "temperature": 0, "cache_prompt": False}
SETTLE = 0.3  # seconds between requests: the idle server's OpenMP threads stop spinning before the next one runs


def post(port, path, body, timeout=300):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def healthy(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as response:
            return response.status == 200
    except OSError:
        return False


def start(binary, model, flags):
    port = free_port()
    spec = serverspec.ServerSpec(deployment_id=1, binary=str(binary), model_path=str(model), port=port,
                                 extra_flags=["--no-webui"], **flags)
    args = serverspec.launch_args(spec)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not healthy(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"llama-server did not start: {' '.join(args)}")
        time.sleep(0.05)
    post(port, "/completion", {**BODY, "n_predict": 8})  # warm-up: first touch of the mapped weights
    return proc, port


def generation_speed(port, tokens):
    return post(port, "/completion", {**BODY, "n_predict": tokens})["timings"]["predicted_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=2816)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--pieces", type=int, default=8000)
    parser.add_argument("--weights", default="Q8_0", choices=["F32", "F16", "Q8_0", "Q4_0", "Q5_0"])
    parser.add_argument("--context", type=int, default=4096, help="the model's trained context")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    binary = llama.server_binary()
    with tempfile.TemporaryDirectory(prefix="bench-planner-") as tmp:
        model = write_tiny_llama(Path(tmp) / "bench.gguf", n_layers=args.layers, width=args.width, heads=args.heads,
                                 kv_heads=args.kv_heads, ffn=args.ffn, pieces=args.pieces, weights=args.weights,
                                 context=args.context, name="bench-planner")
        facts = gguf_facts.read_local(model)
        hardware = probe.probe_hardware(tmp)
        plan = planner.plan(facts, hardware)
        seed = {k: v for k, v in serverspec.PRESETS["seed-single-gpu"].items() if k != "label"}
        seed["threads"] = 8  # the seed guide's command line
        planned = {k: v for k, v in plan.flags.items()}
        print(f"model: {model.stat().st_size / 1e6:.1f} MB {args.weights}, {args.layers} layers × {args.width}, "
              f"{args.heads} heads / {args.kv_heads} KV heads, trained context {args.context}")
        print(f"rig: {hardware['cpu_model']}, {hardware['cpu_cores_physical']} physical / "
              f"{hardware['cpu_cores_logical']} logical cores, {hardware['ram_total'] / 2**30:.1f} GiB RAM, "
              f"{len(hardware['gpus'])} GPU(s)")
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"plan: {plan.summary}")
        print(f"planner flags: {planned}")
        print(f"seed flags:    {seed}")
        results = {"planner": [], "seed": []}
        servers = {"planner": start(binary, model, planned), "seed": start(binary, model, seed)}
        try:
            for i in range(args.rounds * args.reps):
                for name in (["planner", "seed"] if i % 2 == 0 else ["seed", "planner"]):
                    time.sleep(SETTLE)
                    results[name].append(generation_speed(servers[name][1], args.tokens))
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
        print()
        print(f"{'flags':<10}{'median tok/s':>14}{'min':>9}{'max':>9}   (generation, {args.tokens} tokens, "
              f"{args.rounds} rounds × {args.reps} requests)")
        medians = {}
        for name, values in results.items():
            medians[name] = statistics.median(values)
            print(f"{name:<10}{medians[name]:>14.1f}{min(values):>9.1f}{max(values):>9.1f}")
        print(f"ratio planner / seed: {medians['planner'] / medians['seed']:.2f}")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
