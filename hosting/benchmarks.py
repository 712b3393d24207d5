"""Benchmarks on the panel: a rig's sweep result checked and stored, the decode roofline, the published references
that match, the history chart, and the economics of the latest sweep."""

import logging
import math
from decimal import Decimal

from django.db import IntegrityError, transaction

from hosting import economics
from hosting.models import Benchmark, Deployment, EconomicsSettings
from nodes.agent import benchmark as sweep
from nodes.models import Operation

log = logging.getLogger("morpheus.ingest")

MAX_STEPS = 12  # 1, 2, 4 … 128 and 256 slots are 9 steps


class BadResult(ValueError):
    pass


def _num(data, key, lo, hi, integer=False, required=True):
    value = data.get(key) if isinstance(data, dict) else None
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise BadResult(f"{key} must be a {'whole ' if integer else ''}number")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise BadResult(f"{key}={value} is outside {lo}..{hi}")
    return value


def clean_result(result, parallel):
    """The rig's sweep result, checked field by field and rebuilt from known keys only; raises BadResult."""
    if not isinstance(result, dict) or not isinstance(result.get("steps"), list) or not result["steps"]:
        raise BadResult("no steps")
    if len(result["steps"]) > MAX_STEPS:
        raise BadResult(f"{len(result['steps'])} steps, more than {MAX_STEPS}")
    steps, previous = [], 0
    for raw in result["steps"]:
        if not isinstance(raw, dict):
            raise BadResult("each step must be an object")
        step = {
            "concurrency": _num(raw, "concurrency", 1, parallel, integer=True),
            "wall_s": _num(raw, "wall_s", 0, 86_400),
            "generated": _num(raw, "generated", 0, 10**9, integer=True),
            "aggregate_tps": _num(raw, "aggregate_tps", 0, 10**7),
            "per_stream_tps": _num(raw, "per_stream_tps", 0, 10**7),
            "slowest_stream_tps": _num(raw, "slowest_stream_tps", 0, 10**7),
            "prompt_tps": _num(raw, "prompt_tps", 0, 10**8),
            "ttft_ms": _num(raw, "ttft_ms", 0, 86_400_000), "ttft_max_ms": _num(raw, "ttft_max_ms", 0, 86_400_000),
            "power_w": _num(raw, "power_w", 0, 100_000, required=False),
        }
        if step["concurrency"] <= previous:
            raise BadResult("steps must rise in concurrency")
        previous = step["concurrency"]
        steps.append(step)
    params = result.get("parameters") if isinstance(result.get("parameters"), dict) else {}
    parameters = {key: _num(params, key, lo, hi, integer=key != "min_stream_tps")
                  for key, (lo, hi) in sweep.LIMITS.items() if key != "max_concurrency"}
    recommended = _num(result, "recommended_sessions", 1, parallel, integer=True)
    if recommended not in {s["concurrency"] for s in steps}:
        raise BadResult("the recommended sessions are not one of the steps")
    build_info = result.get("build_info") if isinstance(result.get("build_info"), str) else ""
    return {"steps": steps, "parameters": parameters, "recommended": recommended,
            "build_info": build_info.replace("\x00", "")[:200]}


def operation_changed(operation):
    """A benchmark operation that succeeded becomes a Benchmark row of its own rig's deployment (named by the
    operation's target, the panel's own record), once."""
    if operation.kind != Operation.BENCHMARK or operation.status != Operation.SUCCEEDED:
        return
    deployments = Deployment.objects.select_related("build")
    deployment = deployments.filter(node=operation.node_id, name=operation.target).first()
    if deployment is None or Benchmark.objects.filter(operation=operation).exists():
        return
    try:
        if (operation.result or {}).get("deployment_id") not in (None, deployment.pk):
            raise BadResult("the result names another deployment")
        clean = clean_result(operation.result, deployment.parallel)
    except BadResult as exc:
        log.warning("benchmark result of operation %s refused: %s", operation.pk, exc)
        return
    steps = clean["steps"]
    single = steps[0]
    best = max(steps, key=lambda s: s["aggregate_tps"])
    chosen = next(s for s in steps if s["concurrency"] == clean["recommended"])
    settings_row = EconomicsSettings.current()
    measured = chosen["power_w"] is not None
    version = " ".join(part for part in (deployment.build.version, clean["build_info"]) if part)[:200]
    parameters = {**clean["parameters"], "parallel": deployment.parallel, "ctx_size": deployment.ctx_size,
                  "flash_attn": deployment.flash_attn, "n_gpu_layers": deployment.n_gpu_layers,
                  "tensor_split": deployment.tensor_split, "cache_type_k": deployment.cache_type_k,
                  "cache_type_v": deployment.cache_type_v, "generation": deployment.generation}
    try:
        with transaction.atomic():
            Benchmark.objects.create(
                deployment=deployment, node_id=operation.node_id, operation=operation, build=deployment.build,
                build_version=version, created=operation.finished or operation.created, parameters=parameters,
                steps=steps, single_tps=single["per_stream_tps"], prompt_tps=single["prompt_tps"],
                ttft_ms=single["ttft_ms"], best_aggregate_tps=best["aggregate_tps"],
                best_concurrency=best["concurrency"],
                recommended_sessions=clean["recommended"], recommended_tps=chosen["aggregate_tps"],
                power_w=chosen["power_w"] if measured else settings_row.cpu_rig_watts,
                power_source=Benchmark.NVML if measured else Benchmark.CONFIGURED)
    except IntegrityError:  # another panel worker stored this same outcome a moment ago
        return


# --- roofline and published references -----------------------------------------------------------------------

def weight_bytes(rig_file):
    """(bytes of weights each generated token reads, how they were counted): nodes/agent/benchmark.py."""
    return sweep.bytes_per_token(rig_file.facts, rig_file.size)


def roofline(deployment):
    """{"tps", "gbs", "bytes", "gpus"} — decode tok/s if every token read all weights once at the peak memory
    bandwidth of the GPUs the model is on — or {"missing": why}. llama.cpp's default layer split runs the GPUs one
    after another for each token, so their times add up: tok/s = 1 ÷ Σ(share × bytes ÷ bandwidth)."""
    gpus = (deployment.node.hardware or {}).get("gpus") or []
    if deployment.n_gpu_layers == 0 or not gpus:
        return {"missing": "the model runs on the CPU: no GPU memory bandwidth to compare with"}
    shares = [1.0] * len(gpus)
    if deployment.tensor_split:
        given = [float(x) for x in deployment.tensor_split.split(",")]
        shares = (given + [0.0] * len(gpus))[:len(gpus)]
    used = [(share, gpu) for share, gpu in zip(shares, gpus) if share > 0]
    unknown = [gpu.get("name", "?") for _share, gpu in used if not gpu.get("mem_bandwidth_gbs")]
    if unknown or not used:
        return {"missing": f"memory bandwidth of {', '.join(unknown) or 'the GPUs'} unknown (NVML did not say and "
                           "it is not in the table of known cards): no roofline"}
    size, basis = weight_bytes(deployment.model_file)
    total = sum(share for share, _gpu in used)
    seconds = sum(share / total * size / (gpu["mem_bandwidth_gbs"] * 1e9) for share, gpu in used)
    return {"tps": 1 / seconds, "bytes": size, "gb": round(size / 1e9, 2), "basis": basis,
            "gpus": [gpu.get("name", "") for _s, gpu in used], "gbs": [gpu["mem_bandwidth_gbs"] for _s, gpu in used]}


REFERENCES = (
    {"label": "Llama 3 8B Q4_K_M, one RTX 3090, one stream (GPU-Benchmarks-on-LLM-Inference)", "streams": 1,
     "tps": (115, 115), "gpu": "3090", "gpus": 1, "quant": "Q4_K_M"},
    {"label": "8B Q4_0 with flash attention, one RTX 3090, 8 streams together (llama.cpp PR #15802)", "streams": 8,
     "tps": (571, 584), "gpu": "3090", "gpus": 1, "quant": "Q4_0"},
    {"label": "the seed document's figure for an 8B model on 2× RTX 3090", "streams": 1, "tps": (80, 80),
     "gpu": "3090", "gpus": 2, "quant": None},
)


def _is_8b_llama(rig_file):
    facts = rig_file.facts or {}
    parameters = facts.get("parameters")
    architecture = facts.get("architecture") or ""
    if isinstance(parameters, int) and parameters:
        return architecture in ("llama", "") and 7.0e9 <= parameters <= 8.6e9
    name = rig_file.path.rsplit("/", 1)[-1].lower()
    return "llama" in name and "8b" in name


def _quant(rig_file):
    from nodes.agent.validation import quant_from_name

    facts_type = ((rig_file.facts or {}).get("file_type") or "").upper()
    return facts_type or quant_from_name(rig_file.path)


def references(deployment):
    """The published figures whose hardware and model match this deployment's (FACTS.md), else []."""
    gpus = (deployment.node.hardware or {}).get("gpus") or []
    if deployment.n_gpu_layers == 0 or not gpus or not all("3090" in (g.get("name") or "") for g in gpus):
        return []
    if not _is_8b_llama(deployment.model_file):
        return []
    quant = _quant(deployment.model_file)
    return [ref for ref in REFERENCES if ref["gpus"] == len(gpus) and ref["quant"] in (None, quant)]


# --- history chart -----------------------------------------------------------------------------------------------

WIDTH, HEIGHT, PAD = 480, 120, 4


def history_chart(benchmarks):
    """Polylines of single-stream and best aggregate tok/s per benchmark, oldest left (server-rendered SVG); None
    before the second benchmark (one run is a point, and the table above already shows it)."""
    runs = list(reversed(benchmarks))
    if len(runs) < 2:
        return None
    top = max(max(b.best_aggregate_tps, b.single_tps) for b in runs) or 1

    def points(key):
        out = []
        for i, run in enumerate(runs):
            x = PAD + (i / (len(runs) - 1) if len(runs) > 1 else 0.5) * (WIDTH - 2 * PAD)
            y = HEIGHT - PAD - getattr(run, key) / top * (HEIGHT - 2 * PAD)
            out.append(f"{x:.1f},{y:.1f}")
        return " ".join(out)

    return {"width": WIDTH, "height": HEIGHT, "top": round(top, 1), "count": len(runs),
            "single": points("single_tps"), "aggregate": points("best_aggregate_tps")}


# --- economics ---------------------------------------------------------------------------------------------------

def economics_of(bench, settings_row=None):
    """Costs of the latest sweep under the panel's prices, ready to print (with units), or {"missing": why}."""
    settings_row = settings_row or EconomicsSettings.current()
    profile = bench.node.profile
    hardware_usd = Decimal(profile.total_cost) if profile is not None else None
    # Measured draw as the rig printed it; a configured one as the panel is set now.
    measured = bench.power_source == Benchmark.NVML and bench.power_w is not None
    watts = Decimal(str(bench.power_w)) if measured else Decimal(settings_row.cpu_rig_watts)
    try:
        result = economics.costs(watts=watts, usd_per_kwh=settings_row.electricity_usd_per_kwh,
                                 mor_usd=settings_row.mor_usd, aggregate_tps=Decimal(str(bench.recommended_tps)),
                                 sessions=bench.recommended_sessions, hardware_usd=hardware_usd,
                                 months=settings_row.amortisation_months)
    except economics.EconomicsError as exc:
        return {"missing": str(exc)}
    d = economics.decimal
    return {
        "costs": result, "settings": settings_row, "profile": profile,
        "watts": d(result.watts, 1), "kwh_per_hour": d(result.kwh_per_hour, 4),
        "energy_usd_per_hour": d(result.energy_usd_per_hour, 4),
        "hardware_usd_per_hour": d(result.hardware_usd_per_hour, 4),
        "usd_per_hour": d(result.usd_per_hour, 4), "tokens_per_hour": d(result.tokens_per_hour, 0),
        "usd_per_million_tokens": d(result.usd_per_million_tokens, 4),
        "bid_mor": economics.mor_text(result.bid_wei_per_second), "bid_wei": result.bid_wei_per_second,
        "cost_wei": result.cost_wei_per_second, "floor_wei": economics.FLOOR_WEI_PER_SECOND,
    }
