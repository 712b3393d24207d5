from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_htmx.http import HTMX_STOP_POLLING

from hosting import bench_views, chat, services
from hosting.forms import (AdoptForm, BuildForm, DeploymentForm, planned_plan, planned_settings, suggest_port,
                           suggested_settings)
from hosting.models import Build, Deployment
from models_catalog.forms import FitForm
from models_catalog.planner import PlanRefused
from nodes import reauth
from nodes.agent import builder
from nodes.models import Node
from nodes.permissions import require_operator


@login_required
def rig_builds(request, name):
    node = get_object_or_404(Node, name=name)
    form = BuildForm(request.POST or None, prefix="build")
    adopt = AdoptForm(None, prefix="adopt")
    if request.method == "POST":
        require_operator(request)
        if form.is_valid():
            official = (form.cleaned_data["source"], form.cleaned_data["ref"]) == (builder.DEFAULT_SOURCE, builder.DEFAULT_REF)
            if not official and not reauth.is_recent(request):
                return reauth.password_page(request)  # other code than the official release: the password again
            try:
                build = services.start_build(node, request.user, **form.cleaned_data)
            except services.Refused as exc:
                messages.error(request, f"Not started: {exc}")
            else:
                return redirect(build)
    return _builds_page(request, node, form, adopt)


def _builds_page(request, node, form, adopt):
    builds = node.builds.select_related("operation")
    return render(request, "hosting/rig_builds.html", {"node": node, "builds": builds, "form": form, "adopt": adopt})


@login_required
@require_POST
@reauth.require_recent_password
def rig_adopt(request, name):
    require_operator(request)
    node = get_object_or_404(Node, name=name)
    adopt = AdoptForm(request.POST, prefix="adopt")
    if adopt.is_valid():
        try:
            build = services.adopt_build(node, request.user, adopt.cleaned_data["path"])
        except services.Refused as exc:
            adopt.add_error("path", str(exc))
        else:
            return redirect(build)
    # The builds page again with the typed path and why it was refused, not an emptied form.
    return _builds_page(request, node, BuildForm(None, prefix="build"), adopt)


@login_required
def build_detail(request, pk):
    build = get_object_or_404(Build.objects.select_related("node", "operation"), pk=pk)
    context = {"build": build, "operation": build.operation}
    if request.htmx:
        response = render(request, "hosting/build_detail.html#live", context)
        if build.status in (Build.READY, Build.FAILED, Build.CANCELLED):
            response.status_code = HTMX_STOP_POLLING
        return response
    return render(request, "hosting/build_detail.html", context)


@login_required
@require_POST
def build_make_default(request, pk):
    require_operator(request)
    build = get_object_or_404(Build, pk=pk, status=Build.READY)
    with transaction.atomic():
        Build.objects.filter(node=build.node).update(is_default=False)
        Build.objects.filter(pk=build.pk).update(is_default=True)
    messages.success(request, f"Build {build} is now the default on {build.node.name}.")
    return redirect("rig_builds", name=build.node.name)


@login_required
def build_delete(request, pk):
    require_operator(request)
    build = get_object_or_404(Build.objects.select_related("node"), pk=pk)
    if request.method == "POST":
        try:
            operation = services.delete_build(build, request.user)
        except services.Refused as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Build {build}: deleting its files on the rig; the build goes once they have."
                             if operation else f"Build {build} deleted.")
        return redirect("rig_builds", name=build.node.name)
    return render(request, "hosting/build_confirm_delete.html", {"build": build})


@login_required
def deployment_list(request):
    hour_ago = timezone.now() - timedelta(hours=1)
    deployments = Deployment.objects.select_related("node", "build", "model_file").annotate(
        recent_exits=Count("exits", filter=Q(exits__at__gte=hour_ago)))
    node = request.GET.get("node", "")
    if node:
        deployments = deployments.filter(node__name=node)
    return render(request, "hosting/deployment_list.html", {"deployments": deployments, "node": node})


@login_required
def deployment_edit(request, name, pk=None):
    require_operator(request)
    node = get_object_or_404(Node, name=name)
    instance = get_object_or_404(Deployment, pk=pk, node=node) if pk else None
    initial, plan, chosen = {}, None, None
    if instance is None:
        default_build = node.builds.filter(status=Build.READY, is_default=True).first()
        chosen = _chosen_file(request, node)
        wanted = FitForm(request.GET)
        wanted = wanted.cleaned_data if wanted.is_valid() else {}
        if chosen is not None:
            _settings, plan = planned_settings(node, chosen, wanted.get("ctx_size"), wanted.get("parallel"))
        # Values fill the fields rather than a preset left selected, which would overwrite what the provider types.
        initial = {"port": suggest_port(node), "build": default_build, "model_file": chosen,
                   **suggested_settings(node, chosen, wanted.get("ctx_size"), wanted.get("parallel"))}
    form = DeploymentForm(request.POST or None, node=node, instance=instance, initial=initial)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            deployment = form.save()
            deployment.created_by = deployment.created_by or request.user
            deployment.save(update_fields=["created_by"])
            for warning in form.warnings:
                messages.warning(request, warning)
            try:
                operation = services.set_desired(deployment, "launch" if instance is None else "restart", request.user)
            except services.Refused as exc:
                messages.error(request, f"Saved, not started: {exc}")
            else:
                messages.success(request, f"{deployment.name}: {operation.get_kind_display()} sent to {node.name}.")
        return redirect(deployment)
    if form.is_bound and form.plan is not None:
        plan, chosen = form.plan, form.cleaned_data.get("model_file")
    elif instance is not None:
        plan, chosen = _saved_plan(instance), instance.model_file
    return render(request, "hosting/deployment_form.html",
                  {"form": form, "node": node, "deployment": instance, "plan": plan, "plan_file": chosen})


def _saved_plan(deployment):
    """The fit planner's verdict on a deployment's saved settings (None where it cannot plan them)."""
    try:
        return planned_plan(deployment)
    except PlanRefused as exc:
        return str(exc)


def _chosen_file(request, node):
    """The model file the form starts with: ?file=<id> (from a model's "which rigs can host this"), else the rig's
    only one."""
    wanted = request.GET.get("model_file") or request.GET.get("file") or ""  # model_file: the form's own select
    if wanted.isdigit():
        found = node.model_files.select_related("model_file").filter(pk=int(wanted)).first()
        if found is not None:
            return found
    model_files = list(node.model_files.select_related("model_file")[:2])
    return model_files[0] if len(model_files) == 1 else None


@login_required
def deployment_detail(request, pk):
    deployment = get_object_or_404(Deployment.objects.select_related("node", "build", "model_file"), pk=pk)
    operations = deployment.node.operations.filter(target=deployment.name,
                                                   kind__in=["launch", "stop", "restart"])[:10]
    context = {"deployment": deployment, "operations": operations, "exits": deployment.exits.all()[:10],
               **bench_views.benchmark_context(deployment)}
    if request.htmx:
        return render(request, "hosting/deployment_detail.html#live", context)
    context.update(chat.page_context(deployment, request.GET.get("chat")))
    return render(request, "hosting/deployment_detail.html", context)


@login_required
@require_POST
def deployment_action(request, pk, action):
    require_operator(request)
    deployment = get_object_or_404(Deployment.objects.select_related("node", "build", "model_file"), pk=pk)
    try:
        operation = services.set_desired(deployment, action, request.user)
    except services.Refused as exc:
        messages.error(request, f"Not started: {exc}")
    else:
        messages.info(request, f"{operation.get_kind_display().capitalize()} sent to {deployment.node.name}; "
                               "the state below follows it.")
    return redirect(deployment)


@login_required
def deployment_delete(request, pk):
    require_operator(request)
    deployment = get_object_or_404(Deployment.objects.select_related("node"), pk=pk)
    if request.method == "POST":
        if deployment.desired_state == Deployment.RUNNING and deployment.actual_state not in ("stopped", "failed"):
            messages.error(request, "Stop the server before deleting the deployment.")
            return redirect(deployment)
        services.delete_deployment(deployment)
        messages.success(request, "Deployment deleted.")
        return redirect("deployment_list")
    return render(request, "hosting/deployment_confirm_delete.html", {"deployment": deployment})
