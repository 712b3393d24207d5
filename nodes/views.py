from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Prefetch
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST
from django_htmx.http import HTMX_STOP_POLLING

from nodes import broker, charts, rigs
from nodes.enrolment import agent_command, compose_service, systemd_commands
from nodes.forms import AttachProfileForm, NodeForm, PartFormSet, ProfileForm
from nodes.models import GPU, HardwareProfile, Node, Operation, Part
from nodes.operations import cancel_operation, start_operation
from nodes.permissions import require_operator
from nodes.reauth import require_recent_password


def _nodes_for_dashboard():
    # The token is sealed: opening 200 of them per poll would cost time for nothing shown.
    return Node.objects.defer("token").select_related("profile").prefetch_related(
        # A plain list: `node.gpus.all()` on a prefetched manager still clones a queryset, 200 times a poll.
        Prefetch("gpus", queryset=GPU.objects.order_by("index"), to_attr="gpu_list"),
        Prefetch("profile__parts", queryset=Part.objects.all()),
    )


# Built here, not as four template includes per GPU: at 200 rigs × 8 GPUs the includes were ~40% of each poll.
_BAR = ('<div class="bar" title="{label}: {text}"><span class="bar-label">{label}</span><span class="bar-track">'
        '<span class="bar-fill{level}" style="width: {pct}%"></span></span><span class="bar-text">{text}</span></div>')


def gpu_bars_html(gpu):
    """Utilisation, VRAM, temperature and power bars of one GPU card (labels are constants, text is escaped)."""
    bars = (("util", gpu.util_percent, gpu.util_text), ("VRAM", gpu.vram_percent, gpu.vram_text),
            ("temp", gpu.temp_percent, gpu.temp_text), ("power", gpu.power_percent, gpu.power_text))
    return mark_safe("\n".join(
        _BAR.format(label=label, pct=int(pct), text=escape(text),
                    level=" hot" if pct >= 90 else " warm" if pct >= 75 else "")
        for label, pct, text in bars
    ))


@login_required
def dashboard(request):
    nodes = list(_nodes_for_dashboard())
    for node in nodes:
        for gpu in node.gpu_list:
            gpu.bars_html = gpu_bars_html(gpu)
    context = {"nodes": nodes, "now": timezone.now()}
    if request.htmx:
        return render(request, "nodes/dashboard.html#cards", context)
    return render(request, "nodes/dashboard.html", context)


def _enrolment_page(request, node, token, created, broker_problem):
    return render(
        request,
        "nodes/enrolled.html",
        {"node": node, "command": agent_command(node, token), "compose": compose_service(node, token),
         "systemd": systemd_commands(node, token),
         "created": created, "broker_problem": broker_problem},
    )


@login_required
def node_add(request):
    require_operator(request)
    form = NodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        # Shown once, in this response; the panel keeps it sealed and never renders it again.
        try:
            token, problem = rigs.enrol(form.save(commit=False))
        except rigs.EnrolmentRefused as exc:  # a Redis 6 broker: this machine's rig only; nothing was saved
            form.add_error(None, str(exc))
        else:
            return _enrolment_page(request, form.instance, token, created=True, broker_problem=problem)
    return render(request, "nodes/node_form.html", {"form": form})


@login_required
@require_POST
@require_recent_password
def node_rotate_token(request, name):
    require_operator(request)
    node = get_object_or_404(Node, name=name)
    token, problem = rigs.rotate_token(node)
    return _enrolment_page(request, node, token, created=False, broker_problem=problem)


@login_required
def node_delete(request, name):
    require_operator(request)
    node = get_object_or_404(Node, name=name)
    if request.method == "POST":
        problem = rigs.remove(node)
        messages.success(request, f"Rig {name} removed: its broker account and queues are deleted, its reports rejected.")
        if problem:
            messages.warning(request, f"The broker could not be told yet ({problem}); the next account sync will.")
        return redirect("dashboard")
    return render(request, "nodes/node_confirm_delete.html", {"node": node})


def _node_context(node):
    gpus = list(node.gpus.order_by("index"))
    return {
        "node": node,
        "gpus": gpus,
        "charts": charts.gpu_charts(gpus),
        "operations": node.operations.select_related("requested_by")[:10],
        "status_changes": node.status_changes.all()[:10],
        "mismatches": node.profile_mismatches(),
        "profile_form": AttachProfileForm(initial={"profile": node.profile_id}),
        "now": timezone.now(),
    }


@login_required
def node_detail(request, name):
    node = get_object_or_404(Node.objects.select_related("profile"), name=name)
    context = _node_context(node)
    context["broker_account"] = account = broker.account_state(node.name)
    context["login_refused"] = node.login_refused(account, context["now"])
    if request.htmx:
        return render(request, "nodes/node_detail.html#live", context)
    return render(request, "nodes/node_detail.html", context)


@login_required
@require_POST
def node_operation(request, name, kind):
    require_operator(request)
    node = get_object_or_404(Node, name=name)
    if kind not in Operation.SIMPLE_KINDS:
        raise Http404("unknown operation")
    with transaction.atomic():
        operation = start_operation(node, kind, request.user)
    return redirect(operation)


@login_required
@require_POST
def node_attach_profile(request, name):
    require_operator(request)
    node = get_object_or_404(Node, name=name)
    form = AttachProfileForm(request.POST)
    if form.is_valid():
        node.profile = form.cleaned_data["profile"]
        node.save(update_fields=["profile"])
        messages.success(request, "Planned build updated.")
    else:
        messages.error(request, "Choose a planned build from the list.")
    return redirect(node)


@login_required
def operation_list(request):
    operations = Operation.objects.select_related("node", "requested_by")
    filters = {
        "node": request.GET.get("node", ""),
        "kind": request.GET.get("kind", ""),
        "status": request.GET.get("status", ""),
    }
    if filters["node"]:
        operations = operations.filter(node__name=filters["node"])
    if filters["kind"]:
        operations = operations.filter(kind=filters["kind"])
    if filters["status"]:
        operations = operations.filter(status=filters["status"])
    context = {
        "operations": operations[:200],
        "filters": filters,
        "node_names": Node.objects.values_list("name", flat=True),
        "kinds": Operation.KIND_CHOICES,
        "statuses": Operation.STATUS_CHOICES,
    }
    return render(request, "nodes/operation_list.html", context)


@login_required
def operation_detail(request, pk):
    operation = get_object_or_404(Operation.objects.select_related("node", "requested_by"), pk=pk)
    context = {"operation": operation}
    if request.htmx:
        response = render(request, "nodes/operation_detail.html#status", context)
        if operation.is_terminal:
            response.status_code = HTMX_STOP_POLLING
        return response
    return render(request, "nodes/operation_detail.html", context)


@login_required
def profile_list(request):
    profiles = HardwareProfile.objects.prefetch_related("parts", "nodes")
    return render(request, "nodes/profile_list.html", {"profiles": profiles})


@login_required
def profile_detail(request, pk):
    profile = get_object_or_404(HardwareProfile.objects.prefetch_related("parts", "nodes"), pk=pk)
    return render(request, "nodes/profile_detail.html", {"profile": profile})


@login_required
def profile_edit(request, pk=None):
    require_operator(request)
    profile = get_object_or_404(HardwareProfile, pk=pk) if pk else None
    copy_from = None
    if profile is None and request.GET.get("from"):
        copy_from = get_object_or_404(HardwareProfile, pk=request.GET["from"])
    form = ProfileForm(request.POST or None, instance=profile)
    formset = PartFormSet(request.POST or None, instance=profile or HardwareProfile())
    if request.method == "POST" and form.is_valid() and formset.is_valid():
        with transaction.atomic():
            saved = form.save()
            formset.instance = saved
            formset.save()
        messages.success(request, f"Planned build “{saved.name}” saved.")
        return redirect(saved)
    if copy_from is not None and request.method == "GET":
        form = ProfileForm(initial={"name": f"{copy_from.name} (copy)", "notes": copy_from.notes,
                                    "planned_ram_gb": copy_from.planned_ram_gb,
                                    "planned_vram_gb": copy_from.planned_vram_gb})
        initial = [{"category": p.category, "description": p.description, "quantity": p.quantity,
                    "unit_price": p.unit_price} for p in copy_from.parts.all()]
        formset = PartFormSet(instance=HardwareProfile(), initial=initial)
        formset.extra = len(initial) + 2
    return render(request, "nodes/profile_form.html", {"form": form, "formset": formset, "profile": profile})


@login_required
@require_POST
def operation_cancel(request, pk):
    require_operator(request)
    operation = get_object_or_404(Operation.objects.select_related("node"), pk=pk)
    if not operation.is_cancellable:
        messages.error(request, f"Operation {pk} cannot be cancelled ({operation.status}).")
    else:
        with transaction.atomic():
            cancel_operation(operation)
        messages.info(request, "Cancel sent to the rig." if operation.status == Operation.RUNNING else "Cancelled.")
    return redirect(operation)
