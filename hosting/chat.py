"""'Try it': one prompt sent to a deployment's server through its rig's agent, the answer streamed back into a chat
operation (nodes/agent/tasks/chat.py). The browser talks only to the panel; the API key stays on the rig."""

from django import forms

from hosting.services import Refused
from nodes.agent import serving
from nodes.models import Node, Operation
from nodes.operations import start_operation

MAX_PROMPT_CHARS = 4000  # a "try it" prompt, not a document: the server's context is the real limit
MAX_ANSWER_TOKENS = 1024


class ChatForm(forms.Form):
    prompt = forms.CharField(max_length=MAX_PROMPT_CHARS, widget=forms.Textarea(attrs={"rows": 4}),
                             help_text=f"Up to {MAX_PROMPT_CHARS:,} characters; the model's context may hold fewer.")
    max_tokens = forms.IntegerField(label="Max tokens", min_value=1, max_value=MAX_ANSWER_TOKENS, initial=200)
    temperature = forms.FloatField(min_value=0, max_value=2, initial=0.7)


def start_chat(deployment, user, prompt, max_tokens, temperature):
    """The chat operation sending `prompt` to the deployment's server; raises Refused when it cannot answer now."""
    if deployment.desired_state != deployment.RUNNING:
        raise Refused(f"{deployment.name} is stopped: launch it first")
    if deployment.actual_state in ("stopped", "failed"):
        raise Refused(f"{deployment.name} is {deployment.actual_state}: launch it first")
    node_status = deployment.node.status
    if node_status != Node.ONLINE:
        raise Refused(f"rig {deployment.node.name} is {node_status}: it cannot pass the prompt on now")
    if not deployment.is_healthy:
        raise Refused(f"{deployment.name} is {deployment.actual_state}, not serving yet: try again once it is healthy")
    # One answer at a time per deployment: each holds one of the agent's few command threads while it streams.
    if Operation.objects.filter(node=deployment.node_id, kind=Operation.CHAT, target=deployment.name,
                                status__in=[Operation.QUEUED, Operation.RUNNING]).exists():
        raise Refused(f"{deployment.name} is still answering the previous prompt: wait for that answer")
    request = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
               "temperature": temperature}
    try:
        serving.check_chat_request(request)
    except serving.ChatError as exc:
        raise Refused(str(exc)) from None
    return start_operation(deployment.node, Operation.CHAT, user, target=deployment.name,
                           payload={"deployment_id": deployment.pk, "request": request})


def chat_of(deployment, operation_id):
    """A chat operation of this deployment, or None."""
    return (Operation.objects.filter(pk=operation_id, kind=Operation.CHAT, node=deployment.node_id,
                                     target=deployment.name).first())


def page_context(deployment, chat_id):
    """The 'try it' part of a deployment's page: an empty form, and the chat asked for by ?chat=<id> if any."""
    chat = chat_of(deployment, int(chat_id)) if str(chat_id or "").isdigit() and len(chat_id) < 19 else None
    return {"chat_form": ChatForm(prefix="chat"), "chat": chat}
