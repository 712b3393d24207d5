"""Panel actions on builds and deployments: checks first, then an Operation sent to the rig after commit."""

from django.db import transaction
from django.db.models import F

from hosting.models import Build, Deployment
from nodes.agent import builder, protocol, serverspec
from nodes.channel import send_command
from nodes.models import Operation
from nodes.operations import start_operation


class Refused(Exception):
    """Why nothing was started, in words for the provider."""


def start_build(node, user, source, ref, backend="auto", options=None):
    try:
        builder.BuildRequest(build_id=1, source=source, ref=ref, backend=backend, options=options or {})
    except builder.BuildError as exc:
        raise Refused(str(exc)) from None
    if backend == "cuda" and not (node.hardware or {}).get("gpus"):
        raise Refused(f"{node.name} reported no NVIDIA GPU: a CUDA build would not run there")
    if Build.objects.filter(node=node, status__in=[Build.QUEUED, Build.BUILDING]).exists():
        raise Refused(f"{node.name} is already building llama.cpp; wait for it or cancel it")
    with transaction.atomic():
        build = Build.objects.create(node=node, source=source, ref=ref, backend=backend, options=options or {})
        request = {"build_id": build.pk, "source": source, "ref": ref, "backend": backend, "options": options or {}}
        operation = start_operation(node, Operation.BUILD_LLAMA, user, target=f"{source}@{ref}",
                                    payload={"build_id": build.pk, "request": request, "hardware": node.hardware})
        build.operation = operation
        build.save(update_fields=["operation"])
    return build


def adopt_build(node, user, path):
    try:
        path = builder.check_server_path(path)
    except builder.BuildError as exc:
        raise Refused(str(exc)) from None
    with transaction.atomic():
        build = Build.objects.create(node=node, source=path, ref="", backend="auto", adopted=True,
                                     binary_path=path)
        operation = start_operation(node, Operation.ADOPT_BUILD, user, target=path,
                                    payload={"build_id": build.pk, "path": path})
        build.operation = operation
        build.save(update_fields=["operation"])
    return build


def check_deployment(deployment):
    """Everything that must hold before a launch; raises Refused."""
    if not deployment.build.is_ready:
        raise Refused(f"build {deployment.build} is not ready ({deployment.build.status})")
    if deployment.build.node_id != deployment.node_id:
        raise Refused("that build belongs to another rig")
    if deployment.model_file.node_id != deployment.node_id:
        raise Refused("that model file is not on this rig")
    try:
        deployment.spec()
        serverspec.check_exposure(deployment.host, deployment.api_key)  # spec() passes a stopped one: it binds nothing
    except serverspec.SpecError as exc:
        raise Refused(str(exc)) from None


_KIND = {"launch": Operation.LAUNCH, "stop": Operation.STOP, "restart": Operation.RESTART}


def set_desired(deployment, action, user):
    """launch | stop | restart: record the desired state and tell the rig; its reconcile does the rest."""
    if action not in _KIND:
        raise Refused(f"unknown action {action!r}")
    if action != "stop":
        check_deployment(deployment)
    with transaction.atomic():
        desired = Deployment.STOPPED if action == "stop" else Deployment.RUNNING
        # A new generation tells the agent to restart even when nothing else changed.
        bump = 1 if action == "restart" else 0
        Deployment.objects.filter(pk=deployment.pk).update(desired_state=desired, generation=F("generation") + bump)
        deployment.refresh_from_db()
        spec = deployment.spec().to_dict()
        goal = "stopped" if action == "stop" else "healthy"
        return start_operation(deployment.node, _KIND[action], user, target=deployment.name,
                               payload={"spec": spec, "goal": goal})


def delete_build(build, user):
    """Refuse while deployments use it; else delete its files on the rig (returns that operation) or, with none,
    the row at once (returns None)."""
    if build.deployments.filter(desired_state=Deployment.RUNNING).exists():
        names = ", ".join(d.name for d in build.deployments.filter(desired_state=Deployment.RUNNING))
        raise Refused(f"build {build} is used by running deployment(s) {names}: stop them first")
    if build.deployments.exists():
        raise Refused(f"build {build} is used by deployment(s) {', '.join(d.name for d in build.deployments.all())}: "
                      "delete them or switch them to another build first")
    if build.adopted or not build.binary_path:  # no files of ours on the rig: the row is all there is
        build.delete()
        return None
    with transaction.atomic():
        # The row goes when the rig says the files have (hosting.ingest.operation_changed), not before.
        operation = start_operation(build.node, Operation.DELETE_BUILD, user, target=str(build),
                                    payload={"build_id": build.pk})
        Build.objects.filter(pk=build.pk).update(message="deleting its files on the rig…")
    return operation


# The rig must hear it even if it is offline for a while (the periodic reconcile drops it anyway).
FORGET_TTL = 24 * 3600


def delete_deployment(deployment):
    """Delete the row; tell the rig to stop the server and forget it."""
    node, deployment_id = deployment.node, deployment.pk
    with transaction.atomic():
        deployment.delete()
        transaction.on_commit(lambda: send_command(node, protocol.AGENT_FORGET_DEPLOYMENT,
                                                   {"deployment_id": deployment_id}, ttl=FORGET_TTL))


def desired_specs(node):
    """Every deployment of a rig as the agent should hold it (for the periodic reconcile)."""
    specs = []
    for deployment in node.deployments.select_related("build", "model_file"):
        try:
            specs.append(deployment.spec().to_dict())
        except serverspec.SpecError:
            continue  # not launchable (e.g. its build failed): nothing to converge
    return specs


BENCHMARK_REQUEST = {}  # settings every benchmark from the panel uses (tests shorten the prompts)


def start_benchmark(deployment, user, request=None):
    """A throughput sweep on the rig (nodes/agent/benchmark.py); refused unless the server is healthy, since a
    sweep of a loading or stopped server measures nothing."""
    from nodes.agent import benchmark

    if not deployment.is_healthy:
        state = deployment.actual_state if deployment.desired_state == Deployment.RUNNING else "stopped"
        rig = "" if deployment.node.status == "online" else f" (rig {deployment.node.status})"
        why = f": {deployment.message}" if deployment.message and state != "stopped" else ""
        raise Refused(f"{deployment.name} is {state}{rig}{why}; benchmark a healthy server")
    request = {**benchmark.fitted_defaults(deployment.parallel, deployment.ctx_size), **BENCHMARK_REQUEST,
               **(request or {})}
    try:
        clean = benchmark.check_request(request, deployment.parallel, deployment.ctx_size)
    except benchmark.BenchmarkError as exc:
        raise Refused(str(exc)) from None
    request = {key: value for key, value in clean.items() if value is not None}
    return start_operation(deployment.node, Operation.BENCHMARK, user, target=deployment.name,
                           payload={"deployment_id": deployment.pk, "request": request})
