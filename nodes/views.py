from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_htmx.http import HTMX_STOP_POLLING

from audit.log import record
from audit.models import AuditEvent
from nodes import broker, cards, charts, rigs
from nodes.enrolment import agent_command, compose_service, systemd_commands
from nodes.forms import AttachProfileForm, NodeForm, PartFormSet, ProfileForm
from nodes.models import HardwareProfile, Node, Operation
from nodes.operations import cancel_operation, start_operation
from nodes.permissions import require_operator
from nodes.reauth import require_recent_password


@login_required
def dashboard(request):
    """The rig cards. A refresh (htmx) gets only the cards whose content changed, or 204 (nodes/cards.py)."""
    now = timezone.now()
    shown = cards.shown_by_browser(request.headers.get(cards.HEADER)) if request.htmx else None
    if shown is not None:
        nodes = cards.fingerprints(now)
        changed = cards.changed(nodes, shown)
        if changed == []:
            return HttpResponse(status=204)  # htmx swaps nothing
        if changed is not None:
            response = HttpResponse(cards.cards_html(cards.render_ready(changed), oob=True))
            response["HX-Reswap"] = "none"  # the cards swap themselves (out of band); the list stays
            return response
    # The page, the first poll, or rigs added or removed since: every card.
    nodes = cards.cards(now)
    context = {"nodes": nodes, "cards_html": cards.cards_html(nodes),
               "names_hash": cards.names_hash([node.name for node in nodes])}
    return render(request, "nodes/dashboard.html#cards" if request.htmx else "nodes/dashboard.html", context)


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
            record("rig.enrol", request=request, target=form.instance.name, outcome=AuditEvent.REFUSED,
                   detail={"reason": str(exc)[:200]})
            form.add_error(None, str(exc))
        else:
            record("rig.enrol", request=request, target=form.instance.name,
                   detail={"broker": "not told yet; the account sync will"} if problem else None)
            return _enrolment_page(request, form.instance, token, created=True, broker_problem=problem)
    return render(request, "nodes/node_form.html", {"form": form})


@login_required
@require_POST
@require_recent_password
def node_rotate_token(request, name):
    require_operator(request)
    node = get_object_or_404(Node, name=name)
    token, problem = rigs.rotate_token(node)
    record("rig.token", request=request, target=node.name,
           detail={"broker": "not told yet; the account sync will"} if problem else None)
    return _enrolment_page(request, node, token, created=False, broker_problem=problem)


@login_required
def node_delete(request, name):
    require_operator(request)
    node = get_object_or_404(Node, name=name)
    if request.method == "POST":
        problem = rigs.remove(node)
        record("rig.remove", request=request, target=name,
               detail={"broker": "not told yet; the account sync will"} if problem else None)
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
