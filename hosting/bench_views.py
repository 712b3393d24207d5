"""Benchmarks of a deployment and the economics settings page."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from audit.log import record
from hosting import benchmarks, services
from hosting.bench_forms import BenchmarkForm, EconomicsForm
from hosting.models import Deployment, EconomicsSettings
from nodes.agent import benchmark as sweep
from nodes.models import Operation
from nodes.permissions import require_operator

HISTORY = 30  # benchmarks in the history chart


def benchmark_context(deployment):
    """What the deployment page's benchmark section shows (templates/hosting/_benchmarks.html)."""
    history = list(deployment.benchmarks.select_related("node__profile")[:HISTORY])
    latest = history[0] if history else None
    running = deployment.node.operations.filter(kind=Operation.BENCHMARK, target=deployment.name).first()
    roofline = benchmarks.roofline(deployment)
    context = {
        "bench_latest": latest, "bench_history": history, "bench_chart": benchmarks.history_chart(history),
        "bench_operation": running, "bench_roofline": roofline, "bench_references": benchmarks.references(deployment),
        "bench_rule": sweep.RULE, "bench_economics": benchmarks.economics_of(latest) if latest else None,
        "bench_defaults": sweep.fitted_defaults(deployment.parallel, deployment.ctx_size),
    }
    if latest and "tps" in roofline:
        context["bench_ratio"] = latest.single_tps / roofline["tps"]
    return context


@login_required
@require_POST
def deployment_benchmark(request, pk):
    require_operator(request)
    deployment = get_object_or_404(Deployment.objects.select_related("node", "build", "model_file"), pk=pk)
    form = BenchmarkForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Not started: " + "; ".join(f"{form[name].label}: {' '.join(errors)}"
                                                             for name, errors in form.errors.items()))
        return redirect(deployment)
    try:
        services.start_benchmark(deployment, request.user, form.request())
    except services.Refused as exc:
        messages.error(request, f"Not started: {exc}")
    else:
        messages.info(request, f"Benchmark sent to {deployment.node.name}: 1 to {deployment.parallel} streams; "
                               "the results appear below.")
    return redirect(deployment)


@login_required
def economics_settings(request):
    row = EconomicsSettings.current()
    form = EconomicsForm(request.POST or None, instance=row)
    if request.method == "POST":
        require_operator(request)
        if form.is_valid():
            saved = form.save(commit=False)
            changed = {field: [str(form.initial.get(field)), str(form.cleaned_data[field])]
                       for field in form.changed_data}
            saved.updated, saved.updated_by = timezone.now(), request.user
            saved.save()
            record("economics.change", request=request, target="economics settings", detail=changed)
            messages.success(request, "Economics settings saved.")
            return redirect("economics_settings")
    return render(request, "hosting/economics.html", {"form": form, "settings_row": row})
