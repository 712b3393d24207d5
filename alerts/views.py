from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from alerts import evaluate, services
from alerts.forms import ChannelForm, RuleForm
from alerts.models import Channel, Rule
from audit import log as audit
from audit.models import AuditEvent
from nodes.permissions import require_operator


@login_required
def alert_list(request):
    context = services.alerts_page()
    context.update(rules=Rule.objects.all(), channels=Channel.objects.all())
    return render(request, "alerts/alert_list.html", context)


@login_required
def rule_edit(request, pk):
    require_operator(request)
    rule = get_object_or_404(Rule, pk=pk)
    form = RuleForm(request.POST or None, instance=rule)
    if request.method == "POST" and form.is_valid():
        rule = form.save(commit=False)
        rule.updated = timezone.now()
        rule.save()
        audit.record("alert.rule.change", request=request, target=rule.kind,
                     detail={"enabled": rule.enabled, "thresholds": rule.summary()})
        messages.success(request, f"Rule “{rule.title}” saved.")
        return redirect("alert_list")
    return render(request, "alerts/rule_form.html", {"form": form, "rule": rule})


@login_required
def channel_edit(request, pk=None):
    require_operator(request)
    channel = get_object_or_404(Channel, pk=pk) if pk else None
    form = ChannelForm(request.POST or None, instance=channel)
    if request.method == "POST" and form.is_valid():
        created = channel is None
        channel = form.save()
        # The target stays out of the log: a webhook URL is a secret; the shown form is scheme and host only.
        audit.record("alert.channel.add" if created else "alert.channel.change", request=request,
                     target=channel.name, detail={"kind": channel.kind, "target": channel.target_shown,
                                                  "enabled": channel.enabled})
        messages.success(request, f"Channel {channel.name} saved.")
        return redirect("alert_list")
    return render(request, "alerts/channel_form.html", {"form": form, "channel": channel})


@login_required
def channel_delete(request, pk):
    require_operator(request)
    channel = get_object_or_404(Channel, pk=pk)
    if request.method == "POST":
        channel.delete()
        audit.record("alert.channel.delete", request=request, target=channel.name, detail={"kind": channel.kind})
        messages.success(request, f"Channel {channel.name} deleted.")
        return redirect("alert_list")
    return render(request, "alerts/channel_confirm_delete.html", {"channel": channel})


@login_required
@require_POST
def channel_test(request, pk):
    require_operator(request)
    channel = get_object_or_404(Channel, pk=pk)
    ok, result = evaluate.send_test(channel)
    audit.record("alert.channel.test", request=request, target=channel.name, outcome=AuditEvent.OK if ok else AuditEvent.FAILED,
                 detail={"result": result})
    (messages.success if ok else messages.error)(request, f"Test message to {channel.name}: {result}")
    return redirect("alert_list")
