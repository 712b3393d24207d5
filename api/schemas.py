"""What the API answers, as pydantic schemas (they are the OpenAPI document's components), and the functions that
turn rows into them. Nothing here reads a secret: a deployment's API key appears only as `api_key_set`."""

from datetime import datetime
from typing import List, Literal, Optional

from django.urls import reverse
from django.utils import timezone
from ninja import Field, Schema

from nodes.agent import benchmark as sweep
from nodes.models import Operation


class Error(Schema):
    detail: str = Field(description="Why, in words for a person")


class ValidationErrors(Schema):
    detail: list = Field(description="One entry per field that was not right (pydantic's error list)")


class Progress(Schema):
    done: Optional[int]
    total: Optional[int]
    unit: str
    percent: Optional[int]
    rate: Optional[float] = Field(description="units per second")
    eta_seconds: Optional[float]


class OperationOut(Schema):
    id: int
    kind: str
    kind_label: str
    rig: str
    target: str
    status: str = Field(description="queued → running → succeeded | failed | cancelled")
    terminal: bool = Field(description="true once the status will not change again: stop polling")
    progress: Progress
    message: str
    log_tail: str
    result: dict
    requested_by: Optional[str]
    created: datetime
    started: Optional[datetime]
    finished: Optional[datetime]
    url: str = Field(description="GET this to follow the operation")
    page: str = Field(description="the operation's page in the panel")


class GpuOut(Schema):
    index: int
    name: str
    uuid: str
    vram_total: int
    power_limit_w: Optional[float]
    compute_capability: str
    reading_at: Optional[datetime] = Field(description="when the reading below was taken")
    util: Optional[float] = Field(description="percent")
    vram_used: Optional[int]
    temp_c: Optional[float]
    power_w: Optional[float]
    fan: Optional[float] = Field(description="percent")
    sm_clock: Optional[int] = Field(description="MHz")


class HardwareOut(Schema):
    hostname: Optional[str]
    os: Optional[str]
    kernel: Optional[str]
    cpu_model: Optional[str]
    cpu_cores_physical: Optional[int]
    cpu_cores_logical: Optional[int]
    ram_total: Optional[int]
    disk_total: Optional[int]
    driver_version: Optional[str]
    cuda_version: Optional[str]
    gpu_count: int
    gpu_note: str
    reported_at: Optional[datetime]


class HostReadingOut(Schema):
    cpu_percent: Optional[float]
    ram_used: Optional[int]
    ram_total: Optional[int]
    disk_free: Optional[int]
    at: Optional[str]


class RigOut(Schema):
    name: str
    status: Literal["new", "online", "stale", "offline"]
    last_seen: Optional[datetime]
    seen_seconds_ago: Optional[float]
    notes: str
    clock_offset: Optional[float] = Field(description="the rig's clock minus the panel's, seconds")
    hardware: HardwareOut
    host: HostReadingOut
    gpus: List[GpuOut]
    url: str


class HostSampleOut(Schema):
    minute: datetime
    cpu_percent: float
    ram_used: int
    disk_free: int


class GpuSampleOut(Schema):
    minute: datetime
    util: Optional[float]
    vram_used: Optional[int]
    temp_c: Optional[float]
    power_w: Optional[float]


class GpuSeriesOut(Schema):
    index: int
    name: str
    samples: List[GpuSampleOut]


class TelemetryOut(Schema):
    rig: str
    since: datetime
    host: List[HostSampleOut]
    gpus: List[GpuSeriesOut]


class RigFileOut(Schema):
    id: int
    rig: str
    path: str
    size: int
    sha256: str
    verified: bool
    source: str
    repo_id: str
    filename: str
    model_file_id: Optional[int] = Field(description="the catalogue file it is a copy of")
    updated: datetime


class CatalogFileOut(Schema):
    id: int
    filename: str
    quant: str
    size: Optional[int]
    shards: int
    parameters: Optional[int]
    rigs: List[str] = Field(description="rigs that have a copy")


class CatalogModelOut(Schema):
    id: int
    repo_id: str
    name: str
    revision: str
    curated: bool
    files: List[CatalogFileOut]


class BuildOut(Schema):
    id: int
    rig: str
    source: str
    ref: str
    backend: str
    adopted: bool
    status: str
    is_default: bool
    binary_path: str
    version: str
    commit: str
    duration: Optional[float] = Field(description="seconds")
    message: str
    created: datetime
    finished: Optional[datetime]
    operation_id: Optional[int]


class DeploymentOut(Schema):
    id: int
    name: str
    rig: str
    model_file_id: int
    model_path: str
    build_id: int
    host: str
    port: int
    endpoint_url: str
    ctx_size: int
    n_gpu_layers: int
    parallel: int
    threads: Optional[int]
    flash_attn: str
    alias: str
    api_key_set: bool = Field(description="whether clients must send a key; the key itself is never returned")
    desired_state: str
    actual_state: str
    healthy: bool
    started_at: Optional[datetime]
    restarts: int
    message: str
    reported_at: Optional[datetime]
    serving: Optional[dict] = Field(description="live serving metrics (tokens/s, busy slots, requests, KV cache) "
                                                "while healthy and recent; null otherwise")
    serving_at: Optional[datetime]


class DownloadIn(Schema):
    model_file_id: int = Field(description="a file of the catalogue (GET /catalogue)")


class BuildIn(Schema):
    source: Optional[str] = Field(None, description="only the default source: another one runs other code on the "
                                                    "rig and is started in the panel, which asks for the password")
    ref: Optional[str] = None
    backend: Literal["auto", "cpu", "cuda"] = "auto"
    options: dict = Field(default_factory=dict, description="extra CMake options, NAME: VALUE, from the allow-list")


class BenchmarkIn(Schema):
    prompt_tokens: Optional[int] = Field(None, ge=sweep.LIMITS["prompt_tokens"][0],
                                         le=sweep.LIMITS["prompt_tokens"][1])
    gen_tokens: Optional[int] = Field(None, ge=sweep.LIMITS["gen_tokens"][0], le=sweep.LIMITS["gen_tokens"][1])


# --- rows → answers ---------------------------------------------------------------------------------------------
def operation_out(operation):
    return {
        "id": operation.pk, "kind": operation.kind, "kind_label": operation.get_kind_display(),
        "rig": operation.node.name, "target": operation.target, "status": operation.status,
        "terminal": operation.is_terminal,
        "progress": {"done": operation.progress_done, "total": operation.progress_total,
                     "unit": operation.progress_unit, "percent": operation.progress_percent,
                     "rate": operation.progress_rate, "eta_seconds": operation.progress_eta},
        "message": operation.message, "log_tail": operation.log_tail, "result": operation.result or {},
        "requested_by": operation.requested_by.get_username() if operation.requested_by else None,
        "created": operation.created, "started": operation.started, "finished": operation.finished,
        "url": reverse("api:get_operation", args=[operation.pk]), "page": operation.get_absolute_url(),
    }


GPU_FIELDS = ("index", "name", "uuid", "vram_total", "power_limit_w", "compute_capability", "reading_at", "util",
              "vram_used", "temp_c", "power_w", "fan", "sm_clock")
HARDWARE_FIELDS = ("hostname", "os", "kernel", "cpu_model", "cpu_cores_physical", "cpu_cores_logical", "ram_total",
                   "disk_total", "driver_version", "cuda_version")
HOST_FIELDS = ("cpu_percent", "ram_used", "ram_total", "disk_free", "at")


def rig_out(node, now=None):
    """A rig with its GPUs; `node.gpus` prefetched by the caller, so a list costs two queries."""
    now = now or timezone.now()
    hardware = node.hardware or {}
    reading = node.host_reading or {}
    return {
        "name": node.name, "status": node.status_at(now), "last_seen": node.last_seen,
        "seen_seconds_ago": round((now - node.last_seen).total_seconds(), 1) if node.last_seen else None,
        "notes": node.notes, "clock_offset": node.clock_offset,
        "hardware": {**{key: hardware.get(key) for key in HARDWARE_FIELDS}, "gpu_count": len(hardware.get("gpus") or []),
                     "gpu_note": hardware.get("gpu_note") or "", "reported_at": node.hardware_at},
        "host": {key: reading.get(key) for key in HOST_FIELDS},
        "gpus": [{key: getattr(gpu, key) for key in GPU_FIELDS} for gpu in node.gpus.all()],
        "url": reverse("api:get_rig", args=[node.name]),
    }


def rig_file_out(rig_file):
    return {"id": rig_file.pk, "rig": rig_file.node.name, "path": rig_file.path, "size": rig_file.size,
            "sha256": rig_file.sha256, "verified": rig_file.verified, "source": rig_file.source,
            "repo_id": rig_file.repo_id, "filename": rig_file.filename, "model_file_id": rig_file.model_file_id,
            "updated": rig_file.updated}


def catalog_model_out(model):
    return {"id": model.pk, "repo_id": model.repo_id, "name": model.name, "revision": model.revision,
            "curated": model.curated,
            "files": [{"id": f.pk, "filename": f.filename, "quant": f.file_type, "size": f.size,
                       "shards": f.shard_count, "parameters": f.parameters,
                       "rigs": sorted(copy.node.name for copy in f.copies.all())} for f in model.files.all()]}


def build_out(build):
    return {"id": build.pk, "rig": build.node.name, "source": build.source, "ref": build.ref,
            "backend": build.backend, "adopted": build.adopted, "status": build.status, "is_default": build.is_default,
            "binary_path": build.binary_path, "version": build.version, "commit": build.commit,
            "duration": build.duration, "message": build.message, "created": build.created,
            "finished": build.finished, "operation_id": build.operation_id}


def deployment_out(deployment):
    return {
        "id": deployment.pk, "name": deployment.name, "rig": deployment.node.name,
        "model_file_id": deployment.model_file_id, "model_path": deployment.model_file.path,
        "build_id": deployment.build_id, "host": deployment.host, "port": deployment.port,
        "endpoint_url": deployment.endpoint_url, "ctx_size": deployment.ctx_size,
        "n_gpu_layers": deployment.n_gpu_layers, "parallel": deployment.parallel, "threads": deployment.threads,
        "flash_attn": deployment.flash_attn, "alias": deployment.alias, "api_key_set": bool(deployment.api_key),
        "desired_state": deployment.desired_state, "actual_state": deployment.actual_state,
        "healthy": deployment.is_healthy, "started_at": deployment.started_at, "restarts": deployment.restarts,
        "message": deployment.message, "reported_at": deployment.reported_at, "serving": deployment.live_serving,
        "serving_at": deployment.serving_at,
    }


OPERATION_KINDS = tuple(kind for kind, _label in Operation.KIND_CHOICES)
OPERATION_STATES = tuple(state for state, _label in Operation.STATUS_CHOICES)
