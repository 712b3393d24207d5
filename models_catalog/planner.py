"""Fit planner: the memory a GGUF model needs on a rig under llama-server's flags, and the flags to use.

Pure functions, no Django: a model file's header facts (nodes/agent/gguf_facts.py) and a rig's hardware report
(nodes/agent/probe.py) in, a Plan out. The memory model follows the vendored llama.cpp (commit 0c1e57098):

- weights: exact tensor bytes per layer from the header. The input embedding stays on the CPU; the output layer
  counts as one more layer, so `--n-gpu-layers N` offloads the last N-1 repeating layers plus the output
  (llama-model.cpp load_tensors); layers go to GPUs in proportion to the tensor split, by default each GPU's
  free memory (here: its VRAM).
- KV cache: with `--parallel P` every slot has its own stream of pad(ctx/P, 256) cells (llama-context.cpp pads
  n_ctx and n_ctx_seq to 256); per layer and cell, K is key_length × KV heads and V value_length × KV heads
  elements of the cache type; it lives with its layer.
- compute buffer: the graph allocator's peak for a 512-token micro-batch (llama-context.cpp sched_reserve):
  the largest of attention (without flash attention the n_kv × 512 × heads f32 KQ matrix), feed-forward and
  output (one logits row per slot in llama-server), with the graph's inputs (the KQ mask is n_kv × 512).
  Fitted to the CPU llama-server's load log and to llama-fit-params (tests/test_planner_llama.py).
- per GPU: CUDA_OVERHEAD for the CUDA context, cuBLAS workspace and the memory pool.
"""

import math
from dataclasses import dataclass, field

MiB, GiB = 1 << 20, 1 << 30

# Bytes per block and elements per block of each KV cache type (ggml's type traits).
CACHE_TYPES = {
    "f32": (4, 1), "f16": (2, 1), "bf16": (2, 1), "q8_0": (34, 32), "q4_0": (18, 32), "q4_1": (20, 32),
    "iq4_nl": (18, 32), "q5_0": (22, 32), "q5_1": (24, 32),
}
FLASH_ATTN = ("auto", "on", "off")
N_UBATCH = 512  # llama-server's default physical batch (common.h n_ubatch)
KV_PAD = 256  # llama-context.cpp: n_ctx and each slot's n_ctx_seq are padded to 256 cells
# The CUDA context, cuBLAS workspace and llama.cpp's CUDA memory pool on one GPU: nvidia-smi shows 250-450 MiB
# for a process that has only created a CUDA 12 context on Ampere/Ada, and llama.cpp's own fit
# (common/fit.cpp) keeps 1024 MiB per device free on top of its estimate for this and other processes.
CUDA_OVERHEAD = 512 * MiB
# What the planner leaves free on each GPU when it chooses the context or the layers itself (not when judging
# flags it was given): its CUDA compute estimate is modelled on the source, not measured on a GPU.
HEADROOM = 512 * MiB
HOST_RESERVE = 2 * GiB  # RAM left to the OS, the agent and page cache before a plan counts as fitting
# llama.cpp clamps any --n-gpu-layers above the layer count; these are the values people write for "all".
ALL_LAYERS = (99, 999)
MIN_CTX_SIZE, MAX_CTX_SIZE, MAX_PARALLEL = 256, 1_048_576, 256  # serverspec's bounds
SCHED_COPIES = 4  # GGML_SCHED_MAX_COPIES, the build's default
FIT_MIN_CTX = 4096  # common.h fit_params_min_ctx: llama.cpp's own fit shrinks the context to this before layers
DEFAULT_PARALLEL = 4  # llama-server's slot count when none is given, and the seed presets'
_MAX_LAYERS = 4096


class PlanRefused(ValueError):
    """A combination llama-server cannot run as asked, with the reason in words for the provider."""


class CannotPlan(PlanRefused):
    """Not a refusal of the flags: the header facts or the rig's hardware report are missing or unusable, so there is
    nothing to plan against (a form saves the settings anyway; a page says why)."""


class HeaderNeedsReading(CannotPlan):
    """The facts were read before they carried what the planner needs (no `planner_facts` key)."""


@dataclass
class Device:
    name: str  # "CPU" or the GPU's short name, "RTX 3090"
    kind: str  # "gpu" or "cpu"
    index: int | None
    capacity: int  # bytes the device has (VRAM, or RAM less HOST_RESERVE)
    layers: int = 0  # repeating layers placed here
    output: bool = False  # the output layer is here
    weights: int = 0
    kv: int = 0
    compute: int = 0
    overhead: int = 0  # a GPU: the CUDA context and pools; the CPU: llama.cpp's logits output buffer

    @property
    def needed(self):
        return self.weights + self.kv + self.compute + self.overhead

    @property
    def spare(self):
        return self.capacity - self.needed

    @property
    def fits(self):
        return self.needed <= self.capacity

    def as_dict(self):
        return {"name": self.name, "kind": self.kind, "index": self.index, "capacity": self.capacity,
                "layers": self.layers, "output": self.output, "weights": self.weights, "kv": self.kv,
                "compute": self.compute, "overhead": self.overhead, "needed": self.needed, "spare": self.spare,
                "fits": self.fits}


@dataclass
class Plan:
    devices: list  # GPUs in index order, then the CPU (host RAM)
    flags: dict  # ServerSpec fields: n_gpu_layers, tensor_split, ctx_size, parallel, threads, flash_attn, cache types
    fits: bool
    needed: int  # on the GPUs (on a CPU-only rig: in RAM)
    capacity: int
    spare: int
    max_ctx_size: int | None  # the largest ctx-size at this parallel with these layers offloaded; None: none fits
    max_ctx_note: str
    summary: str
    warnings: list = field(default_factory=list)
    suggestions: list = field(default_factory=list)

    @property
    def gpus(self):
        return [d for d in self.devices if d.kind == "gpu"]

    @property
    def host(self):
        return self.devices[-1]

    def as_dict(self):
        return {"devices": [d.as_dict() for d in self.devices], "flags": dict(self.flags), "fits": self.fits,
                "needed": self.needed, "capacity": self.capacity, "spare": self.spare,
                "max_ctx_size": self.max_ctx_size, "max_ctx_note": self.max_ctx_note, "summary": self.summary,
                "warnings": list(self.warnings), "suggestions": list(self.suggestions)}


@dataclass
class Shape:
    layers: int
    width: int
    heads: int
    kv_heads: list  # per layer
    key_length: int
    value_length: int
    ffn: int
    vocab: int
    context: int
    layer_bytes: list
    token_embd: int
    output: int  # output.weight (or the tied copy of token_embd) + output_norm + other small tensors
    experts: int | None
    sliding_window: int | None
    tied: bool = False  # no output.weight: `output` holds a copy of token_embd (on the CPU the same mapped bytes)

    @property
    def weights(self):
        return sum(self.layer_bytes) + self.token_embd + self.output


def _count(facts, key, lo=0, hi=1 << 50, required=True):
    value = facts.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CannotPlan(f"the header facts have no usable {key.replace('_', ' ')} ({value!r})")
    return value


def shape_from_facts(facts, model_bytes=None):
    """The model's shape from header facts; `model_bytes` (all files of a split model) fills in what the first
    file's header cannot list."""
    if not isinstance(facts, dict) or not facts:
        raise HeaderNeedsReading("the model's header has not been read yet")
    if "planner_facts" not in facts:
        raise HeaderNeedsReading("the header was read before the planner existed: read it again")
    layers = _count(facts, "layers", 1, _MAX_LAYERS)
    width = _count(facts, "embedding_length", 1, 1 << 20)
    heads = _count(facts, "head_count", 1, 1 << 14)
    kv_common = _count(facts, "head_count_kv", 0, 1 << 14)
    per_layer = facts.get("head_count_kv_layers")
    if per_layer is not None:
        if not isinstance(per_layer, list) or len(per_layer) != layers or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1 << 14 for v in per_layer):
            raise CannotPlan("the header facts' per-layer KV head counts do not match the layer count")
        kv_heads = list(per_layer)
    else:
        kv_heads = [kv_common] * layers
    layer_bytes = facts.get("layer_bytes")
    if not isinstance(layer_bytes, list) or len(layer_bytes) != layers or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 45 for v in layer_bytes):
        raise CannotPlan("the header facts' layer sizes do not match the layer count")
    token_embd = _count(facts, "token_embd_bytes", 0, 1 << 45)
    output = _count(facts, "output_bytes", 0, 1 << 45) + _count(facts, "other_bytes", 0, 1 << 45)
    if facts.get("output_tied") is True:
        output += token_embd  # llama.cpp loads a copy of the embeddings for the output layer
    layer_bytes = list(layer_bytes)
    if facts.get("tensors_complete") is False:
        # A split model: the first file's header lists its own tensors only; spread the rest over the layers.
        if not isinstance(model_bytes, int) or model_bytes <= 0:
            raise CannotPlan("a split model's size is needed to plan it (its first file lists only its own tensors)")
        known = token_embd + output
        layer_bytes = [max(0, model_bytes - known) // layers] * layers
    head_width = width // heads
    if not head_width:
        raise CannotPlan(f"the header facts have {heads} heads for a width of {width}")
    return Shape(
        layers=layers, width=width, heads=heads, kv_heads=kv_heads,
        key_length=_count(facts, "key_length", 1, 1 << 16, required=False) or head_width,
        value_length=_count(facts, "value_length", 1, 1 << 16, required=False) or head_width,
        ffn=_count(facts, "feed_forward_length", 0, 1 << 24, required=False) or 4 * width,
        vocab=_count(facts, "vocab_size", 1, 1 << 24, required=False) or 32000,
        context=_count(facts, "context_length", 1, 1 << 26),
        layer_bytes=layer_bytes, token_embd=token_embd, output=output,
        experts=_count(facts, "expert_count", 0, 1 << 16, required=False),
        sliding_window=_count(facts, "sliding_window", 0, 1 << 26, required=False),
        tied=facts.get("output_tied") is True,
    )


@dataclass
class Rig:
    gpus: list  # [(index, short name, vram bytes)]
    ram: int
    cores: int | None


def short_gpu_name(name):
    name = str(name or "GPU").strip()
    for prefix in ("NVIDIA GeForce ", "NVIDIA ", "GeForce "):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name[:60]


def rig_from_hardware(hardware):
    """A rig from its agent's hardware report (probe.probe_hardware): gpus[].vram_total, ram_total, cores."""
    if not isinstance(hardware, dict) or "ram_total" not in hardware:
        raise CannotPlan("the rig has not reported its hardware yet")
    gpus = []
    for position, gpu in enumerate(hardware.get("gpus") or []):
        if not isinstance(gpu, dict):
            raise CannotPlan("the rig's hardware report lists a GPU without its memory")
        vram = gpu.get("vram_total")
        if isinstance(vram, bool) or not isinstance(vram, int) or not 0 < vram < 1 << 44:
            raise CannotPlan("the rig's hardware report lists a GPU without its memory")
        index = gpu.get("index")
        gpus.append((index if isinstance(index, int) else position, short_gpu_name(gpu.get("name")), vram))
    ram = hardware.get("ram_total")
    if isinstance(ram, bool) or not isinstance(ram, int) or ram <= 0:
        raise CannotPlan("the rig's hardware report has no RAM size")
    return Rig(gpus=gpus, ram=ram, cores=math_cores(hardware.get("cpu_cores_physical"),
                                                    hardware.get("cpu_cores_logical")))


def math_cores(physical, logical):
    """Threads for llama.cpp: one per physical core, leaving out a hybrid CPU's efficiency cores as llama.cpp's
    own default does (cpu_get_num_math). Performance cores have two threads, efficiency cores one, so with
    physical < logical < 2 × physical there are logical - physical performance cores: an i7-13700K reports 16
    and 24, giving 8 — the seed guide's --threads 8."""
    def count(value):
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 4096 else None

    physical, logical = count(physical), count(logical)
    if physical and logical and physical < logical < 2 * physical:
        return logical - physical
    return physical


def parse_tensor_split(text):
    if not text:
        return None
    try:
        shares = [float(part) for part in str(text).split(",")]
    except ValueError:
        raise PlanRefused(f"tensor split {text!r} must be numbers separated by commas, one per GPU") from None
    if any(not math.isfinite(s) or s < 0 for s in shares) or not any(shares):
        raise PlanRefused(f"tensor split {text!r} must give at least one GPU a share, none a negative one")
    return shares


def check(facts, hardware, ctx_size=None, parallel=None, n_gpu_layers=None, tensor_split=None,
          cache_type_k="f16", cache_type_v="f16", flash_attn="auto", rope_scaling=False, model_bytes=None):
    """Raise PlanRefused with the reason when llama-server cannot run this model on this rig with these flags
    (a form's clean step calls this; plan() calls it too)."""
    _check(shape_from_facts(facts, model_bytes), rig_from_hardware(hardware), ctx_size, parallel, n_gpu_layers,
           tensor_split, cache_type_k, cache_type_v, flash_attn, rope_scaling)


def _check(shape, rig, ctx_size=None, parallel=None, n_gpu_layers=None, tensor_split=None, cache_type_k="f16",
           cache_type_v="f16", flash_attn="auto", rope_scaling=False):
    """The refusals, on a parsed shape and rig; returns the tensor split's shares (None: by VRAM).

    `n_gpu_layers` above layers + 1 (the output layer) is refused, except 99 and 999, which the seed and most
    guides write for "all" and llama.cpp clamps: a 40 for a 32-layer model is more likely a mistake (a different
    model in mind) than a wish for everything."""
    def whole(name, value, lo, hi):
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlanRefused(f"{name} must be a whole number")
        if not lo <= value <= hi:
            raise PlanRefused(f"{name} must be between {lo} and {hi} (got {value})")

    if parallel is not None:
        whole("parallel", parallel, 1, MAX_PARALLEL)
    if ctx_size is not None:
        whole("ctx-size", ctx_size, MIN_CTX_SIZE, MAX_CTX_SIZE)
        slots = parallel or DEFAULT_PARALLEL
        per_slot = ctx_size // slots
        if per_slot > shape.context and not rope_scaling:
            raise PlanRefused(
                f"ctx-size {ctx_size} gives each of the {slots} slots {per_slot} tokens, above the {shape.context} "
                f"the model was trained on: use ctx-size {shape.context * slots} or less, or set a rope scaling "
                f"(--rope-freq-scale)")
    if n_gpu_layers is not None:
        whole("n-gpu-layers", n_gpu_layers, 0, 999)
        if n_gpu_layers > shape.layers + 1 and n_gpu_layers not in ALL_LAYERS:
            raise PlanRefused(
                f"n-gpu-layers {n_gpu_layers} is more than the model's {shape.layers} layers and its output layer "
                f"({shape.layers + 1}); use {shape.layers + 1} or 99 for all")
        if n_gpu_layers and not rig.gpus:
            raise PlanRefused(f"n-gpu-layers {n_gpu_layers} on a rig without GPUs: use 0")
    shares = parse_tensor_split(tensor_split)
    if shares is not None:
        if not rig.gpus:
            raise PlanRefused("a tensor split on a rig without GPUs: leave it empty")
        if len(shares) != len(rig.gpus):
            raise PlanRefused(f"tensor split {tensor_split} has {len(shares)} share(s) for the rig's "
                              f"{len(rig.gpus)} GPU(s): give one per GPU")
    for name, value in (("cache-type-k", cache_type_k), ("cache-type-v", cache_type_v)):
        if value not in CACHE_TYPES:
            raise PlanRefused(f"{name} must be one of {', '.join(CACHE_TYPES)}")
        block = CACHE_TYPES[value][1]
        length = shape.key_length if name.endswith("k") else shape.value_length
        if length % block:
            raise PlanRefused(f"{name} {value} needs a head width that is a multiple of {block} "
                              f"(this model's: {length})")
    if flash_attn not in FLASH_ATTN:
        raise PlanRefused(f"flash-attn must be one of {', '.join(FLASH_ATTN)}")
    if flash_attn == "off" and CACHE_TYPES[cache_type_v][1] > 1:
        raise PlanRefused(f"cache-type-v {cache_type_v} needs flash attention (llama.cpp refuses a quantized V "
                          "cache without it): set flash-attn on or auto")
    return shares


def cache_row_bytes(cache_type, elements):
    size, block = CACHE_TYPES[cache_type]
    return elements // block * size


def kv_cells(ctx_size, parallel):
    """KV cells llama.cpp allocates: each of `parallel` streams gets pad(pad(ctx, 256) / parallel, 256)."""
    n_ctx = -(-ctx_size // KV_PAD) * KV_PAD
    per_seq = -(-(n_ctx // parallel) // KV_PAD) * KV_PAD
    return per_seq * parallel, per_seq


def kv_layer_bytes(shape, il, cells, cache_type_k, cache_type_v):
    kv = shape.kv_heads[il]
    if not kv:
        return 0
    return cells * (cache_row_bytes(cache_type_k, shape.key_length * kv)
                    + cache_row_bytes(cache_type_v, shape.value_length * kv))


def _compute_parts(shape, n_ctx, per_seq, parallel, flash, n_outputs=None):
    """Peak bytes of each phase of one micro-batch (at most 512 tokens) as ggml's graph allocator lays it out,
    each including the graph's inputs; fitted to what the vendored llama-server logs (tests/test_planner_llama.py).

    Activations are f32, so a tensor of width w costs 4 × tokens × w. The inputs hold the KQ mask (n_kv × tokens,
    f16 with flash attention, f32 without) and, without flash attention, the V cache's scatter indexes
    (tokens × V width, int64). llama-server keeps one output row per slot (server_output_limits), so the logits
    are `parallel` × vocab; llama-fit-params reserves a row per token (`n_outputs`)."""
    t = min(n_ctx, N_UBATCH)
    act = 4 * t
    q_width = shape.heads * shape.key_length
    out_width = shape.heads * shape.value_length
    v_width = max(shape.kv_heads) * shape.value_length
    inputs = 3 * act + 8 * t + per_seq * t * (2 if flash else 4) + (8 * t if flash else 8 * t * v_width)
    if flash:
        attention = act * (3 * shape.width + q_width + out_width)
    else:  # the n_kv × tokens × heads KQ matrix, softmaxed in place
        attention = act * (3 * shape.width + 2 * q_width) + 4 * per_seq * t * shape.heads
    ffn = act * (4 * shape.width + 3 * shape.ffn)
    rows = min(t, n_outputs or parallel)
    output = act * 2 * shape.width + 4 * rows * (shape.width + shape.vocab)  # the inputs are freed by then
    return {"inputs": inputs, "embd": act * shape.width, "attention": inputs + attention, "ffn": inputs + ffn,
            "output": output}


def _compute_bytes(parts, layers, output, host_of_gpus=False):
    if host_of_gpus:  # the CPU side of a fully offloaded model: the embedding lookup and the inputs
        return parts["embd"] + parts["inputs"]
    peaks = [parts["attention"], parts["ffn"]] if layers else []
    if output:
        peaks.append(parts["output"])
    return max(peaks, default=0)


def _layer_devices(shape, n_gpu, shares, ngl):
    """Device position of each repeating layer and of the output layer (llama-model.cpp load_tensors)."""
    n_layer = shape.layers
    places = [None] * (n_layer + 1)  # None: the CPU
    if not n_gpu or not ngl:
        return places
    ngl = min(ngl, n_layer + 1)
    start = n_layer + 1 - ngl
    total = sum(shares)
    bounds, running = [], 0.0
    for share in shares:
        running += share
        bounds.append(running / total)
    for il in range(start, n_layer + 1):
        fraction = (il - start) / ngl
        places[il] = min(next((i for i, b in enumerate(bounds) if b > fraction), n_gpu - 1), n_gpu - 1)
    return places


def layout(shape, rig, ctx_size, parallel, ngl, shares, cache_type_k, cache_type_v, flash, n_outputs=None):
    """Bytes on each device for one set of flags: GPUs in order, then the CPU."""
    gpus = [Device(name=name, kind="gpu", index=index, capacity=vram) for index, name, vram in rig.gpus]
    host = Device(name="CPU", kind="cpu", index=None, capacity=max(0, rig.ram - HOST_RESERVE))
    shares = shares or [vram for _, _, vram in rig.gpus]
    places = _layer_devices(shape, len(gpus), shares, ngl)
    cells, per_seq = kv_cells(ctx_size, parallel)
    parts = _compute_parts(shape, cells, per_seq, parallel, flash, n_outputs)
    host.weights = shape.token_embd
    for il, place in enumerate(places):
        device = host if place is None else gpus[place]
        if il == shape.layers:
            device.output = True
            device.weights += shape.output - (shape.token_embd if device is host and shape.tied else 0)
        else:
            device.layers += 1
            device.weights += shape.layer_bytes[il]
            device.kv += kv_layer_bytes(shape, il, cells, cache_type_k, cache_type_v)
    # Every layer on two or more GPUs: llama.cpp pipelines micro-batches and keeps SCHED_COPIES copies of each
    # split's inputs (ggml-backend.cpp, n_copies), never freed.
    copies = SCHED_COPIES if len(gpus) > 1 and ngl >= shape.layers + 1 else 1
    for gpu in gpus:
        gpu.compute = _compute_bytes(parts, gpu.layers, gpu.output)
        if gpu.compute:
            gpu.compute += (copies - 1) * (parts["embd"] + parts["inputs"])
        gpu.overhead = CUDA_OVERHEAD if ngl else 0
    if host.layers or host.output:
        host.compute = _compute_bytes(parts, host.layers, host.output)
    else:
        host.compute = copies * _compute_bytes(parts, 0, False, host_of_gpus=True)
    host.overhead = 4 * shape.vocab * parallel  # the logits output buffer (llama-context.cpp output_reserve)
    return gpus + [host]


def _gb(value):
    """GB as GPU makers count VRAM (2^30 bytes: a 24 GB card), one decimal unless whole."""
    text = f"{value / GiB:.1f}"
    return f"{text.removesuffix('.0')} GB"


def _rig_name(rig):
    if not rig.gpus:
        return "the CPU"
    names = [name for _, name, _ in rig.gpus]
    if len(set(names)) == 1:
        return f"{len(names)}× {names[0]}" if len(names) > 1 else names[0]
    return " + ".join(names)


def _fits(devices, headroom=0):
    return all(d.spare >= (headroom if d.kind == "gpu" else 0) for d in devices)


def _largest_ctx(shape, rig, parallel, ngl, shares, ck, cv, flash, rope_scaling):
    """The largest ctx-size that fits with these layers offloaded and HEADROOM left on each GPU, each slot a
    multiple of 256 tokens within the trained context (unless a rope scaling is set); None if none fits."""
    cap_per_slot = MAX_CTX_SIZE // parallel if rope_scaling else min(shape.context, MAX_CTX_SIZE // parallel)
    if cap_per_slot < KV_PAD:  # a model trained on under 256 tokens: one size to try
        ctx = max(MIN_CTX_SIZE, cap_per_slot * parallel)
        return ctx if _fits(layout(shape, rig, ctx, parallel, ngl, shares, ck, cv, flash), HEADROOM) else None
    lo, hi, best = 1, cap_per_slot // KV_PAD, None  # per-slot size in 256-cell steps
    while lo <= hi:
        mid = (lo + hi) // 2
        ctx = max(MIN_CTX_SIZE, mid * KV_PAD * parallel)
        if _fits(layout(shape, rig, ctx, parallel, ngl, shares, ck, cv, flash), HEADROOM):
            best, lo = ctx, mid + 1
        else:
            hi = mid - 1
    return best


def _most_layers(shape, rig, ctx, parallel, shares, ck, cv, flash):
    """The most layers that fit on the GPUs at this context with HEADROOM left on each (0: none)."""
    lo, hi, best = 1, shape.layers + 1, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if _fits(layout(shape, rig, ctx, parallel, mid, shares, ck, cv, flash), HEADROOM):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def plan(facts, hardware, ctx_size=None, parallel=None, n_gpu_layers=None, tensor_split=None,
         cache_type_k="f16", cache_type_v="f16", flash_attn="auto", rope_scaling=False, siblings=None,
         model_bytes=None, this_quant=None):
    """Plan a model (header `facts`) on a rig (`hardware` report). Values left None are recommended: every layer
    on the GPUs, the largest ctx-size that fits (each slot within the trained context), parallel 4.

    `fits`: the model runs as asked (None values: with every layer on the GPUs) within each device's memory.
    `flags`: what to launch with — when the whole model does not fit and n_gpu_layers was left to the planner,
    the most layers that do (the rest on the CPU), so the flags always run where anything can.
    `siblings`: [(quant, size in bytes)] of the catalogue's other files of the same model, to suggest a smaller
    one when this does not fit; `this_quant` is skipped. `model_bytes`: the whole model's size (split models)."""
    shape = shape_from_facts(facts, model_bytes)
    rig = rig_from_hardware(hardware)
    shares = _check(shape, rig, ctx_size, parallel, n_gpu_layers, tensor_split, cache_type_k, cache_type_v,
                   flash_attn, rope_scaling)
    flash = flash_attn != "off"  # auto resolves to on wherever llama.cpp supports it (CUDA and CPU do)
    parallel = parallel or DEFAULT_PARALLEL
    all_layers = shape.layers + 1
    args = (shares, cache_type_k, cache_type_v, flash)
    target = min(n_gpu_layers, all_layers) if n_gpu_layers is not None else (all_layers if rig.gpus else 0)
    floor_ctx = max(MIN_CTX_SIZE, min(FIT_MIN_CTX, shape.context * parallel))

    if ctx_size is None:
        largest = _largest_ctx(shape, rig, parallel, target, *args, rope_scaling)
        ctx, fits = largest or floor_ctx, largest is not None
    else:
        ctx = ctx_size
        fits = _fits(layout(shape, rig, ctx, parallel, target, *args))
    wanted = layout(shape, rig, ctx, parallel, target, *args)
    ngl = target
    if not fits and n_gpu_layers is None and rig.gpus:
        ngl = _most_layers(shape, rig, ctx, parallel, *args) or target
    devices = layout(shape, rig, ctx, parallel, ngl, *args)
    gpus, host = devices[:-1], devices[-1]
    on_gpus = bool(rig.gpus and ngl)

    max_ctx = _largest_ctx(shape, rig, parallel, ngl, *args, rope_scaling)
    placed = "every layer" if ngl >= all_layers else f"{ngl} of {all_layers} layers"
    max_ctx_note = f"{placed} on the GPUs" if on_gpus else "all in RAM"
    max_ctx_note += f", {cache_type_k}/{cache_type_v} KV cache, {parallel} slot(s)"
    if max_ctx is not None and (cache_type_k, cache_type_v) == ("f16", "f16") and flash:
        quantized = _largest_ctx(shape, rig, parallel, ngl, shares, "q8_0", "q8_0", flash, rope_scaling)
        if quantized and quantized > max_ctx:
            max_ctx_note += f"; {quantized} with --cache-type-k q8_0 --cache-type-v q8_0"

    if on_gpus:
        needed, capacity = sum(g.needed for g in gpus), sum(g.capacity for g in gpus)
    else:
        needed, capacity = host.needed, host.capacity
    warnings, suggestions = [], []
    if on_gpus and ngl < all_layers:
        warnings.append(f"{all_layers - ngl} of {all_layers} layers (the output layer counts as one) run on the "
                        "CPU: generation is much slower")
    if shape.experts:
        warnings.append(f"a mixture of {shape.experts} experts: every expert's weights are counted in memory; "
                        "the compute estimate assumes a dense model")
    if not all(shape.kv_heads):
        warnings.append("some layers have no attention (a hybrid or recurrent model): their recurrent state is not "
                        "counted")
    if shape.sliding_window:
        warnings.append("sliding-window attention: the KV estimate counts every layer at full context (an upper bound)")
    if not host.fits:
        warnings.append(f"needs {_gb(host.needed)} of RAM, the rig has {_gb(rig.ram)}")

    if fits and on_gpus:
        summary = f"fits on {_rig_name(rig)} with {_gb(capacity - needed)} to spare"
        if ngl < all_layers:
            summary += f" ({placed} on the GPUs, the rest on the CPU)"
    elif fits:
        summary = (f"runs on the CPU only (no GPU): needs {_gb(host.needed)} of {_gb(rig.ram)} RAM, "
                   f"{_gb(host.spare)} to spare") if not rig.gpus else \
                  f"runs on the CPU (no layers offloaded): needs {_gb(host.needed)} of RAM, {_gb(host.spare)} to spare"
    else:
        wanted_gpus = wanted[:-1]
        if target and rig.gpus and all(g.fits for g in wanted_gpus):
            summary = f"needs {_gb(wanted[-1].needed)} of RAM, rig has {_gb(rig.ram)}"
        elif target and rig.gpus:
            summary = (f"needs {_gb(sum(g.needed for g in wanted_gpus))}, "
                       f"rig has {_gb(sum(g.capacity for g in wanted_gpus))}")
        else:
            summary = f"needs {_gb(wanted[-1].needed)} of RAM, rig has {_gb(rig.ram)}"
        if summary.endswith(f"rig has {_gb(rig.ram)}") and wanted[-1].needed <= rig.ram:
            summary += f" ({_gb(HOST_RESERVE)} kept for the system)"
        suggestions = _suggestions(shape, rig, ctx, parallel, target, args, siblings, model_bytes, this_quant,
                                   rope_scaling, ngl if ngl != target and _fits(devices) else None)
        if suggestions:
            summary += " — try " + ", or ".join(suggestions)
    # A given n_gpu_layers stays as written (99 means all to llama.cpp as to the provider).
    flags = {"n_gpu_layers": n_gpu_layers if n_gpu_layers is not None and ngl == target else ngl,
             "tensor_split": tensor_split or "", "ctx_size": ctx, "parallel": parallel, "threads": rig.cores,
             "flash_attn": flash_attn, "cache_type_k": cache_type_k, "cache_type_v": cache_type_v}
    return Plan(devices=devices, flags=flags, fits=fits, needed=needed, capacity=capacity, spare=capacity - needed,
                max_ctx_size=max_ctx, max_ctx_note=max_ctx_note, summary=summary, warnings=warnings,
                suggestions=suggestions)


def _scaled(shape, ratio):
    scaled = Shape(**{**shape.__dict__})
    scaled.layer_bytes = [int(b * ratio) for b in shape.layer_bytes]
    scaled.token_embd = int(shape.token_embd * ratio)
    scaled.output = int(shape.output * ratio)
    return scaled


def _suggestions(shape, rig, ctx, parallel, ngl, args, siblings, model_bytes, this_quant, rope_scaling, fewer):
    """What would fit: a smaller file of the same model, a smaller context, fewer layers on the GPUs."""
    out = []
    size = model_bytes or shape.weights
    for quant, sibling_size in sorted(siblings or [], key=lambda s: -(s[1] or 0)):
        if not quant or not sibling_size or sibling_size >= size or quant == this_quant:
            continue
        if _fits(layout(_scaled(shape, sibling_size / size), rig, ctx, parallel, ngl, *args), HEADROOM):
            out.append(str(quant))
            break
    smaller = _largest_ctx(shape, rig, parallel, ngl, *args, rope_scaling)
    if smaller and smaller < ctx:
        out.append(f"ctx-size {smaller}")
    if fewer:
        out.append(f"n-gpu-layers {fewer} (the rest on the CPU, slower)")
    return out
