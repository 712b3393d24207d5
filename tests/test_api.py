"""The JSON API (api/v1.py): its OpenAPI document, every endpoint under each kind of caller, actions that are the
buttons' own, errors with reasons, the rate limit, and no deployment API key in any answer.

The endpoints are read from the OpenAPI document itself, so an endpoint added to the API is exercised here (and
fails until it has its path values and body below) rather than forgotten."""

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from openapi_spec_validator import validate

from api import ratelimit
from api.models import ApiToken
from api.v1 import api
from audit.models import AuditEvent
from hosting.models import Build, Deployment
from models_catalog.models import CatalogModel, ModelFile, RigFile
from nodes.agent import builder, protocol
from nodes.models import GPU, GpuSample, HostSample, Operation, minute_floor
from nodes.permissions import OPERATORS_GROUP
from tests.helpers import make_node, queued_messages, raw_messages, unsealed

pytestmark = pytest.mark.django_db

PREFIX = "/api/v1/"
SCHEMA = json.loads(json.dumps(api.get_openapi_schema(path_prefix=PREFIX)))
ENDPOINTS = [(method.upper(), path) for path, ops in SCHEMA["paths"].items() for method in ops]
READS = [e for e in ENDPOINTS if e[0] == "GET"]
ACTIONS = [e for e in ENDPOINTS if e[0] != "GET"]
DEPLOYMENT_KEY = "sk-deployment-key-that-never-leaves-0123456789"
MODEL = "/var/lib/morpheus-agent/models/org__Tiny-GGUF/tiny-Q8_0.gguf"

# The body each action is sent with (None: it takes none). A new action fails the tests until it is added here.
BODIES = {
    "/api/v1/rigs/{name}/downloads": lambda w: {"model_file_id": w["new_file"].pk},
    "/api/v1/rigs/{name}/builds": lambda w: {},
    "/api/v1/deployments/{deployment_id}/launch": None,
    "/api/v1/deployments/{deployment_id}/stop": None,
    "/api/v1/deployments/{deployment_id}/restart": None,
    "/api/v1/deployments/{deployment_id}/benchmark": lambda w: {"prompt_tokens": 64, "gen_tokens": 32},
}


@pytest.fixture(autouse=True)
def _fresh_rate_counts():
    cache.clear()  # the local-memory cache outlives a test; so would its request counts
    yield
    cache.clear()


@pytest.fixture
def world(operator):
    """A rig with a GPU and samples, a ready build, a model file on the rig and one in the catalogue only, a
    healthy deployment served on 0.0.0.0 with an API key, and one finished operation."""
    now = timezone.now()
    alpha, _token = make_node("alpha", last_seen=now, hardware={
        "hostname": "alpha-box", "cpu_model": "EPYC", "ram_total": 64 << 30, "gpus": [{"index": 0}]},
        host_reading={"cpu_percent": 12.5, "ram_used": 8 << 30, "ram_total": 64 << 30, "disk_free": 500 << 30})
    gpu = GPU.objects.create(node=alpha, index=0, uuid="GPU-1", name="NVIDIA GeForce RTX 3090", vram_total=24 << 30,
                             reading_at=now, util=87.0, vram_used=20 << 30, temp_c=71.0, power_w=320.0, fan=55.0)
    GpuSample.objects.create(gpu=gpu, minute=minute_floor(now), util=80.0, vram_used=19 << 30, temp_c=70.0,
                             power_w=300.0)
    HostSample.objects.create(node=alpha, minute=minute_floor(now), cpu_percent=10.0, ram_used=8 << 30,
                              disk_free=500 << 30)
    repo = CatalogModel.objects.create(repo_id="org/Tiny-GGUF", name="Tiny-GGUF")
    on_rig = ModelFile.objects.create(model=repo, filename="tiny-Q8_0.gguf", quant="Q8_0", size=4 << 20)
    new_file = ModelFile.objects.create(model=repo, filename="tiny-Q4_K_M.gguf", quant="Q4_K_M", size=3 << 20)
    rig_file = RigFile.objects.create(node=alpha, model_file=on_rig, path=MODEL, size=4 << 20, repo_id=repo.repo_id,
                                      filename="tiny-Q8_0.gguf")
    build = Build.objects.create(node=alpha, status=Build.READY, is_default=True, version="b6680",
                                 binary_path="/var/lib/morpheus-agent/builds/1/llama-server")
    deployment = Deployment.objects.create(
        node=alpha, name="tiny", model_file=rig_file, build=build, host="0.0.0.0", port=8080, ctx_size=4096,
        parallel=2, n_gpu_layers=99, api_key=DEPLOYMENT_KEY, actual_state="healthy", started_at=now,
        serving={"tokens_per_second": 41.5, "slots_busy": 1}, serving_at=now, created_by=operator)
    operation = Operation.objects.create(node=alpha, kind=Operation.PING, requested_by=operator,
                                         status=Operation.SUCCEEDED, finished=now)
    raw_messages(alpha.queue)  # nothing a previous test sent to a rig of that name
    yield {"alpha": alpha, "gpu": gpu, "build": build, "rig_file": rig_file, "on_rig": on_rig,
           "new_file": new_file, "deployment": deployment, "operation": operation}
    raw_messages(alpha.queue)


def url_of(path, w):
    values = {"name": w["alpha"].name, "build_id": w["build"].pk, "deployment_id": w["deployment"].pk,
              "operation_id": w["operation"].pk}
    return path.format(**values)  # a new path parameter raises KeyError here: give it a value above


def call(client, method, path, w, secret=None, body=...):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret else {}
    if method == "GET":
        return client.get(url_of(path, w), **headers)
    if body is ...:
        make = BODIES[path]  # KeyError: a new action needs its body above
        body = make(w) if make else None
    if body is None:
        return client.post(url_of(path, w), **headers)
    return client.post(url_of(path, w), data=json.dumps(body), content_type="application/json", **headers)


@pytest.fixture
def operator_token(operator):
    return ApiToken.issue(operator, "operator script")[1]


@pytest.fixture
def viewer_token(viewer):
    return ApiToken.issue(viewer, "viewer script")[1]


# --- the OpenAPI document -----------------------------------------------------------------------------------------
def test_the_openapi_document_validates_and_lists_every_endpoint(client, operator_token):
    response = client.get("/api/v1/openapi.json", HTTP_AUTHORIZATION=f"Bearer {operator_token}")
    assert response.status_code == 200
    document = response.json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    served = [(method.upper(), path) for path, ops in document["paths"].items() for method in ops]
    assert served == ENDPOINTS and len(READS) >= 11 and len(ACTIONS) >= 6
    assert document["components"]["securitySchemes"] == {"TokenAuth": {"type": "http", "scheme": "bearer"}}
    assert set(BODIES) == {path for _method, path in ACTIONS}


def test_the_openapi_document_needs_a_token_or_a_login_and_the_docs_a_login(client, viewer):
    assert client.get("/api/v1/openapi.json").status_code == 401
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 302 and docs["Location"].startswith("/login/")
    client.force_login(viewer)
    assert client.get("/api/v1/openapi.json").status_code == 200
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
    assert b"cdn." not in docs.content  # django-ninja serves its own copy of Swagger UI


# --- every endpoint, every caller ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_an_operator_token_reads_and_acts_on_every_endpoint(world, operator, operator_token, method, path,
                                                            django_capture_on_commit_callbacks):
    client = Client(enforce_csrf_checks=True)  # a script has a token, not a CSRF cookie
    with django_capture_on_commit_callbacks(execute=True):
        response = call(client, method, path, world, operator_token)
    if method == "GET":
        assert response.status_code == 200, response.content
        return
    assert response.status_code == 202, response.content
    answer = response.json()
    operation = Operation.objects.get(pk=answer["id"])
    assert (answer["status"], answer["rig"], operation.requested_by) == ("queued", "alpha", operator)
    assert answer["url"] == f"/api/v1/operations/{operation.pk}" and answer["terminal"] is False
    [sent] = queued_messages(world["alpha"].queue)
    assert sent.args == [operation.pk]
    followed = client.get(answer["url"], HTTP_AUTHORIZATION=f"Bearer {operator_token}").json()
    assert followed == {**answer, "status": operation.status}
    event = AuditEvent.objects.get(via="api")
    assert (event.user, event.via, event.outcome, event.detail["operation"]) == (operator, "api", "ok", operation.pk)


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_a_viewer_token_reads_every_endpoint_and_acts_on_none(client, world, viewer, viewer_token, method, path,
                                                              django_capture_on_commit_callbacks):
    before = Operation.objects.count()
    with django_capture_on_commit_callbacks(execute=True):
        response = call(client, method, path, world, viewer_token)
    if method == "GET":
        assert response.status_code == 200, response.content
        return
    assert response.status_code == 403
    assert response.json() == {"detail": "Viewers can look but not change anything: ask an operator."}
    assert Operation.objects.count() == before and queued_messages(world["alpha"].queue) == []
    event = AuditEvent.objects.get(via="api")
    assert (event.user, event.via, event.outcome) == (viewer, "api", "refused")


def _revoked(user):
    token, secret = ApiToken.issue(user, "old")
    token.revoke()
    return secret


def _expired(user):
    return ApiToken.issue(user, "short", expires_at=timezone.now() - timedelta(seconds=1))[1]


def _deactivated(user):
    secret = ApiToken.issue(user, "leaver")[1]
    user.is_active = False
    user.save(update_fields=["is_active"])
    return secret


def _forged(user):
    secret = ApiToken.issue(user, "real")[1]
    return secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")  # right prefix, wrong secret


REFUSED = {"none": lambda user: None, "revoked": _revoked, "expired": _expired, "deactivated": _deactivated,
           "forged": _forged, "not a token": lambda user: "Bearer-nonsense"}


@pytest.mark.parametrize("how", REFUSED)
@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_every_endpoint_refuses_a_caller_without_a_working_token(client, world, operator, method, path, how,
                                                                 django_capture_on_commit_callbacks):
    client.force_login(operator)  # a panel login is not an API credential
    before = Operation.objects.count()
    with django_capture_on_commit_callbacks(execute=True):
        response = call(client, method, path, world, REFUSED[how](operator))
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json()["detail"]
    assert Operation.objects.count() == before and queued_messages(world["alpha"].queue) == []
    assert not AuditEvent.objects.filter(via="api").exists()


# --- what reads return --------------------------------------------------------------------------------------------
def test_rigs_come_with_hardware_status_and_gpu_readings(client, world, viewer_token):
    [rig] = client.get("/api/v1/rigs", HTTP_AUTHORIZATION=f"Bearer {viewer_token}").json()
    assert (rig["name"], rig["status"], rig["hardware"]["hostname"], rig["hardware"]["gpu_count"]) == (
        "alpha", "online", "alpha-box", 1)
    assert rig["host"]["disk_free"] == 500 << 30 and rig["seen_seconds_ago"] < 60
    [gpu] = rig["gpus"]
    assert (gpu["name"], gpu["util"], gpu["temp_c"], gpu["power_w"], gpu["vram_used"]) == (
        "NVIDIA GeForce RTX 3090", 87.0, 71.0, 320.0, 20 << 30)
    telemetry = client.get("/api/v1/rigs/alpha/telemetry?minutes=5", HTTP_AUTHORIZATION=f"Bearer {viewer_token}").json()
    assert [s["cpu_percent"] for s in telemetry["host"]] == [10.0]
    assert [(g["index"], [s["temp_c"] for s in g["samples"]]) for g in telemetry["gpus"]] == [(0, [70.0])]


LISTS = [path for method, path in READS if "{" not in path]


def _another_rig(i, on_rig):
    node, _ = make_node(f"r{i}", last_seen=timezone.now())
    for index in range(2):
        GPU.objects.create(node=node, index=index, uuid=f"r{i}-{index}", name="GPU", vram_total=1)
    build = Build.objects.create(node=node, status=Build.READY, binary_path="/b/llama-server")
    rig_file = RigFile.objects.create(node=node, model_file=on_rig, path=MODEL, size=1)
    Deployment.objects.create(node=node, name="tiny", model_file=rig_file, build=build, port=8080,
                              actual_state="healthy", serving={"slots_busy": 0}, serving_at=timezone.now())
    Operation.objects.create(node=node, kind=Operation.PING)


@pytest.mark.parametrize("path", LISTS)
def test_a_list_costs_the_same_queries_for_1_and_11_rigs(client, world, viewer_token, path):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert client.get(path, HTTP_AUTHORIZATION=f"Bearer {viewer_token}").status_code == 200
        cache.clear()
        return len(captured)

    queries()  # the token's first use writes its last-used time; the ones measured below do not
    one = queries()
    for i in range(10):
        _another_rig(i, world["on_rig"])
    assert queries() == one <= 4


def test_deployments_show_state_and_serving_metrics_and_no_api_key_anywhere(client, world, operator_token,
                                                                            django_capture_on_commit_callbacks):
    [deployment] = client.get("/api/v1/deployments", HTTP_AUTHORIZATION=f"Bearer {operator_token}").json()
    assert (deployment["actual_state"], deployment["healthy"], deployment["api_key_set"]) == ("healthy", True, True)
    assert deployment["serving"] == {"tokens_per_second": 41.5, "slots_busy": 1}
    assert deployment["endpoint_url"] == "http://alpha-box:8080/v1"
    bodies = [client.get("/api/v1/openapi.json", HTTP_AUTHORIZATION=f"Bearer {operator_token}").content]
    with django_capture_on_commit_callbacks(execute=True):
        for method, path in ENDPOINTS:
            response = call(client, method, path, world, operator_token)
            assert response.status_code in (200, 202), (path, response.content)
            bodies.append(response.content)
            Build.objects.filter(status=Build.QUEUED).update(status=Build.FAILED)  # the next build may start
    for method, path in READS:
        bodies.append(call(client, method, path, world, operator_token).content)
    assert all(DEPLOYMENT_KEY.encode() not in body for body in bodies)
    assert DEPLOYMENT_KEY not in str(list(AuditEvent.objects.values()))


def test_operations_filter_by_rig_kind_and_status(client, world, viewer_token):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {viewer_token}"}
    beta, _ = make_node("beta")
    Operation.objects.create(node=beta, kind=Operation.BUILD_LLAMA)
    listed = lambda query: [(o["rig"], o["kind"]) for o in client.get(f"/api/v1/operations{query}", **auth).json()]
    assert listed("") == [("beta", "build_llama"), ("alpha", "ping")]
    assert listed("?rig=alpha") == [("alpha", "ping")]
    assert listed("?kind=build_llama") == [("beta", "build_llama")]
    assert listed("?status=succeeded") == [("alpha", "ping")]
    assert listed("?status=queued&rig=alpha") == []
    assert listed("?limit=1") == [("beta", "build_llama")]
    bad = client.get("/api/v1/operations?kind=reboot", **auth)
    assert bad.status_code == 422 and "build_llama" in json.dumps(bad.json())


# --- actions are the buttons' own ---------------------------------------------------------------------------------
def _sent(node):
    [message] = queued_messages(node.queue)
    return message.task, message.args, unsealed(node, message.kwargs)


def _same(web_op, api_op):
    fields = ("kind", "node_id", "target", "requested_by_id")
    assert [getattr(api_op, f) for f in fields] == [getattr(web_op, f) for f in fields]


@pytest.mark.parametrize("action", ["launch", "stop", "restart"])
def test_launch_stop_restart_send_what_the_deployment_buttons_send(operator_client, world, operator_token, action,
                                                                   django_capture_on_commit_callbacks):
    deployment, alpha = world["deployment"], world["alpha"]
    saved = Deployment.objects.filter(pk=deployment.pk).values("desired_state", "generation").get()
    with django_capture_on_commit_callbacks(execute=True):
        assert operator_client.post(f"/deployments/{deployment.pk}/{action}/").status_code == 302
    web_op, (web_task, web_args, web_kwargs) = Operation.objects.latest("pk"), _sent(alpha)
    Deployment.objects.filter(pk=deployment.pk).update(**saved)
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/api/v1/deployments/{deployment.pk}/{action}",
                                        HTTP_AUTHORIZATION=f"Bearer {operator_token}")
    assert response.status_code == 202
    api_op, (api_task, api_args, api_kwargs) = Operation.objects.get(pk=response.json()["id"]), _sent(alpha)
    _same(web_op, api_op)
    assert (api_task, api_args, api_kwargs) == (web_task, [api_op.pk], web_kwargs)
    assert api_task == protocol.AGENT_APPLY_DEPLOYMENT and api_kwargs["spec"]["api_key"] == DEPLOYMENT_KEY  # to the rig only
    assert Deployment.objects.get(pk=deployment.pk).desired_state == ("stopped" if action == "stop" else "running")


def test_a_download_sends_what_the_download_button_sends(operator_client, world, operator_token,
                                                         django_capture_on_commit_callbacks):
    new_file, alpha = world["new_file"], world["alpha"]
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post(f"/models/files/{new_file.pk}/download/", {"nodes": ["alpha"]})
    web_op, web_sent = Operation.objects.latest("pk"), _sent(alpha)
    web_op.apply_report(Operation.FAILED, "let the next one start")
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/api/v1/rigs/alpha/downloads", data={"model_file_id": new_file.pk},
                                        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {operator_token}")
    assert response.status_code == 202
    api_op, api_sent = Operation.objects.get(pk=response.json()["id"]), _sent(alpha)
    _same(web_op, api_op)
    assert api_sent == (web_sent[0], [api_op.pk], web_sent[2])
    again = operator_client.post("/api/v1/rigs/alpha/downloads", data={"model_file_id": new_file.pk},
                                 content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {operator_token}")
    assert again.status_code == 409
    assert again.json()["detail"] == f"Not started: alpha is already downloading tiny-Q4_K_M.gguf (operation {api_op.pk})"
    refused = AuditEvent.objects.filter(outcome="refused", via="api").get()
    assert (refused.action, refused.via, refused.detail["reason"]) == (
        "model.download", "api", f"alpha is already downloading tiny-Q4_K_M.gguf (operation {api_op.pk})")


def test_a_build_sends_what_the_build_button_sends(operator_client, world, operator_token,
                                                   django_capture_on_commit_callbacks):
    alpha = world["alpha"]
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post("/rigs/alpha/builds/", {"build-source": builder.DEFAULT_SOURCE,
                                                     "build-ref": builder.DEFAULT_REF, "build-backend": "auto"})
    web_op, (web_task, _args, web_kwargs) = Operation.objects.latest("pk"), _sent(alpha)
    Build.objects.filter(operation=web_op).update(status=Build.FAILED)
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/api/v1/rigs/alpha/builds", data={}, content_type="application/json",
                                        HTTP_AUTHORIZATION=f"Bearer {operator_token}")
    assert response.status_code == 202
    api_op, (api_task, api_args, api_kwargs) = Operation.objects.get(pk=response.json()["id"]), _sent(alpha)
    _same(web_op, api_op)
    api_build = Build.objects.get(operation=api_op)
    web_build_id = web_kwargs["build_id"]
    assert api_kwargs == {**web_kwargs, "build_id": api_build.pk,
                          "request": {**web_kwargs["request"], "build_id": api_build.pk}}
    assert (api_task, api_args) == (web_task, [api_op.pk]) and web_build_id != api_build.pk


def test_a_benchmark_sends_what_the_benchmark_button_sends(operator_client, world, operator_token,
                                                           django_capture_on_commit_callbacks):
    deployment, alpha = world["deployment"], world["alpha"]
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post(f"/deployments/{deployment.pk}/benchmarks/run/", {"prompt_tokens": 64, "gen_tokens": 32})
    web_op, web_sent = Operation.objects.latest("pk"), _sent(alpha)
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/api/v1/deployments/{deployment.pk}/benchmark",
                                        data={"prompt_tokens": 64, "gen_tokens": 32},
                                        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {operator_token}")
    assert response.status_code == 202
    api_op, api_sent = Operation.objects.get(pk=response.json()["id"]), _sent(alpha)
    _same(web_op, api_op)
    assert api_sent == (web_sent[0], [api_op.pk], web_sent[2])


# --- bad input, refusals, missing rows ----------------------------------------------------------------------------
@pytest.mark.parametrize("path, body, status, says", [
    ("/api/v1/rigs/alpha/downloads", {}, 422, "model_file_id"),
    ("/api/v1/rigs/alpha/downloads", {"model_file_id": "three"}, 422, "valid integer"),
    ("/api/v1/rigs/alpha/downloads", {"model_file_id": 999999}, 404, "no catalogue file 999999"),
    ("/api/v1/rigs/nope/downloads", {"model_file_id": 1}, 404, "no rig 'nope'"),
    ("/api/v1/rigs/alpha/builds", {"options": {"CMAKE_C_COMPILER": "/tmp/evil"}}, 422,
     "CMake option 'CMAKE_C_COMPILER' is not allowed"),
    ("/api/v1/rigs/alpha/builds", {"backend": "rocm"}, 422, "'auto', 'cpu' or 'cuda'"),
    ("/api/v1/rigs/alpha/builds", {"backend": "cuda"}, 409, "Not started: alpha reported no NVIDIA GPU"),
    ("/api/v1/rigs/alpha/builds", {"source": "https://example.com/evil/llama.cpp"}, 403,
     "asks for your password again"),
    ("/api/v1/rigs/alpha/builds", {"ref": "master"}, 403, "Only the tested release"),
    ("/api/v1/deployments/{deployment_id}/benchmark", {"prompt_tokens": 0}, 422, "greater than or equal to 1"),
    ("/api/v1/deployments/999999/launch", None, 404, "no deployment 999999"),
])
def test_bad_input_refusals_and_missing_rows_say_why_and_start_nothing(client, world, operator_token, path, body,
                                                                       status, says):
    world["alpha"].hardware = {"gpus": []}
    world["alpha"].save(update_fields=["hardware"])
    before = Operation.objects.count()
    response = call(client, "POST", path, world, operator_token, body=body)
    assert response.status_code == status and says in json.dumps(response.json()), response.content
    assert Operation.objects.count() == before and queued_messages(world["alpha"].queue) == []


def test_a_refused_action_is_409_with_the_services_reason_and_audited(client, world, operator, operator_token):
    Deployment.objects.filter(pk=world["deployment"].pk).update(actual_state="failed", message="exit code 1")
    response = call(client, "POST", "/api/v1/deployments/{deployment_id}/benchmark", world, operator_token, body={})
    assert response.status_code == 409
    assert response.json() == {"detail": "Not started: tiny is failed: exit code 1; benchmark a healthy server"}
    event = AuditEvent.objects.get(via="api")
    assert (event.action, event.user, event.outcome, event.via, event.target) == (
        "deployment.benchmark", operator, "refused", "api", "alpha/tiny")


def test_unknown_rows_are_404_with_what_was_missing(client, world, viewer_token):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {viewer_token}"}
    for url, says in (("/api/v1/rigs/nope", "no rig 'nope'"), ("/api/v1/builds/999999", "no build 999999"),
                      ("/api/v1/operations/999999", "no operation 999999"),
                      ("/api/v1/deployments/999999", "no deployment 999999")):
        response = client.get(url, **auth)
        assert (response.status_code, response.json()) == (404, {"detail": says})


# --- scope follows the role at request time ------------------------------------------------------------------------
def test_a_tokens_scope_follows_its_users_role_at_each_request(client, world, viewer, viewer_token,
                                                               django_capture_on_commit_callbacks):
    url = f"/api/v1/deployments/{world['deployment'].pk}/stop"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {viewer_token}"}
    assert client.post(url, **auth).status_code == 403
    viewer.groups.add(Group.objects.get(name=OPERATORS_GROUP))
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(url, **auth).status_code == 202
    viewer.groups.clear()
    assert client.post(url, **auth).status_code == 403


# --- rate limits ------------------------------------------------------------------------------------------------------
def test_a_token_over_its_rate_gets_429_with_retry_after_and_others_go_on(client, world, settings, operator,
                                                                          operator_token):
    settings.API_RATE = 3
    auth = {"HTTP_AUTHORIZATION": f"Bearer {operator_token}"}
    assert [client.get("/api/v1/rigs", **auth).status_code for _ in range(3)] == [200, 200, 200]
    limited = client.get("/api/v1/rigs", **auth)
    # Until this minute's three have slid out enough: at most the rest of the minute and a third of the next.
    assert limited.status_code == 429 and 1 <= int(limited["Retry-After"]) <= 60 + 20
    assert limited.json()["detail"] == f"Too many requests: try again in {limited['Retry-After']} s."
    other = ApiToken.issue(operator, "another script")[1]
    assert client.get("/api/v1/rigs", HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 200


def test_an_address_guessing_tokens_is_refused_even_with_a_good_one(client, world, settings, operator_token):
    settings.API_FAILED_AUTH_RATE = 2
    guesses = [client.get("/api/v1/rigs", HTTP_AUTHORIZATION=f"Bearer mor_guess{i}").status_code for i in range(3)]
    assert guesses == [401, 401, 429]
    assert client.get("/api/v1/rigs", HTTP_AUTHORIZATION=f"Bearer {operator_token}").status_code == 429
    assert client.get("/api/v1/rigs", HTTP_AUTHORIZATION=f"Bearer {operator_token}",
                      REMOTE_ADDR="192.0.2.7").status_code == 200


def test_the_sliding_window_allows_a_burst_then_frees_up_as_it_slides():
    t0 = 1_000_000 * ratelimit.WINDOW  # the start of a window
    assert [ratelimit.hit("k", 4, now=t0 + 1) for _ in range(4)] == [None] * 4
    # This minute's four count in full until it ends, then slide out: one has gone 15 s into the next.
    assert ratelimit.hit("k", 4, now=t0 + 1) == 59 + 15
    assert ratelimit.hit("k", 4, now=t0 + 59) == 1 + 15
    # 15 s into the next window a quarter of the last minute has slid out: one more fits, then 15 s more.
    assert ratelimit.hit("k", 4, now=t0 + 75) is None
    assert ratelimit.hit("k", 4, now=t0 + 75) == 15
    assert ratelimit.hit("k", 4, now=t0 + 90) is None
    assert ratelimit.hit("k", 4, now=t0 + 181) is None  # two windows on, nothing counts


# --- with a real rig agent ------------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_script_downloads_a_model_to_a_real_rig_and_follows_the_operation(rigs, client, operator, hub, tmp_path,
                                                                            settings):
    from tests.gguf_model import write_tiny_llama
    from tests.harness import wait_until

    settings.HF_ENDPOINT = hub.url
    settings.API_RATE = 100_000  # the test polls faster than a script would
    path = write_tiny_llama(tmp_path / "tiny.gguf", chat_template="{{ bos_token }}")
    hub.add_file("test-org/Tiny-GGUF", "tiny-Q8_0.gguf", path)
    hub.add_repo("test-org/Tiny-GGUF")
    repo = CatalogModel.objects.create(repo_id="test-org/Tiny-GGUF", name="Tiny")
    model_file = ModelFile.objects.create(model=repo, filename="tiny-Q8_0.gguf", size=path.stat().st_size)
    alpha, token = make_node("alpha")
    rigs.start("alpha", token)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(operator, 'fleet script')[1]}"}

    catalogue = client.get("/api/v1/catalogue", **auth).json()
    [file_id] = [f["id"] for model in catalogue for f in model["files"] if f["filename"] == "tiny-Q8_0.gguf"]
    started = client.post("/api/v1/rigs/alpha/downloads", data={"model_file_id": file_id},
                          content_type="application/json", **auth)
    assert started.status_code == 202
    follow = started.json()["url"]
    done = wait_until(lambda: (lambda op: op if op["terminal"] else None)(client.get(follow, **auth).json()),
                      timeout=90, message="the download to end")
    assert (done["status"], done["kind"], done["requested_by"]) == ("succeeded", "download_model", "olga"), done
    files = wait_until(lambda: client.get("/api/v1/model-files?rig=alpha", **auth).json() or None, timeout=30,
                       message="the rig to report the file")
    assert [(f["filename"], f["verified"], f["model_file_id"]) for f in files] == [("tiny-Q8_0.gguf", True, file_id)]
    event = AuditEvent.objects.get(action="model.download")
    assert (event.via, event.username, event.detail["operation"]) == ("api", "olga", done["id"])
