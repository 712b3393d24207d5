"""A llama-server launch: the parameters a provider sets, their checks, and the command line they make.

Plain Python shared by the panel (to refuse bad input before anything runs) and the agent (to refuse it again).
"""

import ipaddress
import re
from dataclasses import asdict, dataclass, field, fields

CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
FLASH_ATTN = ("auto", "on", "off")
ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}\Z")  # \Z, not $: "$" also matches before a trailing newline
TENSOR_SPLIT_RE = re.compile(r"^\d{1,3}(\.\d{1,3})?(,\d{1,3}(\.\d{1,3})?){0,15}\Z")
API_KEY_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{8,128}\Z")

# Extra flags a provider may add: flag → None (no value) or a checker for its value.
_INT = re.compile(r"^\d{1,7}$")
_FLOAT = re.compile(r"^\d{1,7}(\.\d{1,6})?$")
EXTRA_FLAGS = {
    "--mlock": None,
    "--no-mmap": None,
    "--jinja": None,
    "--no-webui": None,
    "--cont-batching": None,
    "--no-cont-batching": None,
    "--batch-size": _INT,
    "--ubatch-size": _INT,
    "--rope-freq-base": _FLOAT,
    "--rope-freq-scale": _FLOAT,
    "--defrag-thold": _FLOAT,
    "--main-gpu": _INT,
    "--split-mode": re.compile(r"^(none|layer|row)$"),
    "--timeout": _INT,
    "--threads-http": _INT,
    "--cache-reuse": _INT,
}


class SpecError(ValueError):
    """What is wrong, in words for the provider; nothing has been started."""


@dataclass
class ServerSpec:
    deployment_id: int
    binary: str
    model_path: str
    port: int
    host: str = "127.0.0.1"
    ctx_size: int = 8192
    n_gpu_layers: int = 99
    parallel: int = 1
    threads: int | None = None
    tensor_split: str = ""
    flash_attn: str = "auto"
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    alias: str = ""
    api_key: str = field(default="", repr=False)
    extra_flags: list = field(default_factory=list)
    desired: str = "running"
    generation: int = 0  # bumped by the panel on every change; a restart of the server follows a new generation

    def __post_init__(self):
        check_spec(self)

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SpecError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_dict(self):
        return asdict(self)


def _int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{name} must be a whole number")
    if not lo <= value <= hi:
        raise SpecError(f"{name} must be between {lo} and {hi} (got {value})")
    return value


def check_host(host):
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise SpecError(f"host {host!r} must be an IP address such as 127.0.0.1 or 0.0.0.0") from None
    if getattr(address, "scope_id", None):  # "fe80::1%<anything>" parses, with the text after % unchecked
        raise SpecError(f"host {host!r} must be an IP address without a %scope")
    return str(address)


def check_exposure(host, api_key):
    """A server that other machines can reach (0.0.0.0 and :: included) must ask clients for a key."""
    if not api_key and not ipaddress.ip_address(host).is_loopback:
        raise SpecError(f"host {host} lets other machines reach the server: set an API key, "
                        "or use 127.0.0.1 to keep it on the rig")


def check_port(port):
    return _int("port", port, 1024, 65535)


def check_extra_flags(flags):
    if not isinstance(flags, list) or len(flags) > 20:
        raise SpecError("extra flags must be a list of at most 20 flags")
    args = []
    for raw in flags:
        if not isinstance(raw, str):
            raise SpecError("each extra flag must be text")
        name, has_value, value = raw.strip().partition("=")
        if name not in EXTRA_FLAGS:
            raise SpecError(f"flag {name!r} is not allowed (allowed: {', '.join(sorted(EXTRA_FLAGS))})")
        checker = EXTRA_FLAGS[name]
        if checker is None:
            if has_value:
                raise SpecError(f"{name} takes no value")
            args.append(name)
        else:
            if not has_value or not checker.match(value):
                raise SpecError(f"{name} needs a value like {name}={'512' if checker is _INT else 'value'}")
            args += [name, value]
    return args


def check_spec(spec):
    if not isinstance(spec.deployment_id, int) or spec.deployment_id < 1:
        raise SpecError("deployment id must be a positive number")
    for name in ("binary", "model_path"):
        value = getattr(spec, name)
        if not isinstance(value, str) or not value.startswith("/") or "\x00" in value or "/../" in value:
            raise SpecError(f"{name} must be an absolute path on the rig")
    if not spec.model_path.lower().endswith(".gguf"):
        raise SpecError("the model must be a .gguf file")
    check_port(spec.port)
    spec.host = check_host(spec.host)
    _int("ctx-size", spec.ctx_size, 256, 1_048_576)
    _int("n-gpu-layers", spec.n_gpu_layers, 0, 999)
    _int("parallel", spec.parallel, 1, 256)
    if spec.ctx_size // spec.parallel < 128:
        raise SpecError(f"ctx-size {spec.ctx_size} split over {spec.parallel} slots leaves under 128 tokens each")
    if spec.threads is not None:
        _int("threads", spec.threads, 1, 1024)
    if spec.tensor_split and not TENSOR_SPLIT_RE.match(spec.tensor_split):
        raise SpecError("tensor-split must look like 1,1 or 3,2 (one share per GPU)")
    if spec.flash_attn not in FLASH_ATTN:
        raise SpecError(f"flash-attn must be one of {', '.join(FLASH_ATTN)}")
    for name in ("cache_type_k", "cache_type_v"):
        if getattr(spec, name) not in CACHE_TYPES:
            raise SpecError(f"{name.replace('_', '-')} must be one of {', '.join(CACHE_TYPES)}")
    if spec.alias and not ALIAS_RE.match(spec.alias):
        raise SpecError("alias may hold letters, digits and . _ : / - (up to 100)")
    if spec.api_key and not API_KEY_RE.match(spec.api_key):
        raise SpecError("API key must be 8-128 characters of letters, digits and ._~+/=-")
    # Only a running server binds: a keyless one saved before this rule can still be told to stop.
    if spec.desired == "running":
        check_exposure(spec.host, spec.api_key)
    check_extra_flags(spec.extra_flags)
    if spec.desired not in ("running", "stopped"):
        raise SpecError("desired state must be running or stopped")


def launch_args(spec, api_key_file=None):
    """The llama-server command line, as an argument list (no shell)."""
    args = [
        spec.binary,
        "--model", spec.model_path,
        "--host", spec.host,
        "--port", str(spec.port),
        "--ctx-size", str(spec.ctx_size),
        "--n-gpu-layers", str(spec.n_gpu_layers),
        "--parallel", str(spec.parallel),
        "--flash-attn", spec.flash_attn,
        "--metrics",
    ]
    if spec.threads:
        args += ["--threads", str(spec.threads)]
    if spec.tensor_split:
        args += ["--tensor-split", spec.tensor_split]
    if spec.cache_type_k != "f16":
        args += ["--cache-type-k", spec.cache_type_k]
    if spec.cache_type_v != "f16":
        args += ["--cache-type-v", spec.cache_type_v]
    if spec.alias:
        args += ["--alias", spec.alias]
    if spec.api_key and api_key_file:
        args += ["--api-key-file", str(api_key_file)]  # a file, so the key is not in the process list
    return args + check_extra_flags(spec.extra_flags)


# The seed document's two command lines, as presets a provider starts from.
PRESETS = {
    "seed-single-gpu": {"label": "Seed: one GPU, 8k context", "ctx_size": 8192, "n_gpu_layers": 99,
                        "parallel": 4, "flash_attn": "auto", "tensor_split": ""},
    "seed-dual-gpu": {"label": "Seed: two GPUs, 8k context x 22 streams", "ctx_size": 8192, "n_gpu_layers": 99,
                      "parallel": 22, "flash_attn": "auto", "tensor_split": "1,1"},
}
