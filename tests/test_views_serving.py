"""Live serving metrics on the panel (a telemetry report's `servers` → the deployment page and the rig cards) and
'try it' (a prompt box on the deployment page → a chat operation → its answer polled as it streams in).

Messages to rigs go to this process's memory:// broker; each test reads what its rig's queue received."""

import time

import pytest
from django.test import Client
from django.utils import timezone

from hosting.models import Build, Deployment
from models_catalog.models import RigFile
from nodes import cards
from nodes.agent import protocol
from nodes.models import Operation
from tests.helpers import make_node, page, queued_messages, report, unsealed

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
KEY = "sk-serving-secret-42"


@pytest.fixture
def alpha():
    node, token = make_node("alpha", last_seen=timezone.now(), telemetry_interval=5.0)
    queued_messages(node.queue)
    yield node, token
    queued_messages(node.queue)


@pytest.fixture
def deployment(alpha):
    node, _ = alpha
    build = Build.objects.create(node=node, source="/src", ref="b1", status=Build.READY, is_default=True,
                                 binary_path="/opt/llama-server")
    rig_file = RigFile.objects.create(node=node, path="/models/tiny.gguf", size=1)
    return Deployment.objects.create(node=node, name="tiny", model_file=rig_file, build=build, port=8080,
                                     ctx_size=4096, parallel=4, n_gpu_layers=0, api_key=KEY, actual_state="healthy")


def telemetry(*servers, at=None):
    at = time.time() if at is None else at
    payload = {"at": at, "host": {"cpu_percent": 3.0, "ram_used": 1, "disk_free": 1}, "gpus": []}
    if servers is not None:
        payload["servers"] = [{"at": at, **server} for server in servers]
    return payload


def metrics(deployment_id, **changes):
    return {"deployment": deployment_id, "generated_tps": 31.24, "prompt_tps": 120.0, "tokens_generated": 900,
            "prompt_tokens": 400, "requests_processing": 2, "requests_deferred": 1, "busy_per_decode": 1.5,
            "slots_busy": 2, "slots_total": 4, "kv_used": 1024, "kv_total": 4096, **changes}


def fresh(deployment):
    return Deployment.objects.get(pk=deployment.pk)


# --- ingest ---------------------------------------------------------------------------------------------------------
def test_it_stores_a_servers_live_metrics_from_the_rigs_telemetry(alpha, deployment):
    node, token = alpha
    assert report(node.name, token, "telemetry", telemetry(metrics(deployment.pk))) is None
    stored = fresh(deployment)
    assert stored.serving == {key: value for key, value in metrics(deployment.pk).items() if key != "deployment"}
    assert abs((timezone.now() - stored.serving_at).total_seconds()) < 5
    assert stored.live_serving["generated_tps"] == 31.24


def test_a_rig_cannot_write_another_rigs_deployment_metrics(alpha, deployment):
    beta, beta_token = make_node("beta")
    assert report("beta", beta_token, "telemetry", telemetry(metrics(deployment.pk))) is None  # its GPUs still land
    assert fresh(deployment).serving == {} and fresh(deployment).serving_at is None


def test_an_older_reading_never_replaces_a_newer_one(alpha, deployment):
    node, token = alpha
    now = time.time()
    report(node.name, token, "telemetry", telemetry(metrics(deployment.pk, generated_tps=50.0), at=now))
    # Applied after it (another panel worker was slower) but taken earlier on the rig.
    report(node.name, token, "telemetry", telemetry(metrics(deployment.pk, generated_tps=1.0), at=now - 3))
    assert fresh(deployment).serving["generated_tps"] == 50.0


def test_a_malformed_servers_list_is_refused_with_its_reason(alpha, deployment):
    node, token = alpha
    reason = report(node.name, token, "telemetry", telemetry(metrics(deployment.pk, slots_busy=9)))
    assert reason == "malformed telemetry report: more busy slots than slots"
    assert fresh(deployment).serving == {}


def test_it_shows_no_live_metrics_once_they_are_old_or_the_server_is_not_healthy(alpha, deployment):
    node, token = alpha
    report(node.name, token, "telemetry", telemetry(metrics(deployment.pk)))
    assert fresh(deployment).live_serving is not None
    Deployment.objects.filter(pk=deployment.pk).update(serving_at=timezone.now() - timezone.timedelta(seconds=16))
    assert fresh(deployment).live_serving is None  # three 5 s telemetry intervals
    report(node.name, token, "telemetry", telemetry(metrics(deployment.pk)))
    Deployment.objects.filter(pk=deployment.pk).update(actual_state="backoff")
    assert fresh(deployment).live_serving is None


# --- the deployment page --------------------------------------------------------------------------------------------
def test_the_deployment_page_shows_tokens_per_second_slots_requests_and_kv_live(viewer_client, alpha, deployment):
    node, token = alpha
    report(node.name, token, "telemetry", telemetry(metrics(deployment.pk)))
    text = page(viewer_client.get(f"/deployments/{deployment.pk}/", **HTMX))  # the polled part
    assert "31.2 tokens/s" in text and "prompt 120.0 tokens/s" in text
    assert "2 of 4 busy" in text
    assert "2 in progress · 1 waiting for a slot" in text
    assert "1024 of 4096 tokens (25%)" in text
    assert "900 tokens generated · 400 prompt tokens" in text
    report(node.name, token, "telemetry", telemetry(metrics(deployment.pk, generated_tps=None)))
    assert 'id="serving-tps">—' in page(viewer_client.get(f"/deployments/{deployment.pk}/", **HTMX))


def test_the_deployment_page_says_when_the_rig_could_not_read_the_server(viewer_client, alpha, deployment):
    node, token = alpha
    report(node.name, token, "telemetry", telemetry({"deployment": deployment.pk, "error": "/metrics answered "
                                                                                          "HTTP <b>401</b>"}))
    response = viewer_client.get(f"/deployments/{deployment.pk}/")
    assert "could not read the server's metrics: /metrics answered HTTP <b>401</b>" in page(response)
    assert "<b>401</b>" not in response.content.decode()  # escaped


# --- the rig cards ---------------------------------------------------------------------------------------------------
def test_the_rig_card_shows_each_serving_deployment_and_changes_with_it(viewer_client, alpha, deployment):
    node, token = alpha
    before = {n.name: n.card_fp for n in cards.fingerprints(timezone.now())}
    report(node.name, token, "telemetry", telemetry(metrics(deployment.pk)))
    rigs = cards.fingerprints(timezone.now())
    assert rigs[0].card_fp != before["alpha"]
    text = page(viewer_client.get("/"))
    assert "tiny31.2 tok/s · 2/4 slots busy" in text.replace("<b>", "").replace("</b><span>", "")
    # The refresh sends the card again when the figures move, and nothing when they do not.
    shown = f"{cards.names_hash(['alpha'])}:{rigs[0].card_fp}"
    assert viewer_client.get("/", HTTP_X_RIG_CARDS=shown, **HTMX).status_code == 204
    report(node.name, token, "telemetry", telemetry(metrics(deployment.pk, generated_tps=80.0, slots_busy=4)))
    response = viewer_client.get("/", HTTP_X_RIG_CARDS=shown, **HTMX)
    assert response.status_code == 200 and "80.0 tok/s · 4/4 slots busy" in page(response)


def test_the_rig_card_leaves_out_stopped_servers_and_offline_rigs(viewer_client, alpha, deployment):
    node, token = alpha
    report(node.name, token, "telemetry", telemetry(metrics(deployment.pk)))
    Deployment.objects.filter(pk=deployment.pk).update(actual_state="stopped", desired_state="stopped")
    assert 'class="serving"' not in viewer_client.get("/").content.decode()
    Deployment.objects.filter(pk=deployment.pk).update(actual_state="healthy", desired_state="running")
    assert 'class="serving"' in viewer_client.get("/").content.decode()
    type(node).objects.filter(pk=node.pk).update(last_seen=timezone.now() - timezone.timedelta(hours=1))
    assert 'class="serving"' not in viewer_client.get("/").content.decode()


def test_the_rig_card_escapes_what_it_shows(alpha, deployment):
    node, token = alpha
    report(node.name, token, "telemetry", telemetry(metrics(deployment.pk)))
    [rig] = cards.cards(timezone.now())
    rig.card_serving = [("<script>", "1.0 tok/s", "")]
    assert "<script>" not in cards.card_html(rig) and "&lt;script&gt;" in cards.card_html(rig)


# --- try it: who may ------------------------------------------------------------------------------------------------
def test_it_sends_anonymous_visitors_to_the_login_page(client, deployment):
    op = Operation.objects.create(node=deployment.node, kind=Operation.CHAT, target="tiny")
    for response in (client.post(f"/deployments/{deployment.pk}/chat/", {"chat-prompt": "Hi"}),
                     client.get(f"/deployments/{deployment.pk}/chat/{op.pk}/", **HTMX)):
        assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert Operation.objects.count() == 1


def test_a_viewer_sees_why_there_is_no_prompt_box_and_cannot_send_one(viewer_client, alpha, deployment):
    text = page(viewer_client.get(f"/deployments/{deployment.pk}/"))
    assert "Only operators can send prompts" in text and 'id="try-it-form"' not in text
    response = viewer_client.post(f"/deployments/{deployment.pk}/chat/", {"chat-prompt": "Hi", "chat-max_tokens": 8,
                                                                           "chat-temperature": 0.5}, **HTMX)
    assert response.status_code == 403
    assert not Operation.objects.exists() and queued_messages(alpha[0].queue) == []


def test_a_viewer_can_follow_an_answer(viewer_client, deployment):
    op = Operation.objects.create(node=deployment.node, kind=Operation.CHAT, target="tiny",
                                  status=Operation.RUNNING, result={"text": "Hello th"})
    response = viewer_client.get(f"/deployments/{deployment.pk}/chat/{op.pk}/", **HTMX)
    assert response.status_code == 200 and "Hello th" in page(response)


# --- try it: an operator --------------------------------------------------------------------------------------------
def send(client, deployment, prompt="Hello there", htmx=True, **changes):
    data = {"chat-prompt": prompt, "chat-max_tokens": 16, "chat-temperature": 0.5, **changes}
    return client.post(f"/deployments/{deployment.pk}/chat/", data, **(HTMX if htmx else {}))


def test_it_sends_the_prompt_to_the_rig_and_never_the_key(operator_client, operator, alpha, deployment,
                                                         django_capture_on_commit_callbacks):
    node, _ = alpha
    text = page(operator_client.get(f"/deployments/{deployment.pk}/"))
    assert 'id="try-it-form"' in text and KEY not in text
    with django_capture_on_commit_callbacks(execute=True):
        response = send(operator_client, deployment)
    op = Operation.objects.get()
    assert (op.kind, op.target, op.requested_by, op.status) == (Operation.CHAT, "tiny", operator, Operation.QUEUED)
    # The answer's box polls its own partial while the answer streams in.
    assert f'hx-get="/deployments/{deployment.pk}/chat/{op.pk}/"' in response.content.decode()
    assert 'hx-trigger="every 200ms"' in response.content.decode()
    [message] = queued_messages(node.queue)
    assert (message.task, message.args) == (protocol.AGENT_CHAT_DEPLOYMENT, [op.pk])
    assert message.kwargs == {"deployment_id": deployment.pk, "request": {
        "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 16, "temperature": 0.5}}
    assert KEY not in repr(unsealed(node, message.kwargs)) and KEY not in repr(message.envelope)


def test_it_shows_the_answer_as_it_grows_then_stops_polling(operator_client, deployment):
    node = deployment.node
    op = Operation.objects.create(node=node, kind=Operation.CHAT, target="tiny")
    url = f"/deployments/{deployment.pk}/chat/{op.pk}/"
    response = operator_client.get(url, **HTMX)
    assert response.status_code == 200 and "waiting for alpha" in page(response)
    op.apply_report(Operation.RUNNING, "answering…", {"text": "Once upon"})
    response = operator_client.get(url, **HTMX)
    assert response.status_code == 200 and "Once upon" in page(response) and "answering" in page(response)
    op.apply_report(Operation.SUCCEEDED, "5 tokens in 0.1 s", {"text": "Once upon a <time>"})
    response = operator_client.get(url, **HTMX)
    assert response.status_code == 286  # htmx stops polling
    assert "Once upon a <time>" in page(response) and "&lt;time&gt;" in response.content.decode()
    assert "5 tokens in 0.1 s" in page(response)
    # Without JavaScript: the deployment page with that answer.
    assert operator_client.get(url)["Location"] == f"/deployments/{deployment.pk}/?chat={op.pk}#try-it"
    assert "Once upon a <time>" in page(operator_client.get(f"/deployments/{deployment.pk}/?chat={op.pk}"))


def test_it_shows_an_answer_only_under_its_own_deployment(operator_client, deployment):
    other = Deployment.objects.create(node=deployment.node, name="other", model_file=deployment.model_file,
                                      build=deployment.build, port=8081)
    op = Operation.objects.create(node=deployment.node, kind=Operation.CHAT, target="tiny")
    ping = Operation.objects.create(node=deployment.node, kind=Operation.PING, target="tiny")
    assert operator_client.get(f"/deployments/{other.pk}/chat/{op.pk}/", **HTMX).status_code == 404
    assert operator_client.get(f"/deployments/{deployment.pk}/chat/{ping.pk}/", **HTMX).status_code == 404
    assert 'id="try-it-text"' not in operator_client.get(f"/deployments/{other.pk}/?chat={op.pk}").content.decode()
    assert operator_client.get(f"/deployments/{deployment.pk}/?chat=99999999999999999999999").status_code == 200


def test_it_shows_a_failed_chat_in_the_servers_own_words(operator_client, deployment):
    op = Operation.objects.create(node=deployment.node, kind=Operation.CHAT, target="tiny")
    op.apply_report(Operation.FAILED, "the server answered HTTP 400: request (600 tokens) exceeds the available "
                                      "context size (256 tokens), try increasing it")
    response = operator_client.get(f"/deployments/{deployment.pk}/chat/{op.pk}/", **HTMX)
    assert response.status_code == 286
    assert "request (600 tokens) exceeds the available context size (256 tokens)" in page(response)


@pytest.mark.parametrize("change, refusal", [
    ({"desired_state": "stopped", "actual_state": "stopped"}, "tiny is stopped: launch it first"),
    ({"actual_state": "failed"}, "tiny is failed: launch it first"),
    ({"actual_state": "loading"}, "tiny is loading, not serving yet: try again once it is healthy"),
])
def test_it_refuses_a_prompt_to_a_deployment_that_is_not_serving(operator_client, alpha, deployment, change, refusal):
    Deployment.objects.filter(pk=deployment.pk).update(**change)
    response = send(operator_client, deployment)
    assert response.status_code == 200 and f"Not sent: {refusal}" in page(response)
    response = send(operator_client, deployment, htmx=False)  # without JavaScript: on the page, as a message
    assert refusal in page(operator_client.get(response["Location"]))
    assert not Operation.objects.exists() and queued_messages(alpha[0].queue) == []


def test_it_refuses_a_prompt_while_the_rig_is_offline(operator_client, alpha, deployment):
    type(alpha[0]).objects.filter(pk=alpha[0].pk).update(last_seen=timezone.now() - timezone.timedelta(hours=1))
    assert "rig alpha is offline: it cannot pass the prompt on now" in page(send(operator_client, deployment))
    assert not Operation.objects.exists()


@pytest.mark.parametrize("prompt, changes, error", [
    ("", {}, "Prompt: This field is required."),
    ("x" * 4001, {}, "Prompt: Ensure this value has at most 4000 characters (it has 4001)."),
    ("Hi", {"chat-max_tokens": 5000}, "Max tokens: Ensure this value is less than or equal to 1024."),
    ("Hi", {"chat-temperature": 9}, "Temperature: Ensure this value is less than or equal to 2."),
])
def test_it_refuses_an_empty_or_overlong_prompt_with_the_limit(operator_client, alpha, deployment, prompt, changes,
                                                               error):
    assert f"Not sent: {error}" in page(send(operator_client, deployment, prompt, **changes))
    assert not Operation.objects.exists() and queued_messages(alpha[0].queue) == []


def test_it_refuses_a_second_prompt_while_the_first_answer_is_coming(operator_client, alpha, deployment,
                                                                     django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        send(operator_client, deployment)
    assert "Not sent: tiny is still answering the previous prompt" in page(send(operator_client, deployment))
    first = Operation.objects.get()
    first.apply_report(Operation.SUCCEEDED, "done", {"text": "Hi"})
    with django_capture_on_commit_callbacks(execute=True):
        send(operator_client, deployment)
    assert Operation.objects.count() == 2
    assert [m.task for m in queued_messages(alpha[0].queue)] == [protocol.AGENT_CHAT_DEPLOYMENT] * 2


def test_an_operator_can_stop_an_answer_while_it_comes(operator_client, viewer, alpha, deployment,
                                                       django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = send(operator_client, deployment)
    op = Operation.objects.get()
    assert f'action="/operations/{op.pk}/cancel/"' in response.content.decode()  # beside the answer, not in it
    queued_messages(alpha[0].queue)
    op.apply_report(Operation.RUNNING, "answering…", {"text": "Once"})
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post(f"/operations/{op.pk}/cancel/", **HTMX)
    [message] = queued_messages(alpha[0].queue)
    assert (message.task, message.args) == (protocol.AGENT_CANCEL, [op.pk])
    op.apply_report(Operation.CANCELLED, "stopped by the provider", {"text": "Once upon"})
    response = operator_client.get(f"/deployments/{deployment.pk}/chat/{op.pk}/", **HTMX)
    body = response.content.decode()
    assert response.status_code == 286 and "Once upon" in body and "stopped by the provider" in body
    assert '<span id="try-it-stop" hx-swap-oob="true"></span>' in body  # the last poll takes the button away
    # A viewer following the same answer gets no button.
    running = Operation.objects.create(node=deployment.node, kind=Operation.CHAT, target="tiny",
                                       status=Operation.RUNNING)
    viewer_client = Client()  # not the `client` fixture: that one is the operator's here
    viewer_client.force_login(viewer)
    assert 'id="try-it-stop"' not in viewer_client.get(f"/deployments/{deployment.pk}/?chat={running.pk}").content.decode()
    assert 'id="try-it-stop"' in operator_client.get(f"/deployments/{deployment.pk}/?chat={running.pk}").content.decode()
