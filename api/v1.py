"""The JSON API, version 1: rigs, telemetry, model files, the catalogue, builds, deployments and operations to
read; download, build, launch/stop/restart and benchmark to act, each returning the operation to follow.

Built with django-ninja rather than Django REST framework with drf-spectacular: django-ninja is already a
dependency, its pydantic schemas are the OpenAPI 3.1 document (no second description to keep in step), and its
function endpoints fit this project's plain function views, without DRF's serializer, viewset and router classes.

Every action calls the same service function as the panel's button (hosting.services, models_catalog.downloads),
so an action through the API is the same Operation and the same signed command to the rig. Reading needs any
token; acting needs an operator's. Refusals are 409 with the reason; bad input 422; a missing row 404.
"""

from typing import List, Literal, Optional

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Prefetch
from django.utils import timezone
from ninja import NinjaAPI, Query, Status
from ninja.errors import AuthenticationError, HttpError, Throttled

from api import schemas
from api.auth import TokenAuth
from api.schemas import (BenchmarkIn, BuildIn, BuildOut, CatalogModelOut, DeploymentOut, DownloadIn, Error,
                         OperationOut, RigFileOut, RigOut, TelemetryOut, ValidationErrors)
from audit.log import record
from audit.models import AuditEvent
from hosting import services
from hosting.models import Build, Deployment
from models_catalog import downloads
from models_catalog.models import CatalogModel, ModelFile, RigFile
from nodes.agent import builder
from nodes.channel import NoRigKey
from nodes.models import GpuSample, HostSample, Node, Operation, recent_window
from nodes.permissions import VIEWER_REFUSAL, is_operator


def docs_access(view):
    """The docs page for logged-in users; the OpenAPI document for them or for a valid token."""

    def guarded(request, *args, **kwargs):
        if request.user.is_authenticated:
            return view(request, *args, **kwargs)
        if request.path.endswith("/docs"):
            return redirect_to_login(request.get_full_path())
        try:
            token = TokenAuth()(request)
        except Throttled as exc:
            return _throttled(request, exc)
        if token is None:
            return _unauthorised(request, AuthenticationError())
        return view(request, *args, **kwargs)

    return guarded


api = NinjaAPI(title="Morpheus Admin API", version="1", urls_namespace="api", auth=TokenAuth(),
               docs_decorator=docs_access,
               description="Rigs, models, builds, deployments and operations of this panel. Send "
                           "`Authorization: Bearer <token>` with a token from the panel's API tokens page; a "
                           "viewer's token reads, an operator's also acts. Actions answer 202 with the operation "
                           "to follow (GET its `url` until `terminal`).")

READ = {401: Error, 404: Error, 429: Error}
ACT = {202: OperationOut, 401: Error, 403: Error, 404: Error, 409: Error, 422: ValidationErrors, 429: Error}


# --- errors: a reason in `detail`, never a page -----------------------------------------------------------------
@api.exception_handler(AuthenticationError)
def _unauthorised(request, exc):
    response = api.create_response(
        request, {"detail": "Send Authorization: Bearer <token> with a valid API token (this one is missing, "
                            "unknown, revoked or expired, or its user is deactivated)."}, status=401)
    response["WWW-Authenticate"] = "Bearer"
    return response


@api.exception_handler(Throttled)
def _throttled(request, exc):
    response = api.create_response(
        request, {"detail": f"Too many requests: try again in {exc.wait} s."}, status=429)
    response["Retry-After"] = str(exc.wait)
    return response


@api.exception_handler(PermissionDenied)
def _forbidden(request, exc):
    return api.create_response(request, {"detail": str(exc) or VIEWER_REFUSAL}, status=403)


def _get(queryset, what, **lookup):
    found = queryset.filter(**lookup).first()
    if found is None:
        raise HttpError(404, f"no {what} {next(iter(lookup.values()))!r}")
    return found


def _act(request, action, target, start):
    """Run one action as the button does: the operator check, the service call in a transaction, the audit row.
    Returns 202 with the operation."""
    if not is_operator(request.user):
        record(action, request=request, target=target, outcome=AuditEvent.REFUSED, detail={"reason": "viewer"})
        raise PermissionDenied(VIEWER_REFUSAL)
    try:
        with transaction.atomic():
            operation = start()
    except (services.Refused, downloads.Refused, NoRigKey) as exc:
        record(action, request=request, target=target, outcome=AuditEvent.REFUSED, detail={"reason": str(exc)})
        raise HttpError(409, f"Not started: {exc}") from None
    record(action, request=request, target=target, detail={"operation": operation.pk, "rig": operation.node.name})
    return Status(202, schemas.operation_out(operation))


# --- rigs -------------------------------------------------------------------------------------------------------
def _rigs():
    return Node.objects.prefetch_related("gpus")


@api.get("/rigs", response={200: List[RigOut], **READ}, tags=["rigs"])
def list_rigs(request):
    """Every rig with its hardware, status, last seen time and GPUs with their latest reading."""
    now = timezone.now()
    return [schemas.rig_out(node, now) for node in _rigs()]


@api.get("/rigs/{name}", response={200: RigOut, **READ}, tags=["rigs"])
def get_rig(request, name: str):
    return schemas.rig_out(_get(_rigs(), "rig", name=name))


@api.get("/rigs/{name}/telemetry", response={200: TelemetryOut, **READ}, tags=["rigs"])
def rig_telemetry(request, name: str, minutes: int = Query(60, ge=1, le=24 * 60)):
    """The rig's per-minute samples (host and each GPU) over the last `minutes`."""
    node = _get(Node.objects.all(), "rig", name=name)
    since = recent_window(minutes)
    host = HostSample.objects.filter(node=node, minute__gte=since).order_by("minute")
    samples = GpuSample.objects.filter(gpu__node=node, minute__gte=since).order_by("minute")
    by_gpu = {}
    for sample in samples.values("gpu_id", "minute", "util", "vram_used", "temp_c", "power_w"):
        by_gpu.setdefault(sample.pop("gpu_id"), []).append(sample)
    return {"rig": node.name, "since": since,
            "host": list(host.values("minute", "cpu_percent", "ram_used", "disk_free")),
            "gpus": [{"index": gpu.index, "name": gpu.name, "samples": by_gpu.get(gpu.pk, [])}
                     for gpu in node.gpus.order_by("index")]}


@api.get("/model-files", response={200: List[RigFileOut], **READ}, tags=["models"])
def list_model_files(request, rig: Optional[str] = None):
    """GGUF files on the rigs' disks, as their agents last reported them."""
    files = RigFile.objects.select_related("node")
    if rig:
        files = files.filter(node__name=rig)
    return [schemas.rig_file_out(f) for f in files]


@api.get("/catalogue", response={200: List[CatalogModelOut], **READ}, tags=["models"])
def catalogue(request):
    """The models catalogue: each model's GGUF files (their ids are what a download names) and which rigs have them."""
    copies = Prefetch("copies", queryset=RigFile.objects.select_related("node"))
    models = CatalogModel.objects.prefetch_related(Prefetch("files", queryset=ModelFile.objects.prefetch_related(copies)))
    return [schemas.catalog_model_out(model) for model in models]


@api.post("/rigs/{name}/downloads", response=ACT, tags=["models"])
def download(request, name: str, body: DownloadIn):
    """Download a catalogue file to the rig (the model page's "Download" button)."""
    node = _get(Node.objects.all(), "rig", name=name)
    model_file = _get(ModelFile.objects.select_related("model"), "catalogue file", pk=body.model_file_id)
    return _act(request, "model.download", f"{model_file.target} on {node.name}",
                lambda: downloads.request_download(model_file, node, request.user))


# --- builds -----------------------------------------------------------------------------------------------------
@api.get("/builds", response={200: List[BuildOut], **READ}, tags=["builds"])
def list_builds(request, rig: Optional[str] = None):
    builds = Build.objects.select_related("node")
    if rig:
        builds = builds.filter(node__name=rig)
    return [schemas.build_out(build) for build in builds]


@api.get("/builds/{build_id}", response={200: BuildOut, **READ}, tags=["builds"])
def get_build(request, build_id: int):
    return schemas.build_out(_get(Build.objects.select_related("node"), "build", pk=build_id))


@api.post("/rigs/{name}/builds", response=ACT, tags=["builds"])
def start_build(request, name: str, body: BuildIn):
    """Build llama.cpp on the rig from the tested release (the builds page's "Build" button). A build from another
    source or ref runs other code on the rig: the panel asks for the password for that, so the API refuses it."""
    node = _get(Node.objects.all(), "rig", name=name)
    source = body.source or builder.DEFAULT_SOURCE
    ref = body.ref or builder.DEFAULT_REF
    if (source, ref) != (builder.DEFAULT_SOURCE, builder.DEFAULT_REF):
        if is_operator(request.user):
            record("build.start", request=request, target=f"{source}@{ref} on {node.name}",
                   outcome=AuditEvent.REFUSED, detail={"reason": "not the default source"})
        raise PermissionDenied(f"Only the tested release ({builder.DEFAULT_SOURCE}@{builder.DEFAULT_REF}) can be "
                               "built through the API; start other builds on the rig's builds page, which asks "
                               "for your password again.")
    try:
        builder.check_options(body.options)
    except builder.BuildError as exc:
        raise HttpError(422, str(exc)) from None
    return _act(request, "build.start", f"{source}@{ref} on {node.name}",
                lambda: services.start_build(node, request.user, source, ref, body.backend, body.options).operation)


# --- deployments ------------------------------------------------------------------------------------------------
def _deployments():
    return Deployment.objects.select_related("node", "build", "model_file")


@api.get("/deployments", response={200: List[DeploymentOut], **READ}, tags=["deployments"])
def list_deployments(request, rig: Optional[str] = None):
    """Hosted models with their desired and actual state, endpoint and live serving metrics (never the API key)."""
    deployments = _deployments()
    if rig:
        deployments = deployments.filter(node__name=rig)
    return [schemas.deployment_out(d) for d in deployments]


@api.get("/deployments/{deployment_id}", response={200: DeploymentOut, **READ}, tags=["deployments"])
def get_deployment(request, deployment_id: int):
    return schemas.deployment_out(_get(_deployments(), "deployment", pk=deployment_id))


def _named(deployment):
    return f"{deployment.node.name}/{deployment.name}"


def _set_desired(request, deployment_id, action):
    deployment = _get(_deployments(), "deployment", pk=deployment_id)
    return _act(request, f"deployment.{action}", _named(deployment),
                lambda: services.set_desired(deployment, action, request.user))


@api.post("/deployments/{deployment_id}/launch", response=ACT, tags=["deployments"])
def launch_deployment(request, deployment_id: int):
    """Start the server and keep it running (the deployment page's "Launch" button)."""
    return _set_desired(request, deployment_id, "launch")


@api.post("/deployments/{deployment_id}/stop", response=ACT, tags=["deployments"])
def stop_deployment(request, deployment_id: int):
    return _set_desired(request, deployment_id, "stop")


@api.post("/deployments/{deployment_id}/restart", response=ACT, tags=["deployments"])
def restart_deployment(request, deployment_id: int):
    return _set_desired(request, deployment_id, "restart")


@api.post("/deployments/{deployment_id}/benchmark", response=ACT, tags=["deployments"])
def benchmark_deployment(request, deployment_id: int, body: BenchmarkIn):
    """A throughput sweep of a healthy server, 1 to `parallel` streams; empty lengths fit the server's slots."""
    deployment = _get(_deployments(), "deployment", pk=deployment_id)
    wanted = {key: value for key, value in body.dict().items() if value is not None}
    return _act(request, "deployment.benchmark", _named(deployment),
                lambda: services.start_benchmark(deployment, request.user, wanted))


# --- operations -------------------------------------------------------------------------------------------------
@api.get("/operations", response={200: List[OperationOut], **READ}, tags=["operations"])
def list_operations(request, rig: Optional[str] = None, kind: Optional[Literal[schemas.OPERATION_KINDS]] = None,
                    status: Optional[Literal[schemas.OPERATION_STATES]] = None, limit: int = Query(50, ge=1, le=500)):
    """The newest operations first, filtered by rig, kind and status."""
    operations = Operation.objects.select_related("node", "requested_by")
    if rig:
        operations = operations.filter(node__name=rig)
    if kind:
        operations = operations.filter(kind=kind)
    if status:
        operations = operations.filter(status=status)
    return [schemas.operation_out(op) for op in operations[:limit]]


@api.get("/operations/{operation_id}", response={200: OperationOut, **READ}, tags=["operations"])
def get_operation(request, operation_id: int):
    """One operation, to follow an action until `terminal` is true."""
    return schemas.operation_out(_get(Operation.objects.select_related("node", "requested_by"), "operation",
                                      pk=operation_id))
