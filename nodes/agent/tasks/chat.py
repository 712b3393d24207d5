"""The "try it" command: one chat sent to a deployment's server on this rig, its answer streamed back.

The answer goes to the panel as running reports of the operation (best-effort, at most one per THROTTLE seconds,
each with the text so far), then one durable outcome with the whole text, token counts and the server's timings.
The server's address and API key come from the supervisor's spec: the key never leaves the rig.
"""

import time

from .. import protocol, serving
from ..supervisor import HEALTHY

THROTTLE = 0.12  # seconds between two running reports: smooth in the browser, eight reports a second at most
DEADLINE = 540  # seconds for one answer; the panel gives an operation 600 (MORPHEUS_RUN_TIMEOUT) before failing it


def register(agent):
    agent.stopping_chats = set()  # chats the provider stopped: their stream ends at its next piece
    agent.cancellers.append(lambda operation_id: agent.stopping_chats.add(operation_id))

    @agent.command(protocol.AGENT_CHAT_DEPLOYMENT, soft_time_limit=None, time_limit=None)
    def chat_deployment(operation_id, deployment_id, request):
        with agent.claimed(operation_id) as mine:
            if mine:
                try:
                    chat(agent, operation_id, deployment_id, request)
                finally:
                    agent.stopping_chats.discard(operation_id)


def find_server(agent, deployment_id):
    """(spec, None) of a healthy server of this rig, or (None, why not)."""
    supervisor = getattr(agent, "supervisor", None)
    if supervisor is None:
        return None, "this agent runs no servers"
    with supervisor.lock:
        server = supervisor.servers.get(deployment_id) if isinstance(deployment_id, int) else None
        if server is None:
            return None, f"deployment {deployment_id} is not on this rig"
        if server.state != HEALTHY or server.spec.desired != "running":
            return None, f"the server is {server.state} on the rig: launch it first"
        return server.spec, None


def chat(agent, operation_id, deployment_id, request):
    spec, why_not = find_server(agent, deployment_id)
    if spec is None:
        agent.operation(operation_id, protocol.FAILED, why_not)
        return
    last = [0.0]

    def progress(answer):
        now = time.monotonic()
        if now - last[0] >= THROTTLE:
            last[0] = now
            agent.operation(operation_id, protocol.RUNNING, "answering…", result=answer.result())

    started = time.monotonic()
    stopping = getattr(agent, "stopping_chats", set())
    try:
        answer = serving.stream_chat(spec.host, spec.port, spec.api_key, request, on_text=progress,
                                     deadline=started + DEADLINE, should_stop=lambda: operation_id in stopping)
    except serving.ChatError as exc:
        result = exc.answer.result() if exc.answer is not None and exc.answer.pieces else None
        if operation_id in stopping:  # closing the connection also stops the server generating
            agent.operation(operation_id, protocol.CANCELLED, "stopped by the provider", result=result)
        else:
            agent.operation(operation_id, protocol.FAILED, serving.scrub(str(exc), spec.api_key), result=result)
        return
    result = answer.result()
    result["seconds"] = round(time.monotonic() - started, 3)
    agent.operation(operation_id, protocol.SUCCEEDED, summary(answer, result["seconds"]), result=result)


def summary(answer, seconds):
    """"42 tokens in 1.3 s (35.1 tokens/s)", from the server's own counts where it gave them."""
    timings = answer.timings or {}
    tokens = (answer.usage or {}).get("completion_tokens", timings.get("predicted_n", answer.pieces))
    speed = timings.get("predicted_per_second")
    text = f"{tokens} token{'s' if tokens != 1 else ''} in {seconds:.1f} s"
    if speed:
        text += f" ({speed:.1f} tokens/s generated)"
    if answer.truncated:
        text += "; the answer was cut to fit the panel"
    return text
