"""'Try it' on a deployment's page: send a prompt (operators), then poll its answer as it streams in."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import HTMX_STOP_POLLING

from hosting import chat
from hosting.models import Deployment
from hosting.services import Refused
from nodes.permissions import require_operator

ANSWER = "hosting/_try_it.html#answer"


@login_required
@require_POST
def deployment_chat(request, pk):
    require_operator(request)
    deployment = get_object_or_404(Deployment.objects.select_related("node"), pk=pk)
    form = chat.ChatForm(request.POST, prefix="chat")
    refusal, operation = None, None
    if form.is_valid():
        try:
            operation = chat.start_chat(deployment, request.user, **form.cleaned_data)
        except Refused as exc:
            refusal = str(exc)
    else:
        refusal = " ".join(f"{form[name].label}: {' '.join(errors)}" if name != "__all__" else " ".join(errors)
                           for name, errors in form.errors.items())
    if not request.htmx:
        if refusal:
            messages.error(request, f"Not sent: {refusal}")
            return redirect(deployment)
        return redirect(f"{deployment.get_absolute_url()}?chat={operation.pk}#try-it")
    return render(request, ANSWER, {"deployment": deployment, "chat": operation, "refusal": refusal})


@login_required
def deployment_chat_answer(request, pk, operation_pk):
    deployment = get_object_or_404(Deployment.objects.select_related("node"), pk=pk)
    operation = chat.chat_of(deployment, operation_pk)
    if operation is None:
        raise Http404("no such chat on this deployment")
    if not request.htmx:
        return redirect(f"{reverse('deployment_detail', args=[deployment.pk])}?chat={operation.pk}#try-it")
    response = render(request, "hosting/_try_it.html#answer-body", {"deployment": deployment, "chat": operation})
    if operation.is_terminal:
        response.status_code = HTMX_STOP_POLLING
    return response
